"""How long a WAL rewrite holds the log's write lock (the log stage's appends wait for it).

    python3 bench/wal_rewrite.py [--dir D] [--entries 260000] [--size 300] [--rounds 2]

Replays a member's log on a bare WALStorage (kubekv_raft/driver/wal_storage.py): appends
of 100 entries of `--size` bytes, a snapshot's compaction every 100,000 entries keeping
5,000 (etcd's --snapshot-count and catch-up entries), until the file passes
SEGMENT_BYTES and is rewritten from its live state; prints each rewrite's wall time and
the live bytes it copied. --dir should be on the file system the data dirs use.
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


def replay(directory: str, entries: int, size: int) -> list[tuple[float, float]]:
    """(ms the rewrite took, MiB of live entries it copied) for each rewrite."""
    path = tempfile.mkdtemp(dir=directory, prefix="wal-rewrite-")
    s = WALStorage(path)
    rewrites: list[tuple[float, float]] = []
    plain = s._maybe_rewrite

    def timed() -> None:
        t, seq = time.perf_counter(), s._seq
        plain()
        if s._seq != seq:
            rewrites.append(((time.perf_counter() - t) * 1e3, s._live / 2**20))

    s._maybe_rewrite = timed
    data = os.urandom(size)
    try:
        for i in range(1, entries, 100):
            s.append([pb.Entry(index=j, term=1, data=data) for j in range(i, i + 100)])
            if i > 100 and i % 100_000 < 100:
                s.compact(i - 5000)
    finally:
        s.close()
        shutil.rmtree(path, ignore_errors=True)
    return rewrites


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--entries", type=int, default=260_000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for r in range(args.rounds):
        for ms, mib in replay(args.dir, args.entries, args.size):
            print(f"round {r + 1}: a rewrite of {mib:.1f} MiB of live entries held the "
                  f"log's writes {ms:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
