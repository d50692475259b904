#!/usr/bin/env python
"""KV benchmark (issue 2): kubekv against real etcd 3.5, same load, same run.

Each server is started here on a fresh temp data dir and free 127.0.0.1 ports,
one after the other, and always stopped at the end. A closed-loop load
generator runs in several client processes (grpc.aio, one channel each); N
requests in flight in total are split across them. Per (server, op, in-flight)
cell: warm-up, then a fixed measured window in which we count completed
requests, their latencies, errors, and the CPU time the server process (all its
threads, /proc/<pid>/stat) and the client processes used.

    python bench/kv_bench.py [--duration 10] [--inflight 1,16,64,256]
                             [--ops put,range,srange] [--clients N]
                             [--server kubekv|etcd|both] [--kubekv-flags "..."]
                             [--json out.json] [--profile DIR]

See bench/README.md for what is measured and the results on the dev machine.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import contextlib
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from etcdproto.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from etcdproto.etcdserverpb import rpc_pb2_grpc  # noqa: E402
from tests import harness  # noqa: E402

NUM_KEYS = 10_000
VALUE_SIZE = 256
KEY_FMT = "bench/key/%05d"
OPS = {
    "put": "Put (256-byte value, random key of 10k)",
    "range": "linearizable Range (single key, serializable=false)",
    "srange": "serializable Range (single key, serializable=true)",
}
SERVERS = ("kubekv", "etcd")
# Targets from issue 2, checked at 64 in flight.
TARGET_INFLIGHT = 64
TARGET_OPS_RATIO = {"put": 0.3, "srange": 0.6}
TARGET_P99_RATIO = 3.0
# Hard bounds on every request loop (besides the time window).
MAX_OPS_PER_LOOP = 5_000_000
CALL_TIMEOUT = 10.0
PRELOAD_INFLIGHT = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- /proc readings


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process and all its threads (live and exited), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, summed over cores, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(v) for v in parts[:8]]  # user nice system idle iowait irq softirq steal
    idle = vals[3] + vals[4]
    total = sum(vals)
    return (total - idle) / CLK_TCK, total / CLK_TCK


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


# ----------------------------------------------------------------- client processes


def _requests(op: str) -> list:
    keys = [(KEY_FMT % i).encode() for i in range(NUM_KEYS)]
    if op == "put":
        value = os.urandom(VALUE_SIZE)
        return [pb.PutRequest(key=k, value=value) for k in keys]
    return [pb.RangeRequest(key=k, serializable=(op == "srange")) for k in keys]


async def _run_loops(stubs, op: str, reqs: list, inflight: int, t_start: float, t_end: float,
                     seed: int) -> dict:
    """`inflight` closed loops until t_end; record completions inside [t_start, t_end]."""
    lat = array.array("d")
    errors: collections.Counter = collections.Counter()
    warm_errors: collections.Counter = collections.Counter()
    rnd = random.Random(seed)
    mono = time.monotonic
    nreq = len(reqs)
    ops = {"warm": 0, "window": 0, "after": 0}

    async def loop(i: int) -> None:
        call = getattr(stubs[i % len(stubs)], "Put" if op == "put" else "Range")
        n = 0
        while n < MAX_OPS_PER_LOOP:
            t0 = mono()
            if t0 >= t_end:
                return
            n += 1
            try:
                await call(reqs[rnd.randrange(nreq)], timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                t1 = mono()
                (errors if t_start <= t1 <= t_end else warm_errors)[exc.code().name] += 1
                await asyncio.sleep(0.01)  # no hot spin against a failing server
                continue
            t1 = mono()
            if t1 < t_start:
                ops["warm"] += 1
            elif t1 <= t_end:
                lat.append(t1 - t0)
            else:
                ops["after"] += 1

    hard_deadline = max(t_end - mono(), 0) + CALL_TIMEOUT + 5
    await asyncio.wait_for(asyncio.gather(*(loop(i) for i in range(inflight))), hard_deadline)
    ops["window"] = len(lat)
    return {"lat": lat.tobytes(), "errors": dict(errors), "warm_errors": dict(warm_errors),
            "ops": ops}


async def _preload(stub, keys: list[int], value: bytes, inflight: int) -> int:
    todo = list(keys)
    done = 0

    async def loop() -> None:
        nonlocal done
        while todo:
            k = todo.pop()
            for attempt in range(5):
                try:
                    await stub.Put(pb.PutRequest(key=(KEY_FMT % k).encode(), value=value),
                                   timeout=CALL_TIMEOUT)
                    done += 1
                    break
                except grpc.aio.AioRpcError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(loop() for _ in range(max(1, inflight))))
    return done


async def _worker_async(conn, endpoint: str, index: int, channels: int) -> None:
    loop = asyncio.get_running_loop()
    chans = [grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    stubs = [rpc_pb2_grpc.KVStub(ch) for ch in chans]
    reqs = {op: _requests(op) for op in OPS}
    try:
        while True:
            try:
                cmd = await loop.run_in_executor(None, conn.recv)
            except EOFError:  # the parent went away
                return
            kind = cmd["cmd"]
            if kind == "stop":
                return
            try:
                if kind == "preload":
                    n = await _preload(stubs[0], cmd["keys"], os.urandom(VALUE_SIZE),
                                       cmd["inflight"])
                    conn.send({"ok": True, "done": n})
                elif kind == "cell":
                    res = await _run_loops(stubs, cmd["op"], reqs[cmd["op"]], cmd["inflight"],
                                           cmd["t_start"], cmd["t_end"],
                                           cmd["seed"] * 1000 + index)
                    res["ok"] = True
                    conn.send(res)
                else:
                    conn.send({"ok": False, "error": f"unknown command {kind}"})
            except Exception as exc:  # report, let the parent decide
                conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for ch in chans:
            await ch.close()


def worker_main(conn, endpoint: str, index: int, channels: int) -> None:
    """Entry point of a client process: serve commands from the parent until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        asyncio.run(_worker_async(conn, endpoint, index, channels))
    finally:
        conn.close()


