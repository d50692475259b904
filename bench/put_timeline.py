"""Where one Put's latency goes: the median time of each stage, one Put in flight.

A Put at 1 in flight holds the GIL for well under half of its latency; the rest is
waiting (thread hand-offs, event-loop wake-ups, fsyncs, Ready cycles). This stamps
the stages of each Put with `time.perf_counter_ns` and reports the median gap
between consecutive stages, so it shows which wait to cut.

    PYTHONPATH=$PWD python3 bench/put_timeline.py [--puts 2000]

The server runs in a child process that wraps the stage functions (below, `_CHILD`)
before it starts: nothing in the server's code is stamped, so this costs nothing
when not run. SIGUSR1 makes the child write its stamps. A stage whose function does
not run (or no longer exists) is reported as absent.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time

# The child: wrap the stage functions, record (stage, ns) into the open Put's record.
_CHILD = r"""
import functools, importlib, os, runpy, signal, sys, threading, time
ns = time.perf_counter_ns
puts = []     # finished records: {stage: ns}
cur = None    # the Put in progress (1 in flight: one at a time)
last_recv = [0]

def stamp(stage, first=True):
    r = cur
    if r is not None and (not first or stage not in r):
        r[stage] = ns()

def wrap(modname, qualname, before=None, after=None):
    try:
        mod = importlib.import_module(modname)
    except ImportError:
        return
    owner, _, attr = qualname.rpartition(".")
    obj = functools.reduce(getattr, owner.split("."), mod) if owner else mod
    fn = getattr(obj, attr, None)
    if fn is None:
        return
    if getattr(fn, "__code__", None) is not None and fn.__code__.co_flags & 0x80:  # async
        async def w(*a, **k):
            if before: before(*a)
            try:
                return await fn(*a, **k)
            finally:
                if after: after(*a)
    else:
        def w(*a, **k):
            if before: before(*a)
            try:
                return fn(*a, **k)
            finally:
                if after: after(*a)
    functools.update_wrapper(w, fn)
    setattr(obj, attr, w)

def recv(*_a):
    last_recv[0] = ns()

def parsed(*_a):
    global cur
    cur = {"0 bytes received": last_recv[0]}
    cur["1 request parsed"] = ns()

def flushed(*_a):
    global cur
    r = cur
    if r is not None and "l respond" in r:
        r["m response written"] = ns()
        puts.append(r)
        cur = None

S = lambda name: (lambda *_a: stamp(name))
wrap("kubekv_server.rpc.connection", "Http2Connection.data_received", before=recv)
wrap("kubekv_server.rpc.calls", "Call._parse", after=parsed)
wrap("kubekv_server.member.proposals", "Proposer.propose_future", before=S("2 propose"))
wrap("kubekv_raft.driver.runner", "Runner.submit", after=S("3 submitted"))
wrap("kubekv_raft.core.raw_node", "RawNode.ready", after=S("4 ready (loop)"))
wrap("kubekv_raft.driver.runner", "Runner._persist", before=S("5 log write start"),
     after=S("6 log write end"))
wrap("kubekv_raft.core.raw_node", "RawNode.advance", after=S("7 advance (loop)"))
wrap("kubekv_raft.driver.runner", "Runner._submit_apply", before=S("8 commit handed over"))
wrap("kubekv_raft.driver.runner", "Runner._hand_to_apply", before=S("8 commit handed over"))
wrap("kubekv_server.apply.applier", "Applier.apply", before=S("9 apply start"),
     after=S("a apply end"))
wrap("kubekv_server.replication.raft_node", "RaftNode._applied", before=S("b applied (loop)"))
wrap("kubekv_server.rpc.calls", "Call.respond", before=S("l respond"))
wrap("kubekv_server.rpc.connection", "Http2Connection.flush", after=flushed)

def dump(*_a):
    out = os.environ["KUBEKV_TIMELINE_OUT"]
    with open(out + ".tmp", "w") as f:
        for r in list(puts):
            f.write("\t".join(f"{k}={v}" for k, v in sorted(r.items())) + "\n")
    os.replace(out + ".tmp", out)
def reset(*_a):
    puts.clear()
