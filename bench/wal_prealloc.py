"""Time and CPU of one write + fdatasync: appending, into posix_fallocate's space, into zeros.

    python3 bench/wal_prealloc.py [--dir D] [--writes 2000] [--size 350] [--rounds 3]

What WALStorage's preallocation (kubekv_raft/driver/wal_storage.py, PREALLOC_BYTES)
rests on: an fdatasync after an append must also commit the file's new size and blocks;
one after a write into space `posix_fallocate` gave the file need not (etcd preallocates
its WAL segments for this), but that space is unwritten extents, and the first write
into each block converts it, which the fdatasync commits to the journal; a write into
zeros already written and synced changes data only (session 17 measured a WAL that
wrote such zeros ahead of its records on a thread: bench/profile_server.md). --dir
should be on the file system the data dirs use.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

MODES = ("append", "fallocate", "zeros")


def one(directory: str, mode: str, writes: int, size: int) -> tuple[float, float]:
    """(wall µs, CPU µs of this thread) per write + fdatasync."""
    fd, path = tempfile.mkstemp(dir=directory, prefix="wal-prealloc-")
    try:
        space = writes * size + (1 << 20)
        if mode == "fallocate":
            os.posix_fallocate(fd, 0, space)
        elif mode == "zeros":
            zeros = bytes(1 << 20)
            for pos in range(0, space, len(zeros)):
                os.pwrite(fd, zeros, pos)
        os.fdatasync(fd)
        buf = b"x" * size
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(writes):
            os.pwrite(fd, buf, i * size)
            os.fdatasync(fd)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    finally:
        os.close(fd)
        os.unlink(path)
    return wall / writes * 1e6, cpu / writes * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--size", type=int, default=350)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    for r in range(a.rounds):
        for mode in MODES:  # alternated, so the machine's other load hits each
            wall, cpu = one(a.dir, mode, a.writes, a.size)
            print(f"round {r + 1} {mode:>9}: {wall:6.0f} µs wall, {cpu:5.0f} µs CPU per "
                  "write + fdatasync")


if __name__ == "__main__":
    main()
