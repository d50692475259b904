#!/usr/bin/env python
"""Whose code a write's CPU runs in: the interpreter, the C libraries, the kernel.

Runs kubekv and etcd 3.5.1 (one member or three) under the same closed-loop load of Go
clients (`bench/goload`), samples the servers' CPU for a few seconds of it (`perf record
-e cpu-clock` at a fixed period, so a sample is a fixed slice of CPU time) and reports
per write the CPU (from /proc) split over the shared objects it ran in: for kubekv the
CPython runtime (libpython: the bytecode loop, objects, dicts, allocation), the extension
modules (protobuf's upb, py-lmdb with LMDB, uvloop with libuv, grpcio), libc and the
kernel; for etcd its Go binary and the kernel. The CPython share bounds what compiling
kubekv's own Python could save (bench/profile_server.md, session 31).

    python bench/cpu_by_code.py [--members 1|3] [--op put|txn] [--inflight 64] [--seconds 4]

Needs `perf` (Debian's linux-perf, root) and the Go client (golang-go,
golang-etcd-server-dev). Not a test: a measurement for the notes.
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
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import proc_cpu_seconds  # noqa: E402
from bench.perf_load import under_load  # noqa: E402

# One sample per this much CPU time of a sampled thread (cpu-clock's period is in ns).
SAMPLE_PERIOD_NS = 100_000

# `perf report --sort dso -n` rows: overhead %, samples, shared object
ROW = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S.*?)\s*$")

# Shared objects by the code they hold (first match wins; the rest is "other").
GROUPS = (
    ("CPython runtime", re.compile(r"^(libpython|python3)")),
    ("protobuf (upb)", re.compile(r"^_message\.")),
    ("py-lmdb + LMDB", re.compile(r"^cpython\.cpython")),
    ("uvloop + libuv", re.compile(r"^loop\.cpython")),
    ("grpcio", re.compile(r"^cygrpc")),
    ("other extension modules", re.compile(r"\.cpython-\d+.*\.so$|\.abi3\.so$")),
    ("libc, libm, loader", re.compile(r"^(libc|libm|ld-linux|libpthread)")),
    ("kernel", re.compile(r"^\[kernel")),
    ("etcd (Go)", re.compile(r"^etcd$")),
)


def parse_report(text: str) -> dict[str, int]:
    """Samples per shared object from `perf report --stdio -n --sort dso`."""
    out: dict[str, int] = collections.Counter()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = ROW.match(line)
        if m is not None:
            out[m.group(3)] += int(m.group(2))
    return dict(out)


def group(samples: dict[str, int]) -> dict[str, int]:
    """Samples per GROUPS name (shared objects no group claims count as "other")."""
    out: dict[str, int] = collections.Counter()
    for dso, n in samples.items():
        name = next((g for g, pattern in GROUPS if pattern.search(dso)), "other")
        out[name] += n
    return dict(out)


def measure(system: str, a) -> dict:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"cpucode-{system}-"))
    data = tmp / "cpu.data"

    def record(pids: list[int]) -> tuple[float, float]:
        """(CPU seconds /proc counted for the servers, seconds) over perf's run."""
        cpu0, t0 = sum(proc_cpu_seconds(p) for p in pids), time.monotonic()
        subprocess.run(["perf", "record", "-e", "cpu-clock", "-c", str(SAMPLE_PERIOD_NS),
                        "-p", ",".join(map(str, pids)), "-o", str(data), "--",
                        "sleep", str(a.seconds)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return sum(proc_cpu_seconds(p) for p in pids) - cpu0, time.monotonic() - t0

    try:
        rate, _, (cpu, elapsed) = under_load(system, a, tmp, a.clients, a.channels, record)
        report, symbols = (
            subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-n",
                            "--sort", sort, "--percent-limit", "0"],
                           capture_output=True, text=True, check=True).stdout
            for sort in ("dso", "dso,sym"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    samples = parse_report(report)
    total = sum(samples.values())
    if total == 0:
        raise RuntimeError(f"{system}: perf took no sample of the servers")
    proc_us = cpu * 1e6 / (rate * elapsed)
    # perf gives the split, /proc the total: attached to etcd's threads, perf's samples
    # came to 0.77-1.05 of what /proc counted (kubekv's: 0.98-1.01), which the
    # split is taken to represent

    def per_write(counts: dict[str, int]) -> dict[str, float]:
        return {k: proc_us * n / total for k, n in counts.items()}

    return {"system": system, "writes_per_s": rate,
            "sampled_us_per_write": total * SAMPLE_PERIOD_NS / 1000 / (rate * a.seconds),
            "proc_us_per_write": proc_us,
            "groups": per_write(group(samples)), "dsos": per_write(samples),
            "symbols": per_write(parse_report(symbols))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, choices=(1, 3), default=1)
    p.add_argument("--op", choices=("put", "txn"), default="put")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--systems", default="kubekv,etcd")
    p.add_argument("--clients", type=int, default=2, help="Go client processes (kv_bench's)")
    p.add_argument("--channels", type=int, default=1, help="connections per process (kv_bench's)")
    p.add_argument("--dsos", action="store_true", help="list every shared object too")
    p.add_argument("--symbols", type=int, default=0, metavar="N",
                   help="list the N functions with the most CPU too")
    a = p.parse_args()
    if shutil.which("perf") is None:
        p.error("no `perf` on PATH: apt install linux-perf")
    print(f"{a.members} member(s), {a.op} at {a.inflight} in flight, {a.seconds:g} s sampled"
          f" (one sample per {SAMPLE_PERIOD_NS // 1000} µs of CPU)")
    for system in a.systems.split(","):
        r = measure(system, a)
        print(f"\n{system}: {r['writes_per_s']:.0f} writes/s, server CPU per write "
              f"{r['proc_us_per_write']:.1f} µs (/proc, over perf's run; the samples "
              f"came to {r['sampled_us_per_write']:.1f}), split as perf sampled it")
        print("| code | µs per write | share |")
        print("|---|---:|---:|")
        total = sum(r["groups"].values())
        rows = r["dsos"] if a.dsos else r["groups"]
        for name, v in sorted(rows.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {v:.1f} | {100 * v / total:.0f} % |", flush=True)
        if a.symbols:
            print("| shared object, function | µs per write | share |")
            print("|---|---:|---:|")
            top = sorted(r["symbols"].items(), key=lambda kv: -kv[1])[:a.symbols]
            for name, v in top:
                print(f"| {' '.join(name.split())} | {v:.2f} | {100 * v / total:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
