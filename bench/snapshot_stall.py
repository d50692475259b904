#!/usr/bin/env python
"""Writes while the member takes Raft snapshots, against kubekv and real etcd 3.5 in the
same run: whether a snapshot stops the apply stage (kubekv's copies the whole state db,
so the stall grows with the database).

Each system runs as one member on loopback with a fresh data dir and
`--snapshot-count` (default 10,000, so several snapshots fall in the window), preloaded
with `--keys` keys of 1 KiB; then one asyncio client keeps `--inflight` Puts of 256
bytes to random keys in flight for `--duration` seconds (after a 2 s warm-up) and prints
Puts/s, the latency percentiles and maximum, the longest gap between two answers, the
server's cores, the data dir's size and (kubekv) the snapshots its log reports.

    python3 bench/snapshot_stall.py [--systems kubekv,etcd] [--keys 50000]
                                    [--snapshot-count 10000] [--inflight 64] [--duration 8]
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

WARMUP = 2.0


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def _load(endpoint: str, pid: int, args: argparse.Namespace) -> dict:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        big, value = os.urandom(1024), os.urandom(256)
        await preload_keys(kv, (b"bench/key/%06d" % i for i in range(args.keys)), big)
        begin = time.monotonic() + WARMUP
        stop = begin + args.duration
        lat: list[float] = []
        answered: list[float] = []

        async def putter(seed: int) -> None:
            rnd = random.Random(seed)
            while time.monotonic() < stop:
                t = time.monotonic()
                await kv.Put(pb.PutRequest(key=b"bench/key/%06d" % rnd.randrange(args.keys),
                                           value=value))
                now = time.monotonic()
                if t > begin:
                    lat.append((now - t) * 1e3)
                    answered.append(now)

        cpu, *_ = await asyncio.gather(cpu_between(pid, begin, stop),
                                       *(putter(i) for i in range(args.inflight)))
        lat.sort()
        answered.sort()
        gap = max((b - a for a, b in zip(answered, answered[1:], strict=False)), default=0.0)
        return {"puts_per_s": len(lat) / args.duration, "p50_ms": _pct(lat, 0.5),
                "p99_ms": _pct(lat, 0.99), "max_ms": lat[-1], "gap_ms": gap * 1e3,
                "server_cores": cpu / args.duration}


def run(system: str, args: argparse.Namespace) -> dict:
    with one_member(system, "--snapshot-count", str(args.snapshot_count)) as proc:
        r = asyncio.run(_load(proc.endpoint, proc.proc.pid, args))
        log = proc.log_path.read_text(errors="replace")
        # etcd runs at --log-level warn here: its snapshots are not counted
        r["snapshots"] = (log.count("event=snapshot_created") if system == "kubekv"
                          else "–")
        r["db_mb"] = sum(f.stat().st_size for f in proc.data_dir.rglob("*")
                         if f.is_file() and "snap" not in f.parts) / 2**20
        return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default="kubekv,etcd")
    ap.add_argument("--keys", type=int, default=50_000, help="keys of 1 KiB preloaded")
    ap.add_argument("--snapshot-count", type=int, default=10_000)
    ap.add_argument("--inflight", type=int, default=64, help="Puts in flight")
    ap.add_argument("--duration", type=float, default=8.0)
    args = ap.parse_args()
    print("| system | Puts/s | p50 ms | p99 ms | max ms | longest gap ms | server cores "
          "| snapshots (whole run) | data dir MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for system in args.systems.split(","):
        r = run(system, args)
        print(f"| {system} | {r['puts_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['max_ms']:.1f} | {r['gap_ms']:.1f} | {r['server_cores']:.2f} | "
              f"{r['snapshots']} | {r['db_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
