"""Startup time of MVCCStore against history size: it must not grow with history.

    python bench/mvcc_startup.py

Builds stores with 1k and 100k revisions (1,000 keys, updated over and over),
closes the environment, then times opening the environment + ``MVCCStore(env)`` +
the first read view (which reads the current revision from ``meta``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import lmdb

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from kubekv_server.mvcc import MVCCStore  # noqa: E402


def build(path: str, revisions: int) -> None:
    env = lmdb.open(path, max_dbs=16, map_size=1 << 32, sync=False)
    store = MVCCStore(env)
    for b in range(0, revisions, 1000):
        with env.begin(write=True) as txn:
            for i in range(b, min(b + 1000, revisions)):
                w = store.write(txn)
                w.put(b"key-%04d" % (i % 1000), b"v" * 64, 0)
                w.end()
    env.sync(True)
    env.close()


def open_time(path: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    env = lmdb.open(path, max_dbs=16, map_size=1 << 32)
    store = MVCCStore(env)
    with store.read() as r:
        rev = r.current_revision
    dt = time.perf_counter() - t0
    env.close()
    return dt, rev


def main() -> None:
    for n in (1_000, 100_000):
        with tempfile.TemporaryDirectory() as d:
            build(d, n)
            times = []
            for _ in range(20):
                dt, rev = open_time(d)
                times.append(dt)
            size = os.path.getsize(os.path.join(d, "data.mdb"))
            print(
                f"{n:>7} revisions (current rev {rev}, {size / 1e6:.1f} MB): "
                f"open median {statistics.median(times) * 1e3:.3f} ms, "
                f"max {max(times) * 1e3:.3f} ms"
            )


if __name__ == "__main__":
    main()
