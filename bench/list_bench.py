#!/usr/bin/env python
"""A Kubernetes-style LIST against kubekv and real etcd 3.5 in the same run: server CPU
and wall time per request for a Range over every key of a prefix, the same with a
limit, and one key.

Each system runs as one member on loopback with a fresh data dir, is preloaded with
`--keys` keys of `--value` random bytes under /registry/pods/, then answers each request
shape `--requests` times in a row from one client (after 5 unmeasured ones); server CPU
is the process's user+system time over the requests. Results are per request.

    python3 bench/list_bench.py [--systems kubekv,etcd] [--keys 10000] [--value 256]
                                [--requests 40] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.loadgen import one_member, proc_cpu_seconds  # noqa: E402
from etcdproto.etcdserverpb import rpc_pb2 as pb  # noqa: E402

PREFIX = b"/registry/pods/"
PREFIX_END = b"/registry/pods0"


def run(system: str, args: argparse.Namespace) -> dict:
    with one_member(system) as proc:
        kv = proc.kv
        value = os.urandom(args.value)
        futs = [kv.Put.future(pb.PutRequest(key=PREFIX + b"ns/pod-%06d" % i, value=value))
                for i in range(args.keys)]
        for f in futs:
            f.result()
        shapes = {
            "list_all": pb.RangeRequest(key=PREFIX, range_end=PREFIX_END),
            "list_limit_500": pb.RangeRequest(key=PREFIX, range_end=PREFIX_END, limit=500),
            "get": pb.RangeRequest(key=PREFIX + b"ns/pod-000042"),
        }
        out = {}
        for name, req in shapes.items():
            n = args.requests if name == "list_all" else args.requests * 10
            for _ in range(5):
                kv.Range(req)
            c0, t0 = proc_cpu_seconds(proc.proc.pid), time.perf_counter()
            for _ in range(n):
                resp = kv.Range(req)
            wall, cpu = time.perf_counter() - t0, proc_cpu_seconds(proc.proc.pid) - c0
            out[name] = {"requests": n, "kvs": len(resp.kvs),
                         "wall_ms": wall / n * 1e3, "server_cpu_ms": cpu / n * 1e3}
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default="kubekv,etcd")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--value", type=int, default=256)
    ap.add_argument("--requests", type=int, default=40, help="LISTs of every key (x10 others)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = {s: run(s, args) for s in args.systems.split(",")}
    print(f"{args.keys} keys of {args.value} bytes; per request:\n")
    print("| system | request | kvs | server CPU ms | wall ms |\n|---|---|---:|---:|---:|")
    for system, shapes in results.items():
        for name, r in shapes.items():
            print(f"| {system} | {name} | {r['kvs']} | {r['server_cpu_ms']:.2f} | "
                  f"{r['wall_ms']:.2f} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"meta": {"command": " ".join(sys.argv), "date": time.strftime("%FT%T%z")},
             "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
