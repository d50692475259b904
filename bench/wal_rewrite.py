"""How long a WAL rewrite holds the log's write lock (the log stage's appends wait for it),
and the longest append of the run.

    python3 bench/wal_rewrite.py [--dir D] [--entries 260000] [--size 300] [--rounds 2]

Replays a member's log on a bare WALStorage (kubekv_raft/driver/wal_storage.py): appends
of 100 entries of `--size` bytes, a snapshot's compaction every 100,000 entries keeping
5,000 (etcd's --snapshot-count and catch-up entries), until the file passes
SEGMENT_BYTES and is rewritten from its live state (its file written beside the
appends); prints how long each rewrite held the write lock (taking its STATE record,
then copying the appends made meanwhile and switching files), the live bytes it
copied, and the appends' median, p99.9 and longest time. --dir should be on the file
system the data dirs use.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from etcdproto.raftpb import raft_pb2 as pb  # noqa: E402
from kubekv_raft.driver.wal_storage import WALStorage  # noqa: E402


def replay(directory: str, entries: int, size: int) -> tuple[list[tuple[float, float]],
                                                             list[float]]:
    """(ms the rewrite held the write lock, MiB of live entries it copied) for each rewrite,
    and the wall ms of every append (each waits while the lock is held)."""
    path = tempfile.mkdtemp(dir=directory, prefix="wal-rewrite-")
    s = WALStorage(path)
    rewrites: list[tuple[float, float]] = []
    start, finish = s._maybe_rewrite, s._finish_rewrite
    held = [0.0]

    def timed_start() -> None:  # write lock held: the STATE record taken
        t, was = time.perf_counter(), s._rewriting
        start()
        if s._rewriting is not was:
            held[0] = time.perf_counter() - t

    def timed_finish(*args) -> None:  # write lock held: the tail copied, the switch
        t = time.perf_counter()
        finish(*args)
        rewrites.append(((held[0] + time.perf_counter() - t) * 1e3, s._live / 2**20))

    s._maybe_rewrite, s._finish_rewrite = timed_start, timed_finish
    data = os.urandom(size)
    appends: list[float] = []
    try:
        for i in range(1, entries, 100):
            t = time.perf_counter()
            s.append([pb.Entry(index=j, term=1, data=data) for j in range(i, i + 100)])
            appends.append((time.perf_counter() - t) * 1e3)
            if i > 100 and i % 100_000 < 100:
                s.compact(i - 5000)
    finally:
        s.close()
        shutil.rmtree(path, ignore_errors=True)
    return rewrites, appends


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--entries", type=int, default=260_000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for r in range(args.rounds):
        rewrites, appends = replay(args.dir, args.entries, args.size)
        for ms, mib in rewrites:
            print(f"round {r + 1}: a rewrite of {mib:.1f} MiB of live entries held the "
                  f"log's writes {ms:.1f} ms", flush=True)
        appends.sort()
        print(f"round {r + 1}: {len(appends)} appends of 100 entries, median "
              f"{appends[len(appends) // 2]:.2f} ms, p99.9 "
              f"{appends[int(len(appends) * 0.999)]:.2f} ms, longest {appends[-1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
