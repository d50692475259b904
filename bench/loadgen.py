"""Shared by bench/kv_bench.py and bench/cluster_bench.py: the closed-loop KV load
generator (client processes on grpc.aio), /proc CPU readings, server start in its own
session, and one measured cell (and `one_member` for the smaller one-member tools).

A cell: N requests in flight in total, split over the client processes; each
closed loop sends to the endpoints round-robin by its global loop number, so the
load is spread evenly over a cluster's members. Requests completed inside the
measured window are counted with their latency; the CPU of the server processes
(summed), of the clients and of the whole machine is read from /proc at the
window's edges.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import multiprocessing
import os
import pathlib
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence

import grpc

from bench.kube_txn import KEY_PREFIX, CreateLoop, UpdateLoop, owned_keys, revisions_from_range
from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from tests import harness

NUM_KEYS = 10_000
VALUE_SIZE = 256
KEY_FMT = "bench/key/%05d"
OPS = {
    "put": "Put (256-byte value, random key of 10k)",
    "range": "linearizable Range (single key, serializable=false)",
    "srange": "serializable Range (single key, serializable=true)",
    "txn": "kube update Txn (If mod_revision(key) == last seen, Then Put, Else Get; "
           "own keys of 10k)",
    "create": "kube create Txn (If mod_revision(key) == 0, Then Put; a new key each time)",
}
# Ops whose Txn has a compare; a failed compare is an answered request (counted in
# ops/s and latency) and is also counted on its own.
COMPARE_OPS = ("txn", "create")
# Hard bounds on every request loop (besides the time window).
MAX_OPS_PER_LOOP = 5_000_000
CALL_TIMEOUT = 10.0
PRELOAD_INFLIGHT = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def one_member(system: str, *flags: str):
    """A started one-member kubekv or etcd (with `flags`, which both must know) on a
    fresh temp data dir, stopped and its dir removed afterwards."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"bench-{system}-"))
    proc = (harness.kubekv_process if system == "kubekv" else harness.etcd_process)(tmp, *flags)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def preload_keys(kv: rpc_pb2_grpc.KVStub, keys, value: bytes,
                       in_flight: int = 256) -> None:
    """Put `value` under every key of `keys`, `in_flight` at a time (one asyncio client)."""
    gate = asyncio.Semaphore(in_flight)

    async def put(key: bytes) -> None:
        async with gate:
            await kv.Put(pb.PutRequest(key=key, value=value))

    await asyncio.gather(*(put(k) for k in keys))


async def cpu_between(pid: int, begin: float, stop: float) -> float:
    """CPU seconds process `pid` uses between two `time.monotonic()` instants (awaits
    until `stop`): a window's server CPU, with the load running beside it."""
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    c0 = proc_cpu_seconds(pid)
    await asyncio.sleep(max(0.0, stop - time.monotonic()))
    return proc_cpu_seconds(pid) - c0


# ----------------------------------------------------------------- /proc readings


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process and all its threads (live and exited), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, total, stolen) CPU seconds of the whole machine, summed over cores, from
    /proc/stat. Stolen time (the hypervisor running another guest on our cores) counts
    as busy: nothing here could run then. It comes in bursts on the shared machines and
    is most of a cell's "other load" when that load is large."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(v) for v in parts[:8]]  # user nice system idle iowait irq softirq steal
    idle = vals[3] + vals[4]
    total = sum(vals)
    return (total - idle) / CLK_TCK, total / CLK_TCK, vals[7] / CLK_TCK


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


async def _fetch_revisions(stub) -> dict[int, int]:
    """Every bench key's mod_revision (keys only, linearizable), for the `txn` loops'
    first compares; read when the cell starts, after the previous cell's writes."""
    resp = await stub.Range(pb.RangeRequest(key=KEY_PREFIX, range_end=b"bench/key0",
                                            keys_only=True), timeout=CALL_TIMEOUT * 3)
    return revisions_from_range(resp)