signal.signal(signal.SIGUSR1, dump)
signal.signal(signal.SIGUSR2, reset)
sys.argv = ["kubekv_server", *sys.argv[1:]]
runpy.run_module("kubekv_server", run_name="__main__", alter_sys=True)
"""


def _signal_and_read(pid: int, path: str) -> list[dict[str, int]]:
    before = os.stat(path).st_mtime_ns if os.path.exists(path) else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not os.path.exists(path) or os.stat(path).st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise TimeoutError("the server wrote no stamps")
        time.sleep(0.05)
    out = []
    with open(path) as f:
        for line in f:
            out.append({k: int(v) for k, v in (kv.split("=") for kv in line.split("\t"))})
    return out


def table(puts: list[dict[str, int]], client_us: list[float]) -> str:
    """Per stage, in the order of their median time since the request's bytes arrived:
    that median, and the median gap from the stage before it (µs), as markdown. A stage
    stamped in under half of the Puts (it ran after the response, off the path) is
    listed at the end without a gap."""
    stamped = {k for r in puts for k in r}
    first = min(stamped)
    seen = {s: sum(s in r for r in puts) for s in stamped}
    since = {s: statistics.median((r[s] - r[first]) / 1000 for r in puts if s in r)
             for s in stamped - {first}}
    path = sorted((s for s in since if seen[s] * 2 >= len(puts)), key=since.get)
    rows = ["| stage | median µs since bytes received | median µs since previous stage | "
            "p90 of that | seen in |", "|---|---:|---:|---:|---:|"]
    prev = first
    for s in path:
        gaps = sorted((r[s] - r[prev]) / 1000 for r in puts if s in r and prev in r)
        rows.append(f"| {s[2:]} | {since[s]:.0f} | {statistics.median(gaps):.0f} | "
                    f"{gaps[int(len(gaps) * 0.9)]:.0f} | {len(gaps)}/{len(puts)} |")
        prev = s
    for s in sorted(set(since) - set(path), key=since.get):
        rows.append(f"| {s[2:]} (mostly after the response) | {since[s]:.0f} | | | "
                    f"{seen[s]}/{len(puts)} |")
    client_us.sort()
    rows.append(f"| client: Put call (grpc, both ways) | {statistics.median(client_us):.0f} "
                f"| | {client_us[int(len(client_us) * 0.9)]:.0f} (p90) | |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--puts", type=int, default=2000, help="Puts measured, one in flight")
    args = p.parse_args()

    import grpc

    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from etcdproto.etcdserverpb import rpc_pb2_grpc
    from kubekv.embed import Member

    tmp = tempfile.mkdtemp(prefix="put-timeline-")
    child = os.path.join(tmp, "stamp_stages.py")
    with open(child, "w") as f:
        f.write(_CHILD)
    out = os.path.join(tmp, "stamps.tsv")

    class Stamped(Member):
        def command(self) -> list[str]:
            argv = super().command()  # python -m kubekv_server <flags>
            return [argv[0], child, *argv[3:]]

    member = Stamped(base_dir=os.path.join(tmp, "member"), env={"KUBEKV_TIMELINE_OUT": out})
    member.start(timeout=120)
    client_us: list[float] = []
    try:
        kv = rpc_pb2_grpc.KVStub(grpc.insecure_channel(member.endpoint))
        value = b"v" * 256
        for i in range(300):  # warm up: imports, caches, the key space
            kv.Put(pb.PutRequest(key=b"k%05d" % i, value=value))
        os.kill(member.pid, signal.SIGUSR2)
        kv.Put(pb.PutRequest(key=b"k", value=value))  # the reset ran before this one
        os.kill(member.pid, signal.SIGUSR2)
        time.sleep(0.2)
        for i in range(args.puts):
            t0 = time.perf_counter_ns()
            kv.Put(pb.PutRequest(key=b"k%05d" % (i % 10000), value=value))
            client_us.append((time.perf_counter_ns() - t0) / 1000)
        puts = _signal_and_read(member.pid, out)
    finally:
        member.stop()
    print(f"one Put in flight, {len(puts)} Puts stamped; load average {os.getloadavg()[0]:.2f}\n")
    print(table(puts, client_us))


if __name__ == "__main__":
    main()
