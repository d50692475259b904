"""Received snapshot files on disk: their names, durable writing, and cleaning up.

A snapshot arrives in `<snapshot_dir>/<random>.partial`, is fsynced, renamed to
`<term>-<index>.snap` and the directory fsynced; only then is its MsgSnap stepped,
with Snapshot.data replaced by a `ReceivedSnapshot` (path, size, sha256, original
data). An interrupted receive deletes its `.partial` file; a crash can leave one
behind, which never has the `.snap` name and is removed when the next receiver starts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any

from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.driver.durable_dirs import fsync_dir

__all__ = [
    "received_snapshot",
    "snapshot_file_name",
    "remove_partial_snapshots",
    "remove_older_snapshots",
]

PARTIAL_SUFFIX = ".partial"
SNAPSHOT_SUFFIX = ".snap"


def received_snapshot(snapshot: pb.Snapshot) -> peer_pb.ReceivedSnapshot:
    """Decode the Snapshot.data a receiver stepped in (for a snapshot sent with a file)."""
    return peer_pb.ReceivedSnapshot.FromString(snapshot.data)


def snapshot_file_name(md: pb.SnapshotMetadata) -> str:
    """Name of a complete received snapshot file: `<term>-<index>.snap`, hex, sortable."""
    return f"{md.term:016x}-{md.index:016x}{SNAPSHOT_SUFFIX}"


def remove_partial_snapshots(directory: str) -> int:
    """Delete `.partial` files left by a receive a crash interrupted; how many."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.endswith(PARTIAL_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    n += 1
    return n


def remove_older_snapshots(directory: str, index: int) -> int:
    """Delete received snapshot files (`<term>-<index>.snap`) below `index`: once a
    snapshot at `index` is installed Raft refuses every older one, so they only fill
    the disk (stale or hostile transfers leave one each). How many were removed."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            stem = name[: -len(SNAPSHOT_SUFFIX)] if name.endswith(SNAPSHOT_SUFFIX) else ""
            term, _, idx = stem.partition("-")
            if len(term) != 16 or len(idx) != 16:
                continue
            try:
                older = int(idx, 16) < index
                int(term, 16)
            except ValueError:
                continue
            if older:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    n += 1
    return n


def create_partial(directory: str) -> tuple[IO[bytes], str]:
    """A new `<random>.partial` file in `directory`, open for writing, and its path."""
    fd, path = tempfile.mkstemp(dir=directory, suffix=PARTIAL_SUFFIX)
    return os.fdopen(fd, "wb"), path


def discard_partial(f: IO[bytes], path: str) -> None:
    """Close and delete a `.partial` file whose receive did not complete."""
    f.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_and_hash(f: IO[bytes], digest: Any, data: bytes) -> None:
    """Append a chunk to the file and to its running SHA-256 (run in an executor)."""
    f.write(data)
    digest.update(data)


def make_durable(f: IO[bytes], tmp: str, final: str) -> None:
    """fsync the data, close, rename into place, fsync the directory (the rename)."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(final))