def _loop_source(op: str, stub, reqs: dict, loop: int, inflight: int, seed: int,
                 revisions: dict[int, int] | None, value: bytes, rnd: random.Random):
    """(rpc, next request, answer check) of one closed loop; the check (None for ops
    without a compare) takes the answer and says whether the compare held."""
    if op == "txn":
        keys = {k: (KEY_FMT % k).encode() for k in owned_keys(loop, inflight, NUM_KEYS)}
        upd = UpdateLoop(keys, revisions or {}, value, rnd)
        return stub.Txn, upd.next, upd.done
    if op == "create":
        cre = CreateLoop(seed, loop, value)
        return stub.Txn, cre.next, cre.done
    pool = reqs[op]
    nreq = len(pool)
    return (stub.Put if op == "put" else stub.Range), lambda: pool[rnd.randrange(nreq)], None


async def _run_loops(stubs, op: str, reqs: dict, inflight: int, first_loop: int,
                     t_start: float, t_end: float, seed: int, total_inflight: int,
                     revisions: dict[int, int] | None = None, cell_seed: int = 0) -> dict:
    """`inflight` closed loops until t_end; record completions inside [t_start, t_end].
    Loop i of this process is global loop `first_loop + i` of the cell's
    `total_inflight` and uses stub `(first_loop + i) % len(stubs)` (stubs cycle over
    the endpoints first)."""
    lat = array.array("d")
    errors: collections.Counter = collections.Counter()
    warm_errors: collections.Counter = collections.Counter()
    rnd = random.Random(seed)
    mono = time.monotonic
    value = os.urandom(VALUE_SIZE)
    ops = {"warm": 0, "window": 0, "after": 0}
    cmp_failed = {"warm": 0, "window": 0, "after": 0}

    async def loop(i: int) -> None:
        g = first_loop + i
        call, next_req, check = _loop_source(op, stubs[g % len(stubs)], reqs, g,
                                             total_inflight, cell_seed, revisions, value, rnd)
        n = 0
        while n < MAX_OPS_PER_LOOP:
            t0 = mono()
            if t0 >= t_end:
                return
            n += 1
            try:
                resp = await call(next_req(), timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                t1 = mono()
                (errors if t_start <= t1 <= t_end else warm_errors)[exc.code().name] += 1
                await asyncio.sleep(0.01)  # no hot spin against a failing server
                continue
            t1 = mono()
            phase = "warm" if t1 < t_start else "window" if t1 <= t_end else "after"
            if phase == "window":
                lat.append(t1 - t0)
            else:
                ops[phase] += 1
            if check is not None and not check(resp):
                cmp_failed[phase] += 1

    hard_deadline = max(t_end - mono(), 0) + CALL_TIMEOUT + 5
    await asyncio.wait_for(asyncio.gather(*(loop(i) for i in range(inflight))), hard_deadline)
    ops["window"] = len(lat)
    return {"lat": lat.tobytes(), "errors": dict(errors), "warm_errors": dict(warm_errors),
            "ops": ops, "compare_failed": cmp_failed["window"],
            "warmup_compare_failed": cmp_failed["warm"]}


async def _preload(stubs, keys: list[int], value: bytes, inflight: int) -> int:
    todo = list(keys)
    done = 0

    async def loop(i: int) -> None:
        nonlocal done
        stub = stubs[i % len(stubs)]
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

    await asyncio.gather(*(loop(i) for i in range(max(1, inflight))))
    return done


async def _worker_async(conn, endpoints: list[str], index: int, channels: int) -> None:
    loop = asyncio.get_running_loop()
    opts = [("grpc.use_local_subchannel_pool", 1)]
    # [ep0, ep1, ep2, ep0, ...]: consecutive loops go to consecutive endpoints.
    chans = [grpc.aio.insecure_channel(ep, options=opts)
             for _ in range(channels) for ep in endpoints]
    stubs = [rpc_pb2_grpc.KVStub(ch) for ch in chans]
    reqs = {op: _requests(op) for op in ("put", "range", "srange")}
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
                    n = await _preload(stubs, cmd["keys"], os.urandom(VALUE_SIZE),
                                       cmd["inflight"])
                    conn.send({"ok": True, "done": n})
                elif kind == "cell":
                    revs = await _fetch_revisions(stubs[0]) if cmd["op"] == "txn" else None
                    res = await _run_loops(stubs, cmd["op"], reqs, cmd["inflight"],
                                           cmd["first_loop"], cmd["t_start"], cmd["t_end"],
                                           cmd["seed"] * 1000 + index, cmd["total_inflight"],
                                           revs, cmd["seed"])
                    res["ok"] = True
                    conn.send(res)
                else:
                    conn.send({"ok": False, "error": f"unknown command {kind}"})
            except Exception as exc:  # report, let the parent decide
                conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for ch in chans:
            await ch.close()


def worker_main(conn, endpoints: list[str], index: int, channels: int) -> None:
    """Entry point of a client process: serve commands from the parent until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        asyncio.run(_worker_async(conn, endpoints, index, channels))
    finally:
        conn.close()


class Clients:
    """A pool of client processes; each has `channels` gRPC channels to every endpoint."""

    def __init__(self, endpoints: str | Sequence[str], n: int, channels: int) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has used gRPC
        self.procs = []
        self.conns = []
        for i in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, list(endpoints), i, channels),
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
        for c, cmd in zip(self.conns, preload_commands(num_keys, inflight, len(self.conns)),
                          strict=True):
            c.send(cmd)
        return sum(r["done"] for r in self._collect(self.conns, 300))

    def start_cell(self, op: str, inflight: int, t_start: float, t_end: float, seed: int):
        active = []
        for c, cmd in zip(self.conns, cell_commands(op, inflight, t_start, t_end, seed,
                                                    len(self.conns)), strict=True):
            if cmd is not None:
                c.send(cmd)
                active.append(c)
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


LOAD_CLIENTS = ("python", "go")


def make_clients(kind: str, endpoints: str | Sequence[str], n: int, channels: int):
    """The client processes of a run: `python` (grpc.aio, `Clients`) or `go` (etcd's Go
    clientv3, bench/goload.py's `GoClients`, the same loops at a fraction of the CPU)."""
    if kind == "go":
        from bench.goload import GoClients

        return GoClients(endpoints, n, channels)
    return Clients(endpoints, n, channels)


def preload_commands(num_keys: int, inflight: int, n: int) -> list[dict]:
    """Each of `n` client processes' preload command: every n-th key, its share of the
    in-flight requests."""
    return [{"cmd": "preload", "keys": list(range(i, num_keys, n)),
             "inflight": max(1, inflight // n)} for i in range(n)]


def cell_commands(op: str, inflight: int, t_start: float, t_end: float, seed: int,
                  n: int) -> list[dict | None]:
    """Each of `n` client processes' command for one cell (None: no loop of its own):
    its share of the loops, numbered globally from `first_loop`."""
    out: list[dict | None] = []
    first = 0
    for share in split(inflight, n):
        out.append({"cmd": "cell", "op": op, "inflight": share, "total_inflight": inflight,
                    "first_loop": first, "t_start": t_start, "t_end": t_end, "seed": seed}
                   if share > 0 else None)
        first += share
    return out


def split(total: int, parts: int) -> list[int]:
    """Spread `total` in-flight requests as evenly as possible over `parts` processes."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# ----------------------------------------------------------------- servers


def start_process(sp) -> None:
    """Popen a harness.ServerProcess in its own session (no readiness wait): a Ctrl-C on
    the terminal reaches only the bench, which stops the servers itself in `finally`."""
    sp.data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(sp.log_path, "ab") as log:
        sp.proc = subprocess.Popen(
            sp.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=sp.env, cwd=str(sp.data_dir.parent), start_new_session=True,
        )


def start_server(sp, timeout: float = 60.0):
    """harness.ServerProcess.start, but in its own session (see start_process)."""
    start_process(sp)
    sp.wait_ready(timeout)
    return sp


def count_keys(kv_stub) -> int:
    resp = kv_stub.Range(pb.RangeRequest(key=b"bench/key/", range_end=b"bench/key0",
                                         count_only=True), timeout=30)
    return resp.count


# ----------------------------------------------------------------- measurement


def percentile(sorted_vals, q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[idx]


def median(vals: Sequence[float]) -> float:
    s = sorted(vals)
    if not s:
        return float("nan")
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def sleep_until(t: float) -> None:
    while True:
        d = t - time.monotonic()
        if d <= 0:
            return
        time.sleep(min(d, 0.5))


# What `--max-steal` defaults to: cores the host may steal during a cell's window before
# the cell is measured again. Steal comes in bursts of 0.2-0.5 cores on the shared
# 2-core machines and makes a cell 2-4x slower for a reason neither server has (session
# 29); a quiet window shows ~0.00-0.05.
DEFAULT_MAX_STEAL = 0.1
# How many windows a cell gets in all before the last one is kept, stolen or not.
DEFAULT_STEAL_TRIES = 3


def add_steal_arguments(p) -> None:
    """--max-steal and --steal-tries, for kv_bench and cluster_bench."""
    p.add_argument("--max-steal", type=float, default=DEFAULT_MAX_STEAL, metavar="CORES",
                   help="measure a cell again when the host stole more than CORES cores "
                        f"during its window (default {DEFAULT_MAX_STEAL}; 0: never again)")
    p.add_argument("--steal-tries", type=int, default=DEFAULT_STEAL_TRIES, metavar="N",
                   help=f"windows a cell gets in all (default {DEFAULT_STEAL_TRIES}); the "
                        "last is kept, and the JSON lists the ones put aside")


def run_cell_unstolen(max_steal: float, tries: int, *args, **kwargs) -> dict:
    """`run_cell` again (up to `tries` windows in all) while the host stole more than
    `max_steal` cores during the window; the cell kept records what was put aside
    (`steal_retried`: ops/s and stolen cores of each earlier window)."""
    put_aside = []
    while True:
        cell = run_cell(*args, **kwargs)
        stolen = cell["steal_cores"]
        if max_steal <= 0 or stolen <= max_steal or len(put_aside) + 1 >= max(tries, 1):
            break
        print(f"  ({cell['op']} @{cell['inflight']}: {stolen:.2f} cores stolen by the host "
              f"during the window, {cell['ops_per_s']:.0f} ops/s; measuring it again)",
              flush=True)
        put_aside.append({"ops_per_s": cell["ops_per_s"], "steal_cores": stolen})
        time.sleep(0.3)
    cell["steal_retried"] = put_aside
    return cell


def run_cell(server_pids: Sequence[int], check_servers: Callable[[], None], clients: Clients,
             op: str, inflight: int, warmup: float, duration: float, seed: int,
             profiler=None) -> dict:
    """One measured cell. Server CPU is summed over `server_pids`; `check_servers()` must
    raise if a server died during the cell."""
    t_start = time.monotonic() + 0.3 + warmup
    t_end = t_start + duration
    active = clients.start_cell(op, inflight, t_start, t_end, seed)
    sleep_until(t_start)
    pids = clients.pids
    s0 = [proc_cpu_seconds(p) for p in server_pids]
    c0 = sum(proc_cpu_seconds(p) for p in pids)
    m0 = machine_cpu_seconds()
    w0 = time.monotonic()
    prof = profiler(op, inflight) if profiler else None
    sleep_until(t_end)
    s1 = [proc_cpu_seconds(p) for p in server_pids]
    c1 = sum(proc_cpu_seconds(p) for p in pids)
    m1 = machine_cpu_seconds()
    w1 = time.monotonic()
    results = clients.finish_cell(active, t_end)
    if prof is not None:
        prof.wait()
    check_servers()
    lat = array.array("d")
    errors: collections.Counter = collections.Counter()
    warm_errors: collections.Counter = collections.Counter()
    cmp_failed = warm_cmp_failed = 0
    for r in results:
        lat.frombytes(r["lat"])
        errors.update(r["errors"])
        warm_errors.update(r["warm_errors"])
        cmp_failed += r["compare_failed"]
        warm_cmp_failed += r["warmup_compare_failed"]
    vals = sorted(lat)
    window = w1 - w0
    n = len(vals)
    per_server = [b - a for a, b in zip(s0, s1, strict=True)]
    server_cpu = sum(per_server)
    client_cpu = c1 - c0
    machine_busy = m1[0] - m0[0]
    stolen = m1[2] - m0[2]
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
        "compare_failed": cmp_failed,
        "warmup_compare_failed": warm_cmp_failed,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_ms_per_1k": (server_cpu * 1000 / n * 1000) if n else float("nan"),
        "server_cores": server_cpu / window if window > 0 else 0.0,
        "server_cores_each": [c / window if window > 0 else 0.0 for c in per_server],
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_ms_per_1k": (client_cpu * 1000 / n * 1000) if n else float("nan"),
        "machine_busy_cores": machine_busy / window if window > 0 else 0.0,
        "other_busy_cores": max(machine_busy - server_cpu - client_cpu, 0) / window
        if window > 0 else 0.0,
        "steal_cores": stolen / window if window > 0 else 0.0,  # (part of the other load)
    }


def describe(server_name: str, cell: dict) -> str:
    cmp = f"cmp-fail {cell['compare_failed']:<3d} " if cell["op"] in COMPARE_OPS else ""
    return (
        f"  {server_name:6s} {cell['op']:6s} @{cell['inflight']:<4d} "
        f"{cell['ops_per_s']:9.0f} ops/s  p50 {cell['p50_ms']:7.2f} ms  "
        f"p99 {cell['p99_ms']:7.2f} ms  err {cell['errors']:<3d} {cmp}"
        f"server {cell['server_cpu_ms_per_1k']:6.1f} ms CPU/1k ({cell['server_cores']:.2f} cores)  "
        f"clients {cell['client_cpu_ms_per_1k']:6.1f} ms/1k  "
        f"others {other_load(cell)} cores"
    )


def other_load(cell: dict) -> str:
    """A cell's other load in cores, with the part the hypervisor stole when known (runs
    saved before it was recorded have none)."""
    stolen = cell.get("steal_cores")
    other = f"{cell['other_busy_cores']:.2f}"
    return other if stolen is None else f"{other} (steal {stolen:.2f})"


def compare_note(op: str, inflights: Sequence[int], cell_of: Callable[[str, int], dict | None],
                 systems: Sequence[str]) -> str:
    """A line under a compare op's table: failed compares per system and in-flight
    (they are answered requests, so they are in ops/s and latency too)."""
    if op not in COMPARE_OPS:
        return ""
    parts = []
    for n in inflights:
        counts = [cell_of(s, n) for s in systems]
        shown = "/".join("–" if c is None else str(c.get("compare_failed", "?"))
                         for c in counts)
        parts.append(f"@{n} {shown}")
    return (f"Failed compares in the window ({'/'.join(systems)}; answered, so counted in "
            f"ops/s): " + ", ".join(parts) + "\n")


def cell_ops(c: dict | None) -> str:
    """A result cell's ops/s for a table ("–" when the cell is missing)."""
    return f"{c['ops_per_s']:.0f}" if c else "–"


def cell_latency(c: dict | None) -> str:
    return f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}" if c else "–"


def cell_cpu(c: dict | None) -> str:
    return f"{c['server_cpu_ms_per_1k']:.1f}" if c else "–"


def fmt_ratio(x: float, digits: int = 2) -> str:
    return "–" if x != x else f"{x:.{digits}f}×"


def verdict(ok: bool, value: float) -> str:
    if value != value:
        return ""
    return " ok" if ok else " MISS"


# ----------------------------------------------------------------- profiling


class PySpy:
    """Optional: sample a kubekv server (`pid_fn()`) with py-spy during each measured window."""

    def __init__(self, out_dir: pathlib.Path, pid_fn, duration: float, rate: int,
                 extra: list[str], prefix: str = "kubekv") -> None:
        self.out_dir = out_dir
        self.prefix = prefix
        self.pid_fn = pid_fn
        self.duration = duration
        self.rate = rate
        self.extra = extra
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files: list[pathlib.Path] = []

    def __call__(self, op: str, inflight: int) -> subprocess.Popen:
        out = self.out_dir / f"{self.prefix}-{op}-{inflight}.collapsed.txt"
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
    """'put (kubekv_server/member/member.py:99)' -> 'put (kubekv_server/member/member.py)'."""
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    file = loc.rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    if str(ROOT) in file:
        file = file.split(str(ROOT) + "/", 1)[1]
    return f"{name} ({file})" if file else name


# ----------------------------------------------------------------- signals


class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP raise Interrupted and SIGINT KeyboardInterrupt (also when the shell
    started us with SIGINT ignored, as it does for background jobs), so `finally` blocks
    stop clients and servers."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
