#!/usr/bin/env python
"""How often a write wakes a server thread, and how long each wake-up waits for a CPU.

Runs kubekv and etcd 3.5.1 (one member or three) under the same closed-loop load of Go
clients (`bench/goload`), records the kernel's scheduler events for a few seconds of it
(`perf sched record -a`), and reports per write, summed over the servers' threads: the
times a server thread was put on a CPU (a wake-up, or a preempted thread's return), the
scheduling delay of those (from the wake-up until the thread ran), and CPU time. At one
write in flight every thread hand-off of a write is on its path: a hand-off costs one
such delay, whatever the thread does when it runs (bench/profile_server.md, session 30).

    python bench/sched_delay.py [--members 1|3] [--op put|txn] [--inflight 1] [--seconds 3]

Needs `perf` (Debian's linux-perf) with access to sched tracepoints (root), and the Go
client (golang-go, golang-etcd-server-dev). Not a test: a measurement for the notes.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.perf_load import under_load  # noqa: E402

# `perf sched timehist` rows: time, [cpu], task[tid] or task[tid/pid], wait, sch delay, run
TIME = re.compile(r"^\s*\d+\.\d+(?=\s+\[\d+\])")
ROW = re.compile(r"^\s*[\d.]+\s+\[\d+\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+"
                 r"([\d.]+)\s*$")


def recorded_span(text: str) -> float:
    """Seconds between the first and the last event of a `perf sched timehist`."""
    times = [float(m.group(0)) for line in text.splitlines()
             if (m := TIME.match(line)) is not None]
    if len(times) < 2:
        raise RuntimeError("perf recorded no scheduler events")
    return times[-1] - times[0]


def parse_timehist(text: str, pids: set[int]) -> dict[int, list[float]]:
    """Per server pid: [runs, sched delay ms, run time ms] over the recorded window."""
    out: dict[int, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for line in text.splitlines():
        m = ROW.match(line)
        if m is None:
            continue
        tid, pid = int(m.group(2)), int(m.group(3) or m.group(2))
        if pid not in pids and tid not in pids:
            continue
        acc = out[pid if pid in pids else tid]
        acc[0] += 1
        acc[1] += float(m.group(5))
        acc[2] += float(m.group(6))
    return out


def measure(system: str, a) -> dict:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"sched-{system}-"))
    data = tmp / "sched.data"

    def record(pids: list[int]) -> None:
        subprocess.run(["perf", "sched", "record", "-a", "-o", str(data), "--",
                        "sleep", str(a.seconds)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        rate, pids, _ = under_load(system, a, tmp, 1, 1, record)
        hist = subprocess.run(["perf", "sched", "timehist", "-i", str(data)],
                              capture_output=True, text=True, check=True).stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # the writes perf saw are the window's steady rate times the span its events cover
    window = recorded_span(hist)
    writes = rate * window
    per = parse_timehist(hist, set(pids))
    runs = sum(v[0] for v in per.values())
    delay = sum(v[1] for v in per.values())
    cpu = sum(v[2] for v in per.values())
    return {"system": system, "writes": writes, "writes_per_s": rate,
            "runs_per_write": runs / writes, "delay_us_per_write": delay * 1000 / writes,
            "delay_us_per_run": delay * 1000 / runs if runs else 0.0,
            "cpu_us_per_write": cpu * 1000 / writes,
            "per_member": [[v[0] / writes, v[1] * 1000 / writes] for v in
                           (per[p] for p in pids)]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, choices=(1, 3), default=3)
    p.add_argument("--op", choices=("put", "txn"), default="put")
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--systems", default="kubekv,etcd")
    a = p.parse_args()
    if shutil.which("perf") is None:
        p.error("no `perf` on PATH: apt install linux-perf")
    print(f"{a.members} member(s), {a.op} at {a.inflight} in flight, {a.seconds:g} s recorded")
    print("| system | writes/s | thread runs per write | sched delay per write µs | "
          "per run µs | server CPU per write µs | per member: runs, delay µs |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for system in a.systems.split(","):
        r = measure(system, a)
        members = "; ".join(f"{n:.1f}, {d:.0f}" for n, d in r["per_member"])
        print(f"| {system} | {r['writes_per_s']:.0f} | {r['runs_per_write']:.1f} | "
              f"{r['delay_us_per_write']:.0f} | {r['delay_us_per_run']:.0f} | "
              f"{r['cpu_us_per_write']:.0f} | {members} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
