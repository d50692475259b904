"""state_snapshot.prune keeps a received snapshot that may still wait to be installed."""

from __future__ import annotations

from kubekv_server.backend import state_snapshot
from kubekv_server.peer.snapshot_files import remove_older_snapshots


def test_prune_removes_only_our_older_snapshots(tmp_path):
    old = state_snapshot.snapshot_file(str(tmp_path), 2, 100)
    keep = state_snapshot.snapshot_file(str(tmp_path), 3, 200)
    received_stale = tmp_path / f"{2:016x}-{150:016x}.snap"
    received_waiting = tmp_path / f"{3:016x}-{300:016x}.snap"  # newer than ours
    for path in (old, keep, received_stale, received_waiting):
        open(path, "wb").close()
    state_snapshot.prune(str(tmp_path), keep=keep)
    remove_older_snapshots(str(tmp_path), 200)  # what RaftNode does after prune
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([received_waiting.name, keep.rsplit("/", 1)[1]])
