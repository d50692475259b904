#!/usr/bin/env python
"""What one state-db commit writes, for the MVCC tables' layouts (a measuring aid for the
one-member p99, bench/profile_server.md, sessions 11 and 12).

Replays the benchmark's write pattern on a bare LMDB environment opened as the state db
is (sync, no metasync): Puts of `--value` bytes to random keys of `--keys`, `--per-commit`
per transaction, into tables shaped as `kubekv_server/mvcc/store.py`'s: `key` (revision
-> KeyValue, appended), `key_index` (dupsort user key -> revision) and `live`. Layouts:
`values-live`, `live` holding the current KeyValue (the layout until session 12);
`revision-live`, `live` holding the revision of the current row (today's,
`mvcc/live_layout.py`); `history-only` writes only `key`, as etcd's bbolt does (its key
index lives in memory, `treeIndex`, which docs/architecture.md rules out for kubekv:
other processes must be able to read the index). Prints the median time of the commit
alone and the bytes and write calls per commit (all of them the data file's: nothing
else writes).

    python3 bench/commit_cost.py [--keys 10000] [--per-commit 1000] [--commits 40]
                                 [--value 256] [--layout values-live|revision-live|history-only]
                                 [--dir D]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import struct
import tempfile
import time

import lmdb

LAYOUTS = ["values-live", "revision-live", "history-only"]


def run(a: argparse.Namespace) -> dict:
    d = tempfile.mkdtemp(dir=a.dir, prefix="commit-cost-")
    try:
        env = lmdb.open(d, map_size=8 << 30, max_dbs=8, sync=True, metasync=False)
        key = env.open_db(b"key")
        index = env.open_db(b"key_index", dupsort=True)
        live = env.open_db(b"live")
        rnd = random.Random(1)
        value = os.urandom(a.value)
        rev = 0

        times: list[float] = []

        def batch() -> None:
            nonlocal rev
            with env.begin(write=True) as txn:
                for _ in range(a.per_commit):
                    rev += 1
                    k = b"k%d" % rnd.randrange(a.keys)
                    r = struct.pack(">QcQ", rev, b"_", 0)
                    kv = k + value + r  # a KeyValue's size, near enough
                    txn.put(r, kv, db=key)
                    if a.layout != "history-only":
                        txn.put(k, r, db=index)
                        txn.put(k, r if a.layout == "revision-live" else kv, db=live)
                t0 = time.perf_counter()
            times.append(time.perf_counter() - t0)  # the context manager's commit

        for _ in range(max(1, a.keys // a.per_commit) * 2):  # every key written first
            batch()
        times.clear()
        written, calls = [], []
        for _ in range(a.commits):
            io0 = _io()
            batch()
            io1 = _io()
            written.append(io1[0] - io0[0])
            calls.append(io1[1] - io0[1])
        env.close()
        return {"commit_ms": statistics.median(times) * 1e3,
                "bytes_per_commit": statistics.median(written),
                "write_calls_per_commit": statistics.median(calls)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _io() -> tuple[int, int]:
    """(bytes written, write syscalls) of this process so far: /proc/self/io's wchar and
    syscw (what write calls were given, page cache or not)."""
    f = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    return int(f["wchar"]), int(f["syscw"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--per-commit", type=int, default=1_000)
    ap.add_argument("--commits", type=int, default=40)
    ap.add_argument("--value", type=int, default=256)
    ap.add_argument("--layout", choices=[*LAYOUTS, "all"], default="all")
    ap.add_argument("--dir", default=None, help="where the environment goes (default: $TMPDIR)")
    a = ap.parse_args()
    for layout in (LAYOUTS if a.layout == "all" else [a.layout]):
        a.layout = layout
        r = run(a)
        print(f"{layout:13s} a commit of {a.per_commit} Puts: {r['commit_ms']:.1f} ms, "
              f"{r['bytes_per_commit'] / 1e6:.2f} MB in {r['write_calls_per_commit']:.0f} "
              f"write calls")


if __name__ == "__main__":
    main()
