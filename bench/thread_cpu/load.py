"""Closed-loop Put or kube-Txn load on members started by members.py, with the CPU per
request of each member and of each of its threads, from /proc (not product code).

    python3 bench/thread_cpu/load.py --dir D --base 2479 --members 3 --inflight 64 \
        --duration 6 [--procs 2] [--targets K] [--op put|txn] [--tree T]

--targets K sends to the first K members only (default all: closed loop i sends to
member i mod N, so at 1 in flight all requests go to n1: `members.py start --n1-leader`
makes that the leader, as cluster_bench.py does). Requests per second come from the
revision moved during the run. Threads are listed by thread id in start order: the first
is the loop; kubekv-apply and kubekv-log follow (Python names threads only in Python).
Thread CPU moves far less with the machine's other load than requests per second: on a
shared machine it is the evidence, requests per second the sanity check. Each thread's
context switches per request (/proc/PID/task/TID/status, voluntary + involuntary) follow
its CPU: at 1 in flight a member's wake-ups cost it about as much as its Python does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--base", type=int, default=2479)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--targets", type=int, default=0)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--duration", type=float, default=6)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--op", default="put", choices=["put", "txn"])
    ap.add_argument("--tree", default=str(HERE.parent.parent))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


async def closed_loops(a: argparse.Namespace, endpoints: list[str]) -> None:
    """This process's share of the requests in flight, until the duration ends."""
    import grpc

    from etcdproto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    stubs = [rpc_pb2_grpc.KVStub(grpc.aio.insecure_channel(e)) for e in endpoints]
    value = b"x" * 256
    end = time.monotonic() + a.duration

    async def loop(i: int) -> None:
        stub = stubs[i % len(stubs)]
        own = b"load/%d/%d" % (os.getpid(), i)
        rev = 0
        while time.monotonic() < end:
            if a.op == "put":
                key = b"k%d" % random.randrange(10_000)
                await stub.Put(rpc_pb2.PutRequest(key=key, value=value))
                continue
            # kube-apiserver's update: If mod_revision(key) == rev Then Put Else Get
            txn = rpc_pb2.TxnRequest(
                compare=[rpc_pb2.Compare(key=own, target=rpc_pb2.Compare.MOD, mod_revision=rev)],
                success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=own, value=value))],
                failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=own))])
            r = await stub.Txn(txn)
            rev = (r.header.revision if r.succeeded
                   else r.responses[0].response_range.kvs[0].mod_revision)

    await asyncio.gather(*(loop(i) for i in range(max(1, a.inflight // a.procs))))


def thread_ticks(pid: int) -> dict[int, int]:
    """user + system clock ticks of each thread of pid."""
    out = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            stat = pathlib.Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.index(")") + 2:].split()
        out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def thread_switches(pid: int) -> dict[int, int]:
    """Context switches (voluntary + involuntary) of each thread of pid so far: each is a
    wake-up or a preemption, which at 1 in flight cost a member about as much as its
    Python does."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = pathlib.Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        out[int(tid)] = sum(int(line.split()[1]) for line in status.splitlines()
                            if "ctxt_switches:" in line)
    return out


def main() -> int:
    a = parse()
    sys.path.insert(0, a.tree)
    endpoints = [f"127.0.0.1:{a.base + 10 * i}" for i in range(a.targets or a.members)]
    if a.worker:
        asyncio.run(closed_loops(a, endpoints))
        return 0
    import grpc

    from etcdproto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    def revision() -> int:
        kv = rpc_pb2_grpc.KVStub(grpc.insecure_channel(endpoints[0]))
        return kv.Range(rpc_pb2.RangeRequest(key=b"a")).header.revision

    d = pathlib.Path(a.dir)
    pids = [int((d / f"n{i}.pid").read_text()) for i in range(1, a.members + 1)]
    rev0, before, t0 = revision(), [thread_ticks(p) for p in pids], time.monotonic()
    sw_before = [thread_switches(p) for p in pids]
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", *sys.argv[1:]])
               for _ in range(a.procs)]
    for w in workers:
        w.wait()
    took, after = time.monotonic() - t0, [thread_ticks(p) for p in pids]
    sw_after = [thread_switches(p) for p in pids]
    n = max(revision() - rev0, 1)
    hz = os.sysconf("SC_CLK_TCK")
    print(f"{n / took:.0f} {a.op}s/s over {took:.1f} s ({n} revisions)")
    for i, (b, c) in enumerate(zip(before, after, strict=True), 1):
        used = {t: c[t] - b.get(t, 0) for t in c if c[t] > b.get(t, 0)}
        total = sum(used.values())
        sb, sa = sw_before[i - 1], sw_after[i - 1]
        per = ", ".join(f"{t}:{ticks / hz / n * 1e6:.1f}us/"
                        f"{(sa.get(t, 0) - sb.get(t, 0)) / n:.2f}sw"
                        for t, ticks in used.items())
        print(f"  n{i}: {total / hz / took:.2f} cores, {total / hz / n * 1e6:.1f} us CPU per "
              f"{a.op}; threads (CPU/context switches per {a.op}) {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
