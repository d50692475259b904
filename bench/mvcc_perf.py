"""Hot-path figures of the MVCC store: puts/s in one LMDB write txn, gets/s.

    python bench/mvcc_perf.py

Puts: batches of 1,000 puts, each put its own WriteTxn (one etcd revision, as the
applier does for one request), all in one LMDB write txn committed without fsync
(the commit is the Raft/apply layer's cost). Gets: single-key ranges at the current
revision on a 10k-key store, all in one read view, and also one view per get.
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

N_KEYS = 10_000
BATCH = 1_000


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        env = lmdb.open(d, max_dbs=16, map_size=1 << 32, sync=False, metasync=False)
        store = MVCCStore(env)
        value = b"v" * 128
        keys = [b"/registry/pods/default/pod-%06d" % i for i in range(N_KEYS)]

        rates: list[list[float]] = []
        for _ in range(6):  # round 0 creates keys, later rounds update them
            rates.append([])
            for b in range(0, N_KEYS, BATCH):
                t0 = time.perf_counter()
                with env.begin(write=True) as txn:
                    for k in keys[b : b + BATCH]:
                        w = store.write(txn)
                        w.put(k, value, 0)
                        w.end()
                dt = time.perf_counter() - t0
                rates[-1].append(BATCH / dt)
        create = statistics.median(rates[0])
        update = statistics.median(r for rnd in rates[1:] for r in rnd)
        print(f"puts/s, one LMDB txn of {BATCH} puts (WriteTxn per put, incl. commit), median:")
        print(f"  new keys {create:,.0f}/s; updates of existing keys {update:,.0f}/s")

        t0 = time.perf_counter()
        with env.begin(write=True) as txn:
            w = store.write(txn)
            for k in keys[:BATCH]:
                w.put(k, value, 0)
            w.end()
        print(f"  one WriteTxn of {BATCH} puts: {BATCH / (time.perf_counter() - t0):,.0f}/s")

        n = 200_000
        with store.read() as r:
            t0 = time.perf_counter()
            for i in range(n):
                r.range(keys[i % N_KEYS], None)
            dt = time.perf_counter() - t0
        print(f"gets/s at current rev, 10k keys, one read view: {n / dt:,.0f}/s")
        with store.read() as r:
            t0 = time.perf_counter()
            for i in range(n):
                r.range(keys[i % N_KEYS], None).kvs  # noqa: B018
            dt = time.perf_counter() - t0
        print(f"  same, parsing the KeyValue: {n / dt:,.0f}/s")
        n = 50_000
        t0 = time.perf_counter()
        for i in range(n):
            with store.read() as r:
                r.range(keys[i % N_KEYS], None)
        dt = time.perf_counter() - t0
        print(f"  one read view per get: {n / dt:,.0f}/s")

        n = 20_000
        with store.read() as r:
            old = r.current_revision - N_KEYS * 3
            t0 = time.perf_counter()
            for i in range(n):
                r.range(keys[i % N_KEYS], None, rev=old)
            dt = time.perf_counter() - t0
        print(f"gets/s at an old revision (key-index seek): {n / dt:,.0f}/s")

        with store.read() as r:
            t0 = time.perf_counter()
            res = r.range(b"/registry/pods/", b"/registry/pods0", limit=500)
            dt = time.perf_counter() - t0
        print(f"range prefix limit=500 of {res.count} keys (count all): {dt * 1e3:.1f} ms")
        env.close()


if __name__ == "__main__":
    main()
