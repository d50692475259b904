#!/usr/bin/env python
"""3-member cluster benchmark (issue 4): kubekv against real etcd 3.5, same run.

A 3-member kubekv cluster, then a 3-member etcd cluster (never both at once), each
on loopback, fresh temp data dirs, free ports, the same --heartbeat-interval and
--election-timeout. For each: preload 10k keys, then Put and linearizable Range
cells with the load spread over the three members' client endpoints (the
kv_bench load generator, bench/loadgen.py), server CPU summed over the three
member processes; then failover: with one sequential writer on the two
followers, kill -9 the leader and time the first acknowledged write and the new
leader in Status; restart the killed member, wait until it caught up, repeat.

    python bench/cluster_bench.py [--duration 10] [--inflight 64,256] [--ops put,range]
                                  [--failover-reps 5] [--systems kubekv,etcd]
                                  [--heartbeat-interval 100] [--election-timeout 1000]
                                  [--json out.json] [--profile DIR]

See bench/README.md ("3-member cluster") for what is measured and the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
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

from bench.loadgen import (  # noqa: E402
    LOAD_CLIENTS,
    NUM_KEYS,
    OPS,
    PRELOAD_INFLIGHT,
    VALUE_SIZE,
    Interrupted,
    PySpy,
    add_steal_arguments,
    cell_cpu,
    cell_latency,
    cell_ops,
    compare_note,
    count_keys,
    describe,
    fmt_ratio,
    install_signal_handlers,
    make_clients,
    median,
    other_load,
    run_cell_unstolen,
    start_process,
    summarize_collapsed,
    uptime_line,
    verdict,
)
from etcdproto.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from etcdproto.etcdserverpb import rpc_pb2_grpc  # noqa: E402
from tests import harness  # noqa: E402

SYSTEMS = ("kubekv", "etcd")
MEMBERS = ("n1", "n2", "n3")
# Targets from issue 4 (kubekv / etcd ops/s); failover: kubekv's median and max no
# slower than etcd's.
TARGET_OPS_RATIO = {"put": 0.3, "range": 0.5}


# ----------------------------------------------------------------- cluster


class Cluster:
    """Three members of one system on loopback, own session each, own data dirs."""

    def __init__(self, system: str, tmp: pathlib.Path, args, attempt: int = 0) -> None:
        self.system = system
        base = tmp / (system if not attempt else f"{system}.{attempt}")
        base.mkdir(parents=True, exist_ok=True)
        ports: list[int] = []
        while len(ports) < 2 * len(MEMBERS):  # six distinct ports
            if (port := harness.free_port()) not in ports:
                ports.append(port)
        client_ports = dict(zip(MEMBERS, ports[:3], strict=True))
        peer_urls = {n: f"http://127.0.0.1:{port}" for n, port in zip(MEMBERS, ports[3:],
                                                                      strict=True)}
        initial = ",".join(f"{n}={peer_urls[n]}" for n in MEMBERS)
        timing = ["--heartbeat-interval", str(args.heartbeat_interval),
                  "--election-timeout", str(args.election_timeout)]
        self.members: dict[str, harness.ServerProcess] = {}
        for n in MEMBERS:
            url = f"http://127.0.0.1:{client_ports[n]}"
            common = [
                "--name", n,
                "--data-dir", str(base / f"{n}.{system}"),
                "--listen-client-urls", url,
                "--advertise-client-urls", url,
                "--listen-peer-urls", peer_urls[n],
                "--initial-advertise-peer-urls", peer_urls[n],
                "--initial-cluster", initial,
                "--initial-cluster-token", f"cluster-bench-{system}",
                "--initial-cluster-state", "new",
                *timing,
            ]
            if system == "kubekv":
                argv = [sys.executable, "-m", "kubekv_server", *common,
                        *shlex.split(args.kubekv_flags)]
                env = dict(os.environ)
                env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)  # server runs on upb
                env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
            else:
                argv = [harness.etcd_binary("etcd"), *common, "--log-level", "warn",
                        *shlex.split(args.etcd_flags)]
                env = None
            self.members[n] = harness.ServerProcess(
                argv, base / f"{n}.{system}", client_ports[n], base / f"{n}.log", env)

    @property
    def endpoints(self) -> list[str]:
        return [sp.endpoint for sp in self.members.values()]

    def pids(self) -> list[int]:
        return [sp.proc.pid for sp in self.members.values()]

    def start(self, timeout: float = 90.0) -> None:
        for sp in self.members.values():  # all at once: a member alone has no quorum
            start_process(sp)
        for sp in self.members.values():
            sp.wait_ready(timeout)

    def port_clash(self) -> bool:
        """Did a member fail because another process took one of its free ports?"""
        return any("address already in use" in sp.log_tail(20) for sp in self.members.values())

    def check_alive(self) -> None:
        for n, sp in self.members.items():
            if sp.proc is None or sp.proc.poll() is not None:
                raise RuntimeError(f"{self.system} {n} exited:\n{sp.log_tail()}")

    def stop(self) -> None:
        for sp in self.members.values():  # SIGTERM to all first, then reap
            if sp.proc is not None and sp.proc.poll() is None:
                with contextlib.suppress(OSError):
                    sp.proc.send_signal(signal.SIGTERM)
        for n, sp in self.members.items():
            rc = sp.stop(timeout=20)
            print(f"  {self.system} {n} stopped (exit {rc})", flush=True)

    def status(self, name: str, timeout: float = 1.0) -> pb.StatusResponse | None:
        sp = self.members[name]
        if sp.proc is None or sp.proc.poll() is not None:
            return None
        try:
            return sp.maintenance.Status(pb.StatusRequest(), timeout=timeout)
        except grpc.RpcError:
            sp._close_channel()
            return None

    def wait_stable(self, timeout: float = 60.0, catch_up: str | None = None) -> str:
        """Wait until every member names the same leader (one of them) and, if
        `catch_up`, that member applied everything the leader had committed when we
        first saw the agreement. Returns the leader's name."""
        deadline = time.monotonic() + timeout
        target_index = None
        while time.monotonic() < deadline:
            sts = {n: self.status(n) for n in self.members}
            if all(sts.values()):
                ids = {n: s.header.member_id for n, s in sts.items()}
                leaders = {s.leader for s in sts.values()}
                if len(leaders) == 1 and (lid := leaders.pop()) in ids.values():
                    leader = next(n for n, i in ids.items() if i == lid)
                    if catch_up is None:
                        return leader
                    if target_index is None:
                        target_index = sts[leader].raftIndex
                    if sts[catch_up].raftAppliedIndex >= target_index:
                        return leader
            time.sleep(0.1)
        raise RuntimeError(f"{self.system}: no stable leader after {timeout}s")

    def lead_from(self, name: str, timeout: float = 30.0) -> str:
        """Make member `name` the leader (Maintenance.MoveLeader, asked of the leader) and
        return it: a 1-in-flight cell's client uses the first endpoint only, so it talks
        to the leader on every system alike, not to a follower on one and the leader on
        the other (a follower forwards: one more round trip)."""
        deadline = time.monotonic() + timeout
        leader = self.wait_stable(timeout)
        target = self.member_id(name)
        while leader != name:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.system}: {name} did not take the lead")
            with contextlib.suppress(grpc.RpcError):
                self.members[leader].maintenance.MoveLeader(
                    pb.MoveLeaderRequest(targetID=target), timeout=10)
            time.sleep(0.2)
            leader = self.wait_stable(max(1.0, deadline - time.monotonic()))
        return leader

    def member_id(self, name: str) -> int:
        st = self.status(name, timeout=5)
        if st is None:
            raise RuntimeError(f"{self.system} {name}: no Status")
        return st.header.member_id


