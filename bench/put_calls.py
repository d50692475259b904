"""Python-level calls the kubekv server makes per Put: a CPU measure that other load
on the machine does not move.

CPU per 1k Puts (kv_bench.py) swings by 10-20 % between runs on a shared 2-core
machine. The number of Python function calls (and calls into C) the server makes
per Put, one Put in flight at a time, is the same run after run (each Put is its
own Raft batch), so it shows a cut of Python work that CPU time cannot resolve.

    PYTHONPATH=$PWD python3 bench/put_calls.py [--puts 1000] [--top 40] [--op txn]

`--op txn` counts kube-style update Txns instead (If mod_revision(key) == last seen,
Then Put, Else Get: `bench/kube_txn.py`), each compare holding.

The server runs in a child process under a profile hook (sys.setprofile and
threading.setprofile) that counts call events per function in every thread;
SIGUSR1 makes it write the counts. Calls the Raft clock makes while idle (ticks)
are measured over a few idle seconds and subtracted.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import tempfile
import time

# The child: count "call" and "c_call" events per function, dump them on SIGUSR1.
_CHILD = r"""
import collections, os, runpy, signal, sys, threading
counts = collections.Counter()
def prof(frame, event, arg, c=counts):
    if event == "call":
        co = frame.f_code
        c[(co.co_filename, co.co_name)] += 1
    elif event == "c_call":
        c[("<C>", getattr(arg, "__qualname__", str(arg)))] += 1
def dump(*_a):
    snap = dict(counts)
    with open(os.environ["KUBEKV_CALLS_OUT"] + ".tmp", "w") as f:
        for (fn, name), n in snap.items():
            f.write(f"{n}\t{fn}\t{name}\n")
    os.replace(os.environ["KUBEKV_CALLS_OUT"] + ".tmp", os.environ["KUBEKV_CALLS_OUT"])
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["kubekv_server", *sys.argv[1:]]
sys.setprofile(prof)
threading.setprofile(prof)
runpy.run_module("kubekv_server", run_name="__main__", alter_sys=True)
"""


def _counts(pid: int, path: str) -> collections.Counter:
    """Ask the server for its counts; (file, function) -> calls so far."""
    before = os.stat(path).st_mtime_ns if os.path.exists(path) else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not os.path.exists(path) or os.stat(path).st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise TimeoutError("the server wrote no counts")
        time.sleep(0.05)
    out: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            n, fn, name = line.rstrip("\n").split("\t")
            out[(fn, name)] = int(n)
    return out


def _area(filename: str) -> str:
    """The package a function's file belongs to: a kubekv subpackage or a stdlib module."""
    parts = filename.replace(os.sep, "/").split("/")
    for top in ("kubekv_server", "kubekv_raft", "etcdproto"):
        if top in parts:
            i = parts.index(top)
            return "/".join(parts[i:i + 2]).removesuffix(".py")
    if "python3" in filename and "site-packages" not in filename:
        return "stdlib " + (parts[-2] if parts[-2] in ("asyncio", "concurrent", "futures")
                            else parts[-1].removesuffix(".py"))
    return parts[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--puts", type=int, default=1000, help="Puts measured, one in flight")
    p.add_argument("--idle", type=float, default=3.0, help="idle seconds measured (ticks)")
    p.add_argument("--top", type=int, default=40, help="functions listed (0: none)")
    p.add_argument("--op", choices=("put", "txn"), default="put",
                   help="put: PutRequest; txn: kube-style update Txn (bench/kube_txn.py)")
    args = p.parse_args()

    import grpc

    from bench.kube_txn import revision_after, update_request
    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from etcdproto.etcdserverpb import rpc_pb2_grpc
    from kubekv.embed import Member

    tmp = tempfile.mkdtemp(prefix="put-calls-")
    child = os.path.join(tmp, "count_calls.py")
    with open(child, "w") as f:
        f.write(_CHILD)
    out = os.path.join(tmp, "calls.tsv")

    class Counted(Member):
        def command(self) -> list[str]:
            argv = super().command()  # python -m kubekv_server <flags>
            return [argv[0], child, *argv[3:]]

    member = Counted(base_dir=os.path.join(tmp, "member"), env={"KUBEKV_CALLS_OUT": out})
    member.start(timeout=120)
    try:
        kv = rpc_pb2_grpc.KVStub(grpc.insecure_channel(member.endpoint))
        value = b"v" * 256
        revisions: dict[bytes, int] = {}  # --op txn: each key's mod_revision, last seen

        def write(key: bytes) -> None:
            if args.op == "put":
                kv.Put(pb.PutRequest(key=key, value=value))
                return
            resp = kv.Txn(update_request(key, value, revisions.get(key, 0)))
            if not resp.succeeded:
                raise RuntimeError(f"compare failed on {key!r}")
            revisions[key] = revision_after(resp)

        for i in range(300):  # warm up: imports, caches, the key space
            write(b"k%05d" % i)
        a = _counts(member.pid, out)
        t0 = time.monotonic()
        time.sleep(args.idle)
        idle = _counts(member.pid, out) - a
        idle_s = time.monotonic() - t0
        a = _counts(member.pid, out)
        t0 = time.monotonic()
        for i in range(args.puts):
            write(b"k%05d" % (i % (10000 if args.op == "put" else 300)))
        busy_s = time.monotonic() - t0
        d = _counts(member.pid, out) - a
    finally:
        member.stop()

    def per_put(key) -> float:
        return (d[key] - idle[key] * busy_s / idle_s) / args.puts

    py = sum(per_put(k) for k in d if k[0] != "<C>")
    c = sum(per_put(k) for k in d if k[0] == "<C>")
    what = "Put" if args.op == "put" else "Txn"
    print(f"per {what}, 1 in flight ({args.puts} {what}s): {py:.0f} Python calls, "
          f"{c:.0f} calls into C")
    areas: collections.Counter = collections.Counter()
    for key in d:
        if key[0] != "<C>":
            areas[_area(key[0])] += per_put(key)
    print(f"Python calls per {what} by package:")
    for area, n in areas.most_common():
        print(f"{n:7.1f}  {area}")
    if args.top:
        cwd = os.getcwd() + os.sep
        for key in sorted(d, key=per_put, reverse=True)[: args.top]:
            fn, name = key
            print(f"{per_put(key):7.2f}  {name}  {fn.replace(cwd, '').replace(sys.prefix, '')}")


if __name__ == "__main__":
    main()