class Clients:
    """A pool of client processes bound to one server endpoint."""

    def __init__(self, endpoint: str, n: int, channels: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has used gRPC
        self.procs = []
        self.conns = []
        for i in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, endpoint, i, channels),
                            name=f"kv-bench-client-{i}", daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _collect(self, conns, timeout: float) -> list[dict]:
        out = []
        deadline = time.monotonic() + timeout
        for c in conns:
            if not c.poll(max(deadline - time.monotonic(), 0.01)):
                raise RuntimeError("a client process did not answer in time")
            res = c.recv()
            if not res.get("ok"):
                raise RuntimeError(f"client process failed: {res.get('error')}")
            out.append(res)
        return out

    def preload(self, num_keys: int, inflight: int) -> int:
        n = len(self.conns)
        for i, c in enumerate(self.conns):
            c.send({"cmd": "preload", "keys": list(range(i, num_keys, n)),
                    "inflight": max(1, inflight // n)})
        return sum(r["done"] for r in self._collect(self.conns, 300))

    def start_cell(self, op: str, inflight: int, t_start: float, t_end: float, seed: int):
        shares = split(inflight, len(self.conns))
        active = [c for c, s in zip(self.conns, shares, strict=True) if s > 0]
        for c, s in zip(self.conns, shares, strict=True):
            if s > 0:
                c.send({"cmd": "cell", "op": op, "inflight": s, "t_start": t_start,
                        "t_end": t_end, "seed": seed})
        return active

    def finish_cell(self, active, t_end: float) -> list[dict]:
        return self._collect(active, max(t_end - time.monotonic(), 0) + CALL_TIMEOUT + 30)

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                c.send({"cmd": "stop"})
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
        for c in self.conns:
            c.close()


def split(total: int, parts: int) -> list[int]:
    """Spread `total` in-flight requests as evenly as possible over `parts` processes."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# ----------------------------------------------------------------- servers


def start_server(sp: harness.ServerProcess, timeout: float = 60.0) -> harness.ServerProcess:
    """harness.ServerProcess.start, but in its own session: a Ctrl-C on the terminal reaches
    only us, and we stop the server ourselves (SIGTERM, then SIGKILL) in `finally`."""
    sp.data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(sp.log_path, "ab") as log:
        sp.proc = subprocess.Popen(
            sp.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=sp.env, cwd=str(sp.data_dir.parent), start_new_session=True,
        )
    sp.wait_ready(timeout)
    return sp


def make_server(name: str, tmp: pathlib.Path, args) -> harness.ServerProcess:
    if name == "kubekv":
        return harness.kubekv_process(tmp, *shlex.split(args.kubekv_flags))
    return harness.etcd_process(tmp, *shlex.split(args.etcd_flags))


def count_keys(sp: harness.ServerProcess) -> int:
    resp = sp.kv.Range(pb.RangeRequest(key=b"bench/key/", range_end=b"bench/key0",
                                       count_only=True), timeout=30)
    return resp.count


# ----------------------------------------------------------------- measurement


def percentile(sorted_vals, q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[idx]


def sleep_until(t: float) -> None:
    while True:
        d = t - time.monotonic()
        if d <= 0:
            return
        time.sleep(min(d, 0.5))


def run_cell(server: harness.ServerProcess, clients: Clients, op: str, inflight: int,
             args, seed: int, profiler=None) -> dict:
    t_start = time.monotonic() + 0.3 + args.warmup
    t_end = t_start + args.duration
    active = clients.start_cell(op, inflight, t_start, t_end, seed)
    sleep_until(t_start)
    pids = clients.pids
    s0 = proc_cpu_seconds(server.proc.pid)
    c0 = sum(proc_cpu_seconds(p) for p in pids)
    m0 = machine_cpu_seconds()
    w0 = time.monotonic()
    prof = profiler(op, inflight) if profiler else None
    sleep_until(t_end)
    s1 = proc_cpu_seconds(server.proc.pid)
    c1 = sum(proc_cpu_seconds(p) for p in pids)
    m1 = machine_cpu_seconds()
    w1 = time.monotonic()
    results = clients.finish_cell(active, t_end)
    if prof is not None:
        prof.wait()
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.argv[0]} exited during the cell:\n{server.log_tail()}")
    lat = array.array("d")
    errors: collections.Counter = collections.Counter()
    warm_errors: collections.Counter = collections.Counter()
    for r in results:
        lat.frombytes(r["lat"])
        errors.update(r["errors"])
        warm_errors.update(r["warm_errors"])
    vals = sorted(lat)
    window = w1 - w0
    n = len(vals)
    server_cpu = s1 - s0
    client_cpu = c1 - c0
    machine_busy = m1[0] - m0[0]
    return {
        "op": op,
        "inflight": inflight,
        "clients": len(active),
        "window_s": round(window, 3),
        "ops": n,
        "ops_per_s": n / window if window > 0 else 0.0,
        "p50_ms": percentile(vals, 0.50) * 1000,
        "p99_ms": percentile(vals, 0.99) * 1000,
        "mean_ms": (sum(vals) / n * 1000) if n else float("nan"),
        "max_ms": (vals[-1] * 1000) if n else float("nan"),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "warmup_errors": sum(warm_errors.values()),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_ms_per_1k": (server_cpu * 1000 / n * 1000) if n else float("nan"),
        "server_cores": server_cpu / window if window > 0 else 0.0,
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_ms_per_1k": (client_cpu * 1000 / n * 1000) if n else float("nan"),
        "machine_busy_cores": machine_busy / window if window > 0 else 0.0,
        "other_busy_cores": max(machine_busy - server_cpu - client_cpu, 0) / window
        if window > 0 else 0.0,
    }


def describe(server_name: str, cell: dict) -> str:
    return (
        f"  {server_name:6s} {cell['op']:6s} @{cell['inflight']:<4d} "
        f"{cell['ops_per_s']:9.0f} ops/s  p50 {cell['p50_ms']:7.2f} ms  "
        f"p99 {cell['p99_ms']:7.2f} ms  err {cell['errors']:<3d} "
        f"server {cell['server_cpu_ms_per_1k']:6.1f} ms CPU/1k ({cell['server_cores']:.2f} cores)  "
        f"clients {cell['client_cpu_ms_per_1k']:6.1f} ms/1k  "
        f"others {cell['other_busy_cores']:.2f} cores"
    )


class PySpy:
    """Optional: sample the kubekv server with py-spy during each measured window."""

    def __init__(self, out_dir: pathlib.Path, pid_fn, duration: float, rate: int,
                 extra: list[str]) -> None:
        self.out_dir = out_dir
        self.pid_fn = pid_fn
        self.duration = duration
        self.rate = rate
        self.extra = extra
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files: list[pathlib.Path] = []

    def __call__(self, op: str, inflight: int) -> subprocess.Popen:
        out = self.out_dir / f"kubekv-{op}-{inflight}.collapsed.txt"
        self.files.append(out)
        argv = ["py-spy", "record", "--pid", str(self.pid_fn()), "--duration",
                str(max(1, int(self.duration))), "--rate", str(self.rate), "--format", "raw",
                "-o", str(out)]
        argv += self.extra
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)


def summarize_collapsed(path: pathlib.Path, top: int = 25) -> str:
    """Top functions by self and by total samples from a py-spy raw (collapsed stacks) file."""
    self_c: collections.Counter = collections.Counter()
    total_c: collections.Counter = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame_name(f) for f in stack.split(";")]
        self_c[frames[-1]] += n
        for f in set(frames):
            total_c[f] += n
    lines = [f"{path.name}: {samples} samples", "", "| self % | total % | function |",
             "|---:|---:|---|"]
    for name, n in self_c.most_common(top):
        lines.append(f"| {100 * n / samples:5.1f} | {100 * total_c[name] / samples:5.1f} "
                     f"| `{name}` |")
    lines += ["", "Top by total (inclusive):", "", "| total % | function |", "|---:|---|"]
    for name, n in total_c.most_common(top):
        lines.append(f"| {100 * n / samples:5.1f} | `{name}` |")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """'put (kubekv_server/member.py:99)' -> 'put (kubekv_server/member.py)'."""
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    file = loc.rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    if str(ROOT) in file:
        file = file.split(str(ROOT) + "/", 1)[1]
    return f"{name} ({file})" if file else name


# ----------------------------------------------------------------- report


def fmt_ratio(x: float, digits: int = 2) -> str:
    return "–" if x != x else f"{x:.{digits}f}×"


def verdict(ok: bool, value: float) -> str:
    if value != value:
        return ""
    return " ok" if ok else " MISS"


def tables(results: dict, ops: list[str], inflights: list[int]) -> str:
    """One markdown table per op with kubekv and etcd side by side."""
    out = []
    for op in ops:
        out.append(f"### {op}: {OPS[op]}\n")
        out.append("| in flight | kubekv ops/s | etcd ops/s | ratio | kubekv p50/p99 ms "
                   "| etcd p50/p99 ms | p99 ratio | kubekv CPU ms/1k req | etcd CPU ms/1k req "
                   "| errors k/e |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in inflights:
            k = results.get("kubekv", {}).get(op, {}).get(str(n))
            e = results.get("etcd", {}).get(op, {}).get(str(n))
            ratio = k["ops_per_s"] / e["ops_per_s"] if k and e and e["ops_per_s"] else float("nan")
            p99r = k["p99_ms"] / e["p99_ms"] if k and e and e["p99_ms"] else float("nan")
            digits = 3 if n == TARGET_INFLIGHT else 2  # a verdict must not hide in rounding
            rs, ps = fmt_ratio(ratio, digits), fmt_ratio(p99r, digits)
            if n == TARGET_INFLIGHT and op in TARGET_OPS_RATIO:
                t = TARGET_OPS_RATIO[op]
                rs += f" (target ≥{t}×{verdict(ratio >= t, ratio)})"
            if n == TARGET_INFLIGHT:
                ps += f" (target ≤{TARGET_P99_RATIO:g}×{verdict(p99r <= TARGET_P99_RATIO, p99r)})"

            def ops_s(c):
                return f"{c['ops_per_s']:.0f}" if c else "–"

            def lat(c):
                return f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}" if c else "–"

            def cpu(c):
                return f"{c['server_cpu_ms_per_1k']:.1f}" if c else "–"

            errs = f"{k['errors'] if k else '–'} / {e['errors'] if e else '–'}"
            out.append(f"| {n} | {ops_s(k)} | {ops_s(e)} | {rs} | {lat(k)} | {lat(e)} | {ps} "
                       f"| {cpu(k)} | {cpu(e)} | {errs} |")
        out.append("")
    return "\n".join(out)


def client_table(results: dict, ops: list[str], inflights: list[int]) -> str:
    out = ["| server | op | in flight | client CPU ms/1k req | server cores | client cores "
           "| other load (cores) |", "|---|---|---:|---:|---:|---:|---:|"]
    for name in SERVERS:
        for op in ops:
            for n in inflights:
                c = results.get(name, {}).get(op, {}).get(str(n))
                if not c:
                    continue
                client_cores = c["client_cpu_s"] / c["window_s"] if c["window_s"] else 0
                out.append(f"| {name} | {op} | {n} | {c['client_cpu_ms_per_1k']:.1f} "
                           f"| {c['server_cores']:.2f} | {client_cores:.2f} "
                           f"| {c['other_busy_cores']:.2f} |")
    return "\n".join(out)


# ----------------------------------------------------------------- main


class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv=None):
    default_clients = min(4, max(2, os.cpu_count() or 2))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell")
    p.add_argument("--inflight", default="1,16,64,256", help="total requests in flight")
    p.add_argument("--ops", default="put,range,srange", help=f"of {','.join(OPS)}")
    p.add_argument("--clients", type=int, default=default_clients,
                   help=f"client processes (default {default_clients})")
    p.add_argument("--channels", type=int, default=1, help="gRPC channels per client process")
    p.add_argument("--server", choices=["kubekv", "etcd", "both"], default="both")
    p.add_argument("--kubekv-flags", default="",
                   help='extra kubekv flags, one string: --kubekv-flags="--flag value"')
    p.add_argument("--etcd-flags", default="",
                   help='extra etcd flags, one string: --etcd-flags="--flag value"')
    p.add_argument("--json", dest="json_out", help="write all results as JSON here")
    p.add_argument("--tmpdir", help="parent of the servers' temp data dirs (default: $TMPDIR)")
    p.add_argument("--keep-tmp", action="store_true", help="keep data dirs and server logs")
    p.add_argument("--profile", metavar="DIR",
                   help="run py-spy on the kubekv server in each measured window and write "
                        "collapsed stacks + top-function summaries to DIR (skews kubekv's "
                        "numbers: for finding hot spots, not for comparison)")
    p.add_argument("--report", metavar="JSON",
                   help="print the tables of a saved --json run and exit (runs nothing)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-extra", default="",
                   help='more py-spy record flags, one string: --profile-extra="--gil --native"')
    args = p.parse_args(argv)
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    for o in args.ops:
        if o not in OPS:
            p.error(f"unknown op {o!r}; choose from {','.join(OPS)}")
    args.inflight = [int(x) for x in args.inflight.split(",") if x.strip()]
    if not args.inflight or min(args.inflight) < 1 or max(args.inflight) > 4096:
        p.error("--inflight: numbers between 1 and 4096")
    if not 1 <= args.clients <= 64 or not 1 <= args.channels <= 16:
        p.error("--clients 1..64, --channels 1..16")
    if not 0.5 <= args.duration <= 600 or not 0 <= args.warmup <= 120:
        p.error("--duration 0.5..600 s, --warmup 0..120 s")
    args.servers = list(SERVERS) if args.server == "both" else [args.server]
    return args


def bench_server(name: str, tmp: pathlib.Path, args, results: dict, profiler_dir) -> None:
    sp = make_server(name, tmp, args)
    clients = None
    print(f"\n== {name}: starting ({' '.join(sp.argv[:3])} ...)", flush=True)
    try:
        start_server(sp)
        clients = Clients(sp.endpoint, args.clients, args.channels)
        t0 = time.monotonic()
        n = clients.preload(NUM_KEYS, PRELOAD_INFLIGHT)
        have = count_keys(sp)
        sp._close_channel()
        print(f"  preloaded {n} keys in {time.monotonic() - t0:.1f}s; server counts {have}",
              flush=True)
        if have != NUM_KEYS:
            raise RuntimeError(f"{name}: expected {NUM_KEYS} keys after preload, found {have}")
        profiler = None
        if profiler_dir is not None and name == "kubekv":
            profiler = PySpy(profiler_dir, lambda: sp.proc.pid, args.duration,
                             args.profile_rate,
                             shlex.split(args.profile_extra))
        per_op = results.setdefault(name, {})
        seed = 1
        for op in args.ops:
            for inflight in args.inflight:
                cell = run_cell(sp, clients, op, inflight, args, seed, profiler)
                seed += 1
                per_op.setdefault(op, {})[str(inflight)] = cell
                print(describe(name, cell), flush=True)
                time.sleep(0.3)
        if profiler is not None:
            for f in profiler.files:
                if f.exists():
                    summary = f.with_suffix("").with_suffix(".top.md")
                    summary.write_text(summarize_collapsed(f) + "\n")
                    print(f"  py-spy: {f} -> {summary}")
    except Exception:
        print(f"--- {name} log tail ---\n{sp.log_tail()}", file=sys.stderr)
        raise
    finally:
        if clients is not None:
            clients.close()
        rc = sp.stop(timeout=20)
        print(f"  {name} stopped (exit {rc})", flush=True)


def print_report(path: str) -> int:
    data = json.loads(pathlib.Path(path).read_text())
    meta, results = data["meta"], data["results"]
    ops = [o for o in OPS if any(o in results.get(s, {}) for s in SERVERS)]
    inflights = sorted({int(n) for s in results.values() for cells in s.values() for n in cells})
    print(f"{meta['date']}  `{meta['command']}`")
    print(f"before: {meta['uptime_before']}\nafter:  {meta.get('uptime_after', '?')}\n")
    print(tables(results, ops, inflights))
    print(client_table(results, ops, inflights))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        return print_report(args.report)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kv-bench-", dir=args.tmpdir))
    started = datetime.datetime.now().astimezone()
    meta = {
        "command": "python bench/kv_bench.py " + " ".join(shlex.quote(a) for a in
                                                          (argv if argv is not None
                                                           else sys.argv[1:])),
        "date": started.isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "uptime_before": uptime_line(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "clients": args.clients,
        "channels_per_client": args.channels,
        "keys": NUM_KEYS,
        "value_bytes": VALUE_SIZE,
        "kubekv_flags": args.kubekv_flags,
        "etcd_flags": args.etcd_flags,
        "data_dir_parent": str(tmp),
    }
    with contextlib.suppress(Exception):
        meta["kubekv_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=5).stdout.strip()
    with contextlib.suppress(Exception):
        meta["etcd_version"] = subprocess.run(
            [harness.etcd_binary(), "--version"], capture_output=True, text=True,
            timeout=10).stdout.splitlines()[0]
    print(f"kv_bench {meta['date']}  {meta['uptime_before']}")
    print(f"  {args.clients} client processes x {args.channels} channel(s); "
          f"{args.warmup:g}s warm-up + {args.duration:g}s per cell; data under {tmp}")
    results: dict = {}
    profiler_dir = pathlib.Path(args.profile).resolve() if args.profile else None
    rc = 0
    try:
        for name in args.servers:
            bench_server(name, tmp, args, results, profiler_dir)
    except (KeyboardInterrupt, Interrupted) as exc:
        why = str(exc) or "SIGINT"
        print(f"\ninterrupted ({why}): servers and clients stopped", file=sys.stderr)
        rc = 130
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    meta["uptime_after"] = uptime_line()
    meta["elapsed_s"] = round((datetime.datetime.now().astimezone() - started).total_seconds(), 1)
    print(f"\n{meta['uptime_after']}\n")
    print(tables(results, args.ops, args.inflight))
    print("Client side and machine load per cell (2-core machine shared with others):\n")
    print(client_table(results, args.ops, args.inflight))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(
            json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