# ----------------------------------------------------------------- failover probe


def failover_probe_main(conn, params: dict) -> None:
    """One failover repetition, run in a spawned process (own grpc.aio world): a
    sequential writer alternating over the two followers, Status pollers on them;
    kill -9 the leader; probe writes every `probe_interval` s until a write sent
    after the kill is acknowledged and a survivor names a new leader."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        conn.send({"ok": True, **asyncio.run(_failover_async(params))})
    except Exception as exc:
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_probe_process(params: dict, timeout: float) -> dict:
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has used gRPC
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=failover_probe_main, args=(child, params),
                       name="cluster-bench-failover", daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"failover probe gave no answer in {timeout}s")
        res = parent.recv()
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        parent.close()
    if not res.pop("ok"):
        raise RuntimeError(f"failover probe failed: {res.get('error')}")
    return res


async def _failover_async(p: dict) -> dict:
    mono = time.monotonic
    chans = [grpc.aio.insecure_channel(ep, options=[("grpc.use_local_subchannel_pool", 1)])
             for ep in p["survivors"]]
    kv = [rpc_pb2_grpc.KVStub(c) for c in chans]
    mt = [rpc_pb2_grpc.MaintenanceStub(c) for c in chans]
    value = os.urandom(VALUE_SIZE)
    writes: list[tuple[str, float, float, str | None]] = []  # (who, sent, done, error code)
    seen: dict[int, tuple[float, int]] = {}  # survivor -> (time, new leader id)
    stop = asyncio.Event()
    seq = 0
    t_kill = float("inf")

    async def put(i: int, who: str, timeout: float) -> bool:
        nonlocal seq
        seq += 1
        key = b"bench/failover/%d/%08d" % (p["rep"], seq)
        t0 = mono()
        try:
            await kv[i].Put(pb.PutRequest(key=key, value=value), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            writes.append((who, t0, mono(), exc.code().name))
            return False
        writes.append((who, t0, mono(), None))
        return True

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            ok = await put(i % 2, "writer", p["write_timeout"])
            i += 1
            if not ok:
                await asyncio.sleep(0.01)

    async def poller(i: int) -> None:
        while not stop.is_set():
            t0 = mono()
            try:
                st = await mt[i].Status(pb.StatusRequest(), timeout=0.5)
                t1 = mono()
                if (t1 >= t_kill and i not in seen and st.leader
                        and st.leader != p["old_leader_id"]):
                    seen[i] = (t1, st.leader)
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(max(0.0, p["poll_interval"] - (mono() - t0)))

    def first_write_after_kill() -> tuple[float, str] | None:
        done = [(t1, who) for who, t0, t1, err in writes if err is None and t0 >= t_kill]
        return min(done) if done else None

    tasks = [asyncio.create_task(writer()), asyncio.create_task(poller(0)),
             asyncio.create_task(poller(1))]
    probes: list[asyncio.Task] = []
    try:
        await asyncio.sleep(p["warm"])
        pre = [w for w in writes if w[3] is None]
        t_kill = mono()
        os.kill(p["leader_pid"], signal.SIGKILL)
        j = 0
        while mono() < t_kill + p["max_wait"]:
            if first_write_after_kill() is not None and seen:
                break
            probes.append(asyncio.create_task(put(j % 2, "probe", p["probe_timeout"])))
            j += 1
            await asyncio.sleep(p["probe_interval"])
        await asyncio.sleep(p["after"])  # the writer keeps going on the new leader
    finally:
        stop.set()
        for t in probes + tasks:
            t.cancel()
        await asyncio.gather(*probes, *tasks, return_exceptions=True)
        for c in chans:
            await c.close()
    first = first_write_after_kill()
    writer_acks = sorted(t1 for who, _, t1, err in writes if who == "writer" and err is None)
    gaps = [b - a for a, b in zip(writer_acks, writer_acks[1:], strict=False)]
    errors: dict[str, int] = {}
    for _, t0, _, err in writes:
        if err is not None and t0 >= t_kill:
            errors[err] = errors.get(err, 0) + 1
    return {
        "write_ms": (first[0] - t_kill) * 1000 if first else None,
        "first_write_by": first[1] if first else None,
        "leader_seen_ms": (min(t for t, _ in seen.values()) - t_kill) * 1000 if seen else None,
        "leader_seen_both_ms": (max(t for t, _ in seen.values()) - t_kill) * 1000
        if len(seen) == 2 else None,
        "new_leader_id": next(iter(seen.values()))[1] if seen else None,
        "writer_max_gap_ms": max(gaps) * 1000 if gaps else None,
        "writes_before_kill": len(pre),
        "writes_before_kill_per_s": len(pre) / p["warm"],
        "probes": j,
        "errors_after_kill": errors,
    }


def run_failover(cluster: Cluster, args, results: list) -> None:
    for rep in range(args.failover_reps):
        leader = cluster.wait_stable()
        leader_sp = cluster.members[leader]
        survivors = [n for n in MEMBERS if n != leader]
        params = {
            "rep": rep,
            "survivors": [cluster.members[n].endpoint for n in survivors],
            "leader_pid": leader_sp.proc.pid,
            "old_leader_id": cluster.member_id(leader),
            "warm": 2.0,
            "max_wait": 30.0,
            "after": 1.0,
            "probe_interval": args.probe_interval / 1000,
            "poll_interval": args.probe_interval / 1000,
            "write_timeout": 2.0,
            "probe_timeout": 10.0,
        }
        leader_sp._close_channel()
        res = run_probe_process(params, timeout=120)
        leader_sp.proc.wait(10)  # reap the killed leader
        res.update(rep=rep + 1, killed=leader)
        results.append(res)
        print(f"  failover {rep + 1}: killed leader {leader}; first write after "
              f"{_ms(res['write_ms'])} ms ({res['first_write_by']}), new leader in Status "
              f"after {_ms(res['leader_seen_ms'])} ms (both survivors "
              f"{_ms(res['leader_seen_both_ms'])} ms); writer max gap "
              f"{_ms(res['writer_max_gap_ms'])} ms; writes before kill "
              f"{res['writes_before_kill_per_s']:.0f}/s; errors after kill "
              f"{res['errors_after_kill'] or 0}", flush=True)
        # Bring the killed member back (same command, same data dir) and wait until it
        # has caught up, so the next repetition starts from a healthy cluster.
        t0 = time.monotonic()
        start_process(leader_sp)
        leader_sp.wait_ready(90)
        cluster.wait_stable(timeout=90, catch_up=leader)
        print(f"    {leader} restarted and caught up in {time.monotonic() - t0:.1f}s",
              flush=True)


def _ms(v) -> str:
    return "–" if v is None else f"{v:.0f}"


# ----------------------------------------------------------------- one system


def bench_system(system: str, tmp: pathlib.Path, args, results: dict) -> None:
    clients = None
    out = results.setdefault(system, {"cells": {}, "failover": []})
    for attempt in range(3):  # the machine is shared: a free port can be taken meanwhile
        cluster = Cluster(system, tmp, args, attempt)
        print(f"\n== {system}: starting 3 members ({cluster.members['n1'].argv[0]} ...)",
              flush=True)
        t0 = time.monotonic()
        try:
            cluster.start()
            break
        except BaseException as exc:  # Ctrl-C included: never leave members behind
            cluster.stop()
            if not isinstance(exc, RuntimeError) or attempt == 2 or not cluster.port_clash():
                raise
            print("  a port was taken by another process; again with new ports", flush=True)
    try:
        leader = cluster.wait_stable()
        print(f"  ready in {time.monotonic() - t0:.1f}s; leader {leader}", flush=True)
        out["leader_at_start"] = leader
        if args.ops:
            clients = make_clients(args.load_client, cluster.endpoints, args.clients, args.channels)
            t0 = time.monotonic()
            n = clients.preload(NUM_KEYS, PRELOAD_INFLIGHT)
            have = count_keys(cluster.members["n1"].kv)
            print(f"  preloaded {n} keys over 3 members in {time.monotonic() - t0:.1f}s; "
                  f"n1 counts {have}", flush=True)
            if have != NUM_KEYS:
                raise RuntimeError(f"{system}: expected {NUM_KEYS} keys, found {have}")
            profiler = None
            if args.profile and system == "kubekv":
                lpid = cluster.members[leader].proc.pid
                profiler = PySpy(pathlib.Path(args.profile).resolve(), lambda: lpid,
                                 args.duration, args.profile_rate,
                                 shlex.split(args.profile_extra), prefix="kubekv-leader")
            seed = 1
            for op in args.ops:
                for inflight in args.inflight:
                    lead = cluster.lead_from(MEMBERS[0])
                    cell = run_cell_unstolen(args.max_steal, args.steal_tries, cluster.pids(),
                                             cluster.check_alive, clients, op, inflight,
                                             args.warmup, args.duration, seed, profiler)
                    cell["leader"] = lead
                    cell["leader_cores"] = cell["server_cores_each"][MEMBERS.index(lead)]
                    seed += 1
                    out["cells"].setdefault(op, {})[str(inflight)] = cell
                    print(describe(system, cell) + "  per member " + "/".join(
                        f"{c:.2f}" for c in cell["server_cores_each"]) + f" (leader {lead})",
                        flush=True)
                    time.sleep(0.3)
            clients.close()
            clients = None
            if profiler is not None:
                for f in profiler.files:
                    if f.exists():
                        summary = f.with_suffix("").with_suffix(".top.md")
                        summary.write_text(summarize_collapsed(f) + "\n")
                        print(f"  py-spy: {f} -> {summary}")
        if args.failover_reps:
            run_failover(cluster, args, out["failover"])
    except Exception as exc:
        if isinstance(exc, Interrupted):
            raise
        for n, sp in cluster.members.items():
            print(f"--- {system} {n} log tail ---\n{sp.log_tail(15)}", file=sys.stderr)
        raise
    finally:
        if clients is not None:
            clients.close()
        cluster.stop()


# ----------------------------------------------------------------- report


def load_tables(results: dict, ops: list[str], inflights: list[int]) -> str:
    out = []
    for op in ops:
        out.append(f"### {op}: {OPS[op]}, load over all 3 members\n")
        out.append("| in flight | kubekv ops/s | etcd ops/s | ratio (target) | kubekv p50/p99 ms "
                   "| etcd p50/p99 ms | kubekv CPU ms/1k req (3 members) | etcd CPU ms/1k req "
                   "| CPU ratio | errors k/e |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in inflights:
            k = results.get("kubekv", {}).get("cells", {}).get(op, {}).get(str(n))
            e = results.get("etcd", {}).get("cells", {}).get(op, {}).get(str(n))
            ratio = k["ops_per_s"] / e["ops_per_s"] if k and e and e["ops_per_s"] else float("nan")
            cpur = (k["server_cpu_ms_per_1k"] / e["server_cpu_ms_per_1k"]
                    if k and e and e["server_cpu_ms_per_1k"] else float("nan"))
            rs = fmt_ratio(ratio, 3)
            if op in TARGET_OPS_RATIO:
                t = TARGET_OPS_RATIO[op]
                rs += f" (≥{t}×{verdict(ratio >= t, ratio)})"

            errs = f"{k['errors'] if k else '–'} / {e['errors'] if e else '–'}"
            out.append(f"| {n} | {cell_ops(k)} | {cell_ops(e)} | {rs} | {cell_latency(k)} "
                       f"| {cell_latency(e)} | {cell_cpu(k)} | {cell_cpu(e)} "
                       f"| {fmt_ratio(cpur, 1)} | {errs} |")
        out.append("")
        note = compare_note(
            op, inflights,
            lambda s, n, op=op: results.get(s, {}).get("cells", {}).get(op, {}).get(str(n)),
            SYSTEMS)
        if note:
            out.append(note)
    return "\n".join(out)


def load_side_table(results: dict, ops: list[str], inflights: list[int]) -> str:
    out = ["| system | op | in flight | server cores n1/n2/n3 (leader) | client cores "
           "| client CPU ms/1k req | other load (cores) |",
           "|---|---|---:|---|---:|---:|---:|"]
    for s in SYSTEMS:
        for op in ops:
            for n in inflights:
                c = results.get(s, {}).get("cells", {}).get(op, {}).get(str(n))
                if not c:
                    continue
                each = "/".join(f"{x:.2f}" for x in c["server_cores_each"])
                cc = c["client_cpu_s"] / c["window_s"] if c["window_s"] else 0
                out.append(f"| {s} | {op} | {n} | {each} ({c['leader']}) | {cc:.2f} "
                           f"| {c['client_cpu_ms_per_1k']:.1f} | {other_load(c)} |")
    return "\n".join(out)


def failover_table(results: dict) -> str:
    fk = results.get("kubekv", {}).get("failover", [])
    fe = results.get("etcd", {}).get("failover", [])
    if not fk and not fe:
        return ""
    out = ["| repetition | kubekv: first write ms | kubekv: new leader in Status ms "
           "| etcd: first write ms | etcd: new leader in Status ms |",
           "|---:|---:|---:|---:|---:|"]
    for i in range(max(len(fk), len(fe))):
        k = fk[i] if i < len(fk) else {}
        e = fe[i] if i < len(fe) else {}
        out.append(f"| {i + 1} | {_ms(k.get('write_ms'))} | {_ms(k.get('leader_seen_ms'))} "
                   f"| {_ms(e.get('write_ms'))} | {_ms(e.get('leader_seen_ms'))} |")

    def agg(rows, key, fn):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return fn(vals) if vals and len(vals) == len(rows) else None

    for label, fn in (("median", median), ("max", max)):
        kw, kl = agg(fk, "write_ms", fn), agg(fk, "leader_seen_ms", fn)
        ew, el = agg(fe, "write_ms", fn), agg(fe, "leader_seen_ms", fn)
        tw = "" if kw is None or ew is None else (
            f" ({'ok' if kw <= ew else 'MISS'}: target ≤ etcd)")
        tl = "" if kl is None or el is None else (
            f" ({'ok' if kl <= el else 'MISS'}: target ≤ etcd)")
        out.append(f"| **{label}** | **{_ms(kw)}**{tw} | **{_ms(kl)}**{tl} | **{_ms(ew)}** "
                   f"| **{_ms(el)}** |")
    return "\n".join(out)


def report(results: dict, ops: list[str], inflights: list[int]) -> str:
    parts = [load_tables(results, ops, inflights)] if ops else []
    if ops:
        parts += ["Per member, clients and machine load per cell:\n",
                  load_side_table(results, ops, inflights), ""]
    ft = failover_table(results)
    if ft:
        parts += ["### failover: kill -9 the leader under one sequential writer "
                  "(ms after the kill)\n", ft, ""]
    return "\n".join(parts)


def print_report(path: str) -> int:
    data = json.loads(pathlib.Path(path).read_text())
    meta, results = data["meta"], data["results"]
    print(f"{meta['date']}  `{meta['command']}`")
    print(f"before: {meta['uptime_before']}\nafter:  {meta.get('uptime_after', '?')}\n")
    print(report(results, meta["ops"], meta["inflight"]))
    return 0


# ----------------------------------------------------------------- main


def parse_args(argv=None):
    default_clients = min(4, max(2, os.cpu_count() or 2))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell")
    p.add_argument("--inflight", default="64,256", help="total requests in flight")
    p.add_argument("--ops", default="put,range",
                   help=f"of {','.join(OPS)}; empty for failover only")
    p.add_argument("--clients", type=int, default=default_clients,
                   help=f"client processes (default {default_clients})")
    p.add_argument("--channels", type=int, default=1,
                   help="gRPC channels per client process and member")
    p.add_argument("--load-client", choices=LOAD_CLIENTS, default="python",
                   help="python: grpc.aio client processes; go: etcd's Go clientv3 "
                        "(bench/goload, needs golang-go and golang-etcd-server-dev), whose "
                        "CPU per request leaves the servers more of the machine")
    p.add_argument("--systems", default="kubekv,etcd", help="kubekv,etcd (in this order)")
    p.add_argument("--heartbeat-interval", type=int, default=100, help="ms, both systems")
    p.add_argument("--election-timeout", type=int, default=1000, help="ms, both systems")
    p.add_argument("--failover-reps", type=int, default=5, help="0: no failover test")
    p.add_argument("--probe-interval", type=float, default=20.0,
                   help="ms between probe writes / Status polls after the kill")
    p.add_argument("--kubekv-flags", default="", help='one string: --kubekv-flags="--x y"')
    p.add_argument("--etcd-flags", default="", help='one string: --etcd-flags="--x y"')
    add_steal_arguments(p)
    p.add_argument("--json", dest="json_out", help="write all results as JSON here")
    p.add_argument("--tmpdir", help="parent of the temp data dirs (default: $TMPDIR)")
    p.add_argument("--keep-tmp", action="store_true", help="keep data dirs and server logs")
    p.add_argument("--profile", metavar="DIR",
                   help="py-spy the kubekv leader in each measured window (skews kubekv)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-extra", default="", help='e.g. --profile-extra="--gil"')
    p.add_argument("--report", metavar="JSON", help="print the tables of a saved run and exit")
    args = p.parse_args(argv)
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    for o in args.ops:
        if o not in OPS:
            p.error(f"unknown op {o!r}; choose from {','.join(OPS)}")
    args.inflight = [int(x) for x in args.inflight.split(",") if x.strip()]
    if not args.inflight or min(args.inflight) < 1 or max(args.inflight) > 4096:
        p.error("--inflight: numbers between 1 and 4096")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or any(s not in SYSTEMS for s in args.systems):
        p.error("--systems: kubekv and/or etcd")
    if not 1 <= args.clients <= 64 or not 1 <= args.channels <= 16:
        p.error("--clients 1..64, --channels 1..16")
    if not 0.5 <= args.duration <= 600 or not 0 <= args.warmup <= 120:
        p.error("--duration 0.5..600 s, --warmup 0..120 s")
    if not 0 <= args.failover_reps <= 50 or not 5 <= args.probe_interval <= 1000:
        p.error("--failover-reps 0..50, --probe-interval 5..1000 ms")
    if args.heartbeat_interval < 1 or args.election_timeout < 5 * args.heartbeat_interval:
        p.error("--election-timeout must be at least 5x --heartbeat-interval (etcd's rule)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        return print_report(args.report)
    install_signal_handlers()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cluster-bench-", dir=args.tmpdir))
    started = datetime.datetime.now().astimezone()
    meta = {
        "command": "python bench/cluster_bench.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": started.isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "uptime_before": uptime_line(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "max_steal_cores": args.max_steal,
        "steal_tries": args.steal_tries,
        "ops": args.ops,
        "inflight": args.inflight,
        "clients": args.clients,
        "load_client": args.load_client,
        "channels_per_client_and_member": args.channels,
        "keys": NUM_KEYS,
        "value_bytes": VALUE_SIZE,
        "heartbeat_interval_ms": args.heartbeat_interval,
        "election_timeout_ms": args.election_timeout,
        "failover_reps": args.failover_reps,
        "probe_interval_ms": args.probe_interval,
        "kubekv_flags": args.kubekv_flags,
        # a measuring aid the servers load (bench/stage_bound, bench/latency_trace) is
        # switched on by KUBEKV_* variables: a saved run says which were set
        "kubekv_env": {k: v for k, v in os.environ.items() if k.startswith("KUBEKV_")},
        "etcd_flags": args.etcd_flags,
    }
    with contextlib.suppress(Exception):
        meta["kubekv_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=5).stdout.strip()
    with contextlib.suppress(Exception):
        meta["etcd_version"] = subprocess.run(
            [harness.etcd_binary(), "--version"], capture_output=True, text=True,
            timeout=10).stdout.splitlines()[0]
    print(f"cluster_bench {meta['date']}  {meta['uptime_before']}")
    print(f"  {args.clients} {args.load_client} client processes x {args.channels} "
          "channel(s) per member; "
          f"{args.warmup:g}s warm-up + {args.duration:g}s per cell; heartbeat "
          f"{args.heartbeat_interval} ms, election {args.election_timeout} ms; data under {tmp}")
    results: dict = {}
    rc = 0
    try:
        for system in args.systems:
            bench_system(system, tmp, args, results)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({str(exc) or 'SIGINT'}): servers and clients stopped",
              file=sys.stderr)
        rc = 130
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    meta["uptime_after"] = uptime_line()
    meta["elapsed_s"] = round((datetime.datetime.now().astimezone() - started).total_seconds(), 1)
    print(f"\n{meta['uptime_after']}\n")
    print(report(results, args.ops, args.inflight))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(
            json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
