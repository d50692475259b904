"""Stalled-watcher memory: kubekv vs real etcd 3.5.1 (issue 9, item 5).

One watch stream whose client stops reading: a raw HTTP/2 client (the `h2` library
over a plain socket) sends the Watch request, reads until the watch is created, and
then neither reads its socket nor sends WINDOW_UPDATE. A writer then makes `--puts`
puts of `--value-size`-byte values under the watched prefix (default 5,000 × 10 KB ≈
50 MB of events), the server's memory is read from /proc, and the watcher resumes:
it must receive every event, in revision order, with no gap or duplicate.

Server memory (`/proc/PID/status`) at each phase:

* before   – the watch created, nothing written yet;
* stalled  – every put answered, the watcher still stalled (read once the server's
  RSS has settled, i.e. changed < 1 MiB over 0.5 s, at most 10 s);
* after    – the watcher has read every event;
* peak     – VmHWM at the end (the high-water mark of the whole run; includes
  start-up).

VmRSS counts file-backed pages too (LMDB's and bbolt's mmap of the data file);
RssAnon is the heap alone, which is what a watcher's backlog can grow. "Pending"
is the size of the events the watcher is owed (sum of Event.ByteSize()), and the
ratios are growth / pending.

The two servers run one after the other in the same run (kubekv is stopped before
etcd starts); only loopback traffic; every loop is bounded in count and time.

    python bench/watch_memory.py                         # both servers, 5000 × 10 KB
    python bench/watch_memory.py --server kubekv --puts 2000
    python bench/watch_memory.py --client-window 65535    # h2's default window
    python bench/watch_memory.py --control                # + the writes without a watcher
    python bench/watch_memory.py --report FILE            # re-print a saved run
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etcdproto.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from etcdproto.mvccpb import kv_pb2  # noqa: E402
from tests import harness  # noqa: E402
from tests.watch.stalled import MAX_WINDOW, StalledWatcher, memory, settled  # noqa: E402

PREFIX = b"wm/"
PREFIX_END = b"wm0"
WATCH_PATH = b"/etcdserverpb.Watch/Watch"
PUT_TIMEOUT = 10.0


# ------------------------------------------------------------------ one server


def write_puts(server: harness.ServerProcess, puts: int, value_size: int,
               threads: int) -> tuple[int, float]:
    """`puts` puts of distinct keys under PREFIX; (first revision, seconds)."""
    value = b"v" * value_size
    kv = server.kv
    first = kv.Put(pb.PutRequest(key=PREFIX + b"first", value=value),
                   timeout=PUT_TIMEOUT).header.revision
    t0 = time.monotonic()

    def run(part: range) -> None:
        for i in part:
            kv.Put(pb.PutRequest(key=PREFIX + b"k%06d" % i, value=value), timeout=PUT_TIMEOUT)

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(run, [range(i, puts - 1, threads) for i in range(threads)]))
    return first, time.monotonic() - t0


def event_bytes(puts: int, value_size: int, first_rev: int) -> int:
    """The size of the events the watcher is owed (as Event.ByteSize())."""
    total = 0
    keys = [PREFIX + b"first"] + [PREFIX + b"k%06d" % i for i in range(puts - 1)]
    for n, key in enumerate(keys):
        rev = first_rev + n
        ev = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_pb2.KeyValue(
            key=key, value=b"v" * value_size, create_revision=rev, mod_revision=rev,
            version=1))
        total += ev.ByteSize()
    return total


def run_one(name: str, server: harness.ServerProcess, args, watch: bool = True) -> dict:
    """The scenario on one running server (`watch` False: the same writes, no watcher)."""
    pid = server.proc.pid
    boot = memory(pid)
    w = StalledWatcher(server.endpoint, args.client_window) if watch else None
    try:
        rev = server.kv.Range(pb.RangeRequest(key=b"x"), timeout=PUT_TIMEOUT).header.revision
        if w is not None:
            w.create(PREFIX, PREFIX_END, rev + 1)
        before = settled(pid)
        # the watcher stops reading here
        sampler_peak = {"VmRSS": 0, "RssAnon": 0}
        series: list[tuple[float, int, int]] = []
        stop = threading.Event()
        t_start = time.monotonic()

        def sample() -> None:
            while not stop.wait(0.05):
                m = memory(pid)
                series.append((round(time.monotonic() - t_start, 2), m["VmRSS"] >> 20,
                               m["RssAnon"] >> 20))
                for k in sampler_peak:
                    sampler_peak[k] = max(sampler_peak[k], m[k])

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        first, put_s = write_puts(server, args.puts, args.value_size, args.threads)
        stalled = settled(pid)
        if w is not None:
            resumed = w.resume(first, args.puts)
            if resumed["problems"] and shutil.which("py-spy"):
                # a stuck stream: where the server's threads are (diagnostic only)
                subprocess.run(["py-spy", "dump", "--pid", str(pid)], timeout=30)
        else:
            resumed = {"events": args.puts, "responses": 0, "in_order": True, "problems": [],
                       "seconds": 0.0}
        stop.set()
        t.join()
        after = settled(pid)
    finally:
        if w is not None:
            w.close()
    pending = event_bytes(args.puts, args.value_size, first)
    out = {
        "server": name if watch else f"{name}/nowatch", "puts": args.puts,
        "value_size": args.value_size,
        "pending_bytes": pending, "put_seconds": round(put_s, 2),
        "boot": boot, "before": before, "stalled": stalled, "after": after,
        "sampled_peak": sampler_peak, "resume": resumed,
        "series_MiB": series[::4],  # (seconds, VmRSS, RssAnon) every 0.2 s
    }
    for k in ("VmRSS", "RssAnon"):
        out[f"growth_{k}"] = max(stalled[k], sampler_peak[k]) - before[k]
        out[f"ratio_{k}"] = round(out[f"growth_{k}"] / pending, 2)
    return out


def mib(n: int) -> str:
    return f"{n / (1 << 20):7.1f}"


def report(results: list[dict]) -> None:
    print()
    print(f"{'server':15} {'pending':>8} | {'RSS before':>10} {'stalled':>8} {'peak':>8} "
          f"{'after':>8} {'HWM':>8} | {'anon before':>11} {'stalled':>8} {'peak':>8} | "
          f"{'RSS/pend':>8} {'anon/pend':>9} | resume")
    for r in results:
        b, s, a, p = r["before"], r["stalled"], r["after"], r["sampled_peak"]
        res = r["resume"]
        ok = "ok" if res["in_order"] and res["events"] == r["puts"] else "FAIL"
        print(f"{r['server']:15} {mib(r['pending_bytes']):>8} | {mib(b['VmRSS']):>10} "
              f"{mib(s['VmRSS']):>8} {mib(p['VmRSS']):>8} {mib(a['VmRSS']):>8} "
              f"{mib(a['VmHWM']):>8} | {mib(b['RssAnon']):>11} {mib(s['RssAnon']):>8} "
              f"{mib(p['RssAnon']):>8} | {r['ratio_VmRSS']:>8} {r['ratio_RssAnon']:>9} | "
              f"{ok} {res['events']}/{r['puts']} events in {res['responses']} responses, "
              f"{res['seconds']} s")
    print("(MiB; peak = highest of 50 ms samples while stalled and resuming; ratios = "
          "(peak or stalled) - before, over pending)")
    by_name = {r["server"]: r for r in results}
    for r in results:
        ctl = by_name.get(f"{r['server']}/nowatch")
        if ctl is None:
            continue
        for k in ("VmRSS", "RssAnon"):
            cost = r["growth_" + k] - ctl["growth_" + k]
            r["watcher_cost_" + k] = cost
            print(f"{r['server']}: the stalled watcher's own cost ({k} growth - growth "
                  f"without it): {mib(cost).strip()} MiB = "
                  f"{cost / r['pending_bytes']:.2f}x pending")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=["kubekv", "etcd", "both"], default="both")
    ap.add_argument("--puts", type=int, default=5000)
    ap.add_argument("--value-size", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=8, help="writer threads")
    ap.add_argument("--client-window", type=int, default=MAX_WINDOW,
                    help="the stalled client's HTTP/2 stream window (default: the largest)")
    ap.add_argument("--control", action="store_true",
                    help="also run the same writes on a fresh server with no watcher")
    ap.add_argument("--kubekv-env", action="append", default=[],
                    help="NAME=VALUE for the kubekv process (repeatable)")
    ap.add_argument("--json", help="output file (default bench/results/<date>-watch-memory.json)")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--report", help="re-print the table of a saved JSON file and exit")
    args = ap.parse_args()
    if args.report:
        report(json.loads(pathlib.Path(args.report).read_text())["results"])
        return 0

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="watch-memory-"))
    results = []
    try:
        names = ["kubekv", "etcd"] if args.server == "both" else [args.server]
        for name in names:
            if name == "kubekv":
                server = harness.kubekv_process(tmp)
                for kv in args.kubekv_env:
                    k, _, v = kv.partition("=")
                    server.env[k] = v
            else:
                server = harness.etcd_process(tmp, "--quota-backend-bytes", str(8 << 30))
            with harness.running(server):
                print(f"{name}: pid {server.proc.pid}, {args.puts} puts of "
                      f"{args.value_size} B, client window {args.client_window}", flush=True)
                results.append(run_one(name, server, args))
            if args.control:
                server = harness.ServerProcess(server.argv, server.data_dir, server.port,
                                               server.log_path, server.env)
                shutil.rmtree(server.data_dir, ignore_errors=True)
                with harness.running(server):
                    results.append(run_one(name, server, args, watch=False))
            if name == "kubekv" and "KUBEKV_WATCH_TRACEMALLOC" in server.env:
                print(server.log_tail(60))
        report(results)
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    path = pathlib.Path(args.json) if args.json else (
        ROOT / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}-watch-memory.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "host": platform.node(), "python": platform.python_version(),
        "args": vars(args), "results": results,
    }, indent=2) + "\n")
    print(f"wrote {path}")
    ok = all(r["resume"]["in_order"] and r["resume"]["events"] == r["puts"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
