"""Watch fan-out benchmark: kubekv vs real etcd 3.5 (issue 5, item 6).

W watchers (default 1,000) spread over S watch streams (default 10, each its own
channel) all watch one prefix; a writer then makes N puts (default 10,000) under it,
so every put is delivered W times. Measured per server, one server at a time:

* delivery throughput: events delivered to all watchers / (first put sent → last
  event received);
* delivery latency of each event: its arrival at the watcher − the commit time of its
  revision, taken as the moment the writer got the put's response (the event may
  arrive first: then 0); p50 / p99 / max over all W×N events;
* put throughput, server CPU (utime+stime) per 1,000 delivered events, client CPU.

The watchers run in `--procs` client processes (spawn), reading responses with
the upb protobuf parser; the writer is a grpc.aio loop in this process with
`--inflight` puts in flight (or paced at `--rate` puts/s). Targets (issue 5):
delivery throughput ≥ 0.5× etcd's, p99 ≤ 2× etcd's.

    python bench/watch_bench.py                       # both servers, 1000 × 10000
    python bench/watch_bench.py --puts 2000 --server kubekv --keep-tmp
    python bench/watch_bench.py --rate 200            # paced writer: latency below saturation
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import multiprocessing
import os
import pathlib
import platform
import queue
import shutil
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from kv_bench import make_server  # noqa: E402
from loadgen import proc_cpu_seconds, split, start_server, uptime_line  # noqa: E402

from etcdproto.etcdserverpb import rpc_pb2 as pb  # noqa: E402

PREFIX = b"wb/"
PREFIX_END = b"wb0"
WATCH_METHOD = "/etcdserverpb.Watch/Watch"
PUT_METHOD = "/etcdserverpb.KV/Put"
# latency histogram: log-spaced bins from 10 µs to 1000 s (≈0.5% wide)
BINS = np.concatenate(([0.0], np.logspace(-5, 3, 3200)))


# ------------------------------------------------------------------ watch clients


def _stream(endpoint: str, n_watchers: int, start_rev: int, expected: int, ready,
            out: dict, go: threading.Event) -> None:
    """One watch stream with n_watchers watchers on the prefix; reads until `expected`
    events arrived. Records (revision, arrival time) per event."""
    reqs: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(n_watchers):
        reqs.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=PREFIX, range_end=PREFIX_END, start_revision=start_rev)).SerializeToString())

    def gen():
        while True:
            r = reqs.get()
            if r is None:
                return
            yield r

    revs = array.array("q")
    times = array.array("d")
    ch = grpc.insecure_channel(endpoint, options=[
        ("grpc.max_receive_message_length", 64 << 20)])
    call = ch.stream_stream(WATCH_METHOD)(gen())  # raw bytes both ways
    created = events = responses = 0
    parse = pb.WatchResponse.FromString
    now = time.monotonic
    try:
        for raw in call:
            t = now()
            resp = parse(raw)
            if resp.created:
                created += 1
                if created == n_watchers:
                    ready()
                continue
            responses += 1
            for ev in resp.events:
                revs.append(ev.kv.mod_revision)
                times.append(t)
            events += len(resp.events)
            if resp.canceled:
                out["canceled"] = str(resp)
                break
            if events >= expected:
                break
    finally:
        reqs.put(None)
        call.cancel()
        ch.close()
    out["revs"], out["times"], out["events"] = revs, times, events
    out["responses"] = responses


def watch_proc(conn, endpoint: str, streams: list[int], start_rev: int, puts: int) -> None:
    """A client process: its streams in threads; reports ready, then results."""
    lock = threading.Lock()
    n_ready = [0]
    all_ready = threading.Event()

    def ready():
        with lock:
            n_ready[0] += 1
            if n_ready[0] == len(streams):
                all_ready.set()

    outs = [{} for _ in streams]
    go = threading.Event()
    cpu0 = time.process_time()
    threads = [
        threading.Thread(target=_stream, args=(endpoint, w, start_rev, w * puts, ready, o, go))
        for w, o in zip(streams, outs, strict=True)
    ]
    for t in threads:
        t.start()
    all_ready.wait(120)
    conn.send("ready")
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu0
    conn.send("done")
    commit = conn.recv()  # np.ndarray: commit time of revision start_rev + i
    hist = np.zeros(len(BINS) - 1, dtype=np.int64)
    first, last, events, canceled = float("inf"), 0.0, 0, []
    responses = sum(o.get("responses", 0) for o in outs)
    for o in outs:
        if "canceled" in o:
            canceled.append(o["canceled"])
        if not o["events"]:
            continue
        revs = np.frombuffer(o["revs"], dtype=np.int64)
        times = np.frombuffer(o["times"], dtype=np.float64)
        lat = np.clip(times - commit[revs - start_rev], 0.0, None)
        hist += np.histogram(lat, BINS)[0]
        first, last = min(first, times.min()), max(last, times.max())
        events += o["events"]
    conn.send({"hist": hist, "first": first, "last": last, "events": events, "cpu": cpu,
               "canceled": canceled, "responses": responses})


# ------------------------------------------------------------------------ writer


async def write(endpoint: str, puts: int, inflight: int, rate: float, value: bytes):
    """Make `puts` puts; returns (revision, send time, response time) per put."""
    ch = grpc.aio.insecure_channel(endpoint)
    put = ch.unary_unary(PUT_METHOD, request_serializer=pb.PutRequest.SerializeToString,
                         response_deserializer=pb.PutResponse.FromString)
    out: list[tuple[int, float, float]] = []
    nxt = [0]
    t0 = time.monotonic()

    async def loop():
        while nxt[0] < puts:
            i = nxt[0]
            nxt[0] += 1
            if rate:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent = time.monotonic()
            r = await put(pb.PutRequest(key=PREFIX + b"k%03d" % (i % 100), value=value),
                          timeout=30)
            out.append((r.header.revision, sent, time.monotonic()))

    await asyncio.gather(*(loop() for _ in range(inflight)))
    await ch.close()
    return out


# ------------------------------------------------------------------------- a run


def run_server(name: str, tmp: pathlib.Path, args) -> dict:
    server = make_server(name, tmp, args)
    start_server(server)
    procs, conns = [], []
    try:
        base = server.kv.Put(pb.PutRequest(key=b"wbase", value=b"x")).header.revision
        start_rev = base + 1
        per_stream = split(args.watchers, args.streams)
        groups = [per_stream[i::args.procs] for i in range(args.procs)]
        ctx = multiprocessing.get_context("spawn")
        for g in groups:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=watch_proc,
                            args=(child, server.endpoint, g, start_rev, args.puts), daemon=True)
            p.start()
            procs.append(p)
            conns.append(parent)
        for c in conns:
            if not c.poll(180) or c.recv() != "ready":
                raise RuntimeError("watchers not ready")
        pid = server.proc.pid
        cpu0 = proc_cpu_seconds(pid)
        client_cpu0 = sum(proc_cpu_seconds(p.pid) for p in procs)
        t_first_put = time.monotonic()
        results = asyncio.run(write(server.endpoint, args.puts, args.inflight, args.rate,
                                    b"v" * args.value_size))
        t_puts_done = time.monotonic()
        for c in conns:
            if not c.poll(args.timeout) or c.recv() != "done":
                raise RuntimeError(f"watchers did not get every event within {args.timeout}s")
        cpu = proc_cpu_seconds(pid) - cpu0
        client_cpu = sum(proc_cpu_seconds(p.pid) for p in procs) - client_cpu0
        commit = np.zeros(args.puts, dtype=np.float64)
        for rev, _sent, got in results:
            commit[rev - start_rev] = got
        for c in conns:
            c.send(commit)
        parts = [c.recv() for c in conns]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        server.stop()
    hist = sum(p["hist"] for p in parts)
    events = sum(p["events"] for p in parts)
    last = max(p["last"] for p in parts)
    span = last - t_first_put
    cum = np.cumsum(hist)

    def pct(q: float) -> float:
        i = int(np.searchsorted(cum, q * cum[-1]))
        return float(BINS[min(i + 1, len(BINS) - 1)])

    nz = np.nonzero(hist)[0]
    return {
        "server": name,
        "events": int(events),
        "responses": int(sum(p["responses"] for p in parts)),
        "expected": args.watchers * args.puts,
        "span_s": span,
        "events_per_s": events / span,
        "puts_per_s": args.puts / (t_puts_done - t_first_put),
        "p50_ms": pct(0.50) * 1e3,
        "p99_ms": pct(0.99) * 1e3,
        "max_ms": float(BINS[nz[-1] + 1]) * 1e3 if len(nz) else 0.0,
        "server_cpu_s": cpu,
        "server_cpu_us_per_event": cpu / max(events, 1) * 1e6,
        "client_cpu_s": client_cpu,
        "canceled": [c for p in parts for c in p["canceled"]],
    }


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "n/a"


def table(res: dict) -> str:
    k, e = res.get("kubekv"), res.get("etcd")
    rows = [
        ("events delivered", "events", "{:,}"),
        ("watch responses received", "responses", "{:,}"),
        ("delivery throughput (events/s)", "events_per_s", "{:,.0f}"),
        ("put throughput (puts/s)", "puts_per_s", "{:,.0f}"),
        ("first put → last event (s)", "span_s", "{:.2f}"),
        ("latency p50 (ms)", "p50_ms", "{:.1f}"),
        ("latency p99 (ms)", "p99_ms", "{:.1f}"),
        ("latency max (ms)", "max_ms", "{:.1f}"),
        ("server CPU µs / event", "server_cpu_us_per_event", "{:.2f}"),
        ("server CPU (s)", "server_cpu_s", "{:.1f}"),
        ("watch clients' CPU (s)", "client_cpu_s", "{:.1f}"),
    ]
    out = ["| | kubekv | etcd 3.5 | kubekv / etcd |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        kv = fmt.format(k[key]) if k else "-"
        ev = fmt.format(e[key]) if e else "-"
        rt = ratio(k[key], e[key]) if k and e else "-"
        out.append(f"| {label} | {kv} | {ev} | {rt} |")
    if k and e:
        tput = k["events_per_s"] / e["events_per_s"]
        p99 = k["p99_ms"] / e["p99_ms"] if e["p99_ms"] else float("inf")
        out.append("")
        out.append(f"targets: delivery throughput {tput:.2f}× etcd (≥ 0.5×: "
                   f"{'ok' if tput >= 0.5 else 'MISS'}), p99 {p99:.2f}× etcd (≤ 2×: "
                   f"{'ok' if p99 <= 2 else 'MISS'})")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--puts", type=int, default=10000)
    ap.add_argument("--inflight", type=int, default=16, help="puts in flight (writer)")
    ap.add_argument("--rate", type=float, default=0.0, help="puts/s; 0: as fast as possible")
    ap.add_argument("--value-size", type=int, default=64)
    ap.add_argument("--procs", type=int, default=2, help="watch client processes")
    ap.add_argument("--server", choices=["kubekv", "etcd", "both"], default="both")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds the watchers may take to receive every event")
    ap.add_argument("--kubekv-flags", default="")
    ap.add_argument("--etcd-flags", default="")
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--tmpdir", type=pathlib.Path)
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="watchbench-", dir=args.tmpdir))
    names = ["kubekv", "etcd"] if args.server == "both" else [args.server]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "uptime_before": uptime_line(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"# {meta['date']}  {meta['uptime_before']}", flush=True)
    res = {}
    try:
        for name in names:
            res[name] = run_server(name, tmp / name, args)
            r = res[name]
            print(f"{name}: {r['events']:,} events in {r['span_s']:.2f}s = "
                  f"{r['events_per_s']:,.0f}/s, p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms, canceled {len(r['canceled'])}", flush=True)
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["uptime_after"] = uptime_line()
    print(f"# {meta['uptime_after']}")
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": res}, indent=1, default=str))


if __name__ == "__main__":
    main()
