#!/usr/bin/env python
"""Ranges while writes flow, against kubekv and real etcd 3.5 in the same run: what a
LIST-style read costs while the state db holds applied but uncommitted writes (kubekv's
pending view, mvcc/pending.py).

Each system runs as one member on loopback with a fresh data dir, preloaded with 10,000
keys of 256 bytes; then one asyncio client keeps `--puts` Puts to random keys and
`--ranges` Ranges over ~1,100 keys with limit 50 in flight for `--duration` seconds
(after a 2 s warm-up) and prints Puts/s, Ranges/s and the server's cores.

    python3 bench/range_under_writes.py [--systems kubekv,etcd] [--puts 32] [--ranges 16]
                                        [--duration 5] [--kubekv-flags="..."]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import sys
import time

import grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.loadgen import cpu_between, one_member, preload_keys  # noqa: E402
from etcdproto.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from etcdproto.etcdserverpb import rpc_pb2_grpc  # noqa: E402

KEYS = 10_000
WARMUP = 2.0
RANGE = pb.RangeRequest(key=b"bench/key/01000", range_end=b"bench/key/02100", limit=50)


async def _load(endpoint: str, pid: int, args: argparse.Namespace) -> dict:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        value = os.urandom(256)
        await preload_keys(kv, (b"bench/key/%05d" % i for i in range(KEYS)), value)
        begin = time.monotonic() + WARMUP
        stop = begin + args.duration
        done = {"put": 0, "range": 0}

        async def putter(seed: int) -> None:
            rnd = random.Random(seed)
            while time.monotonic() < stop:
                await kv.Put(pb.PutRequest(key=b"bench/key/%05d" % rnd.randrange(KEYS),
                                           value=value))
                if time.monotonic() > begin:
                    done["put"] += 1

        async def ranger() -> None:
            while time.monotonic() < stop:
                await kv.Range(RANGE)
                if time.monotonic() > begin:
                    done["range"] += 1

        cpu, *_ = await asyncio.gather(cpu_between(pid, begin, stop),
                                       *(putter(i) for i in range(args.puts)),
                                       *(ranger() for _ in range(args.ranges)))
        return {"puts_per_s": done["put"] / args.duration,
                "ranges_per_s": done["range"] / args.duration,
                "server_cores": cpu / args.duration}


def run(system: str, args: argparse.Namespace) -> dict:
    flags = args.kubekv_flags.split() if system == "kubekv" else []
    with one_member(system, *flags) as proc:
        return asyncio.run(_load(proc.endpoint, proc.proc.pid, args))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default="kubekv,etcd")
    ap.add_argument("--puts", type=int, default=32, help="Puts in flight")
    ap.add_argument("--ranges", type=int, default=16, help="Ranges in flight")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--kubekv-flags", default="",
                    help='extra kubekv flags, one string: --kubekv-flags="--flag value"')
    args = ap.parse_args()
    print("| system | Puts/s | Ranges/s (~1,100 keys, limit 50) | server cores |")
    print("|---|---:|---:|---:|")
    for system in args.systems.split(","):
        r = run(system, args)
        print(f"| {system} | {r['puts_per_s']:.0f} | {r['ranges_per_s']:.0f} | "
              f"{r['server_cores']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
