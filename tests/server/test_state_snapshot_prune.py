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


def test_copies_a_crash_interrupted_are_removed_and_nothing_else(tmp_path):
    """A member killed while copying its state db for a snapshot leaves the copy's
    directory (a whole state db); the next start removes it, and only it."""
    for name in (".tmp-0000000000000064", ".tmp-00000000000000c8"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.mdb").write_bytes(b"\0" * 4096)
    ours = state_snapshot.snapshot_file(str(tmp_path), 3, 200)
    received = tmp_path / f"{3:016x}-{300:016x}.snap"
    for path in (ours, received):
        open(path, "wb").close()
    assert state_snapshot.remove_interrupted_copies(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [received.name, ours.rsplit("/", 1)[1]])
    assert state_snapshot.remove_interrupted_copies(str(tmp_path / "absent")) == 0


def test_a_member_restarted_after_a_crash_mid_copy_removes_the_copy(tmp_path):
    """Through a real process: the leftover copy is gone once the member serves again,
    and the member says so in its log."""
    from kubekv.embed import Member

    m = Member(base_dir=tmp_path)
    m.start(timeout=60)
    try:
        m.stop()
        leftover = m.data_dir / "member" / "snap" / ".tmp-0000000000000007"
        leftover.mkdir(parents=True)
        (leftover / "data.mdb").write_bytes(b"\0" * 4096)
        m.start(timeout=60)
        assert not leftover.exists()
        assert "event=snapshot_copies_removed count=1" in m.log_tail(200)
    finally:
        m.stop()
