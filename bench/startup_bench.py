#!/usr/bin/env python
"""Start-up times (issue 11 item 5): kubekv against real etcd 3.5, same run.

Two measurements, a few runs each, for each system (never both at once), on loopback
with fresh temp data dirs, free ports and etcd's default --heartbeat-interval 100 and
--election-timeout 1000:

- fresh: launch 3 members at once; time from the launch to the first `/health` 200
  on any member, and to `/health` 200 on all three.
- restart: SIGTERM a follower of that (healthy) cluster, leave it down for --down
  seconds (5: its peers' dialers back off meanwhile), launch it again; time from
  its launch to its peer port accepting a TCP connection, to its client port
  answering anything over HTTP, and to its `/health` 200.

Each time includes the process start (Python's imports for kubekv, ~0.5 s on a busy
2-core machine). Polls every 10 ms.

    python bench/startup_bench.py [--runs 3] [--systems kubekv,etcd] [--down 5]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import etcd_binary, free_port  # noqa: E402

POLL = 0.01
TIMEOUT = 30.0


def health(port: int) -> int | None:
    """The status of GET /health, None when the client port does not answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def until(cond, start: float) -> float:
    deadline = start + TIMEOUT
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic() - start
        time.sleep(POLL)
    raise RuntimeError("timed out")


class Member:
    def __init__(self, system: str, tmp: pathlib.Path, name: str) -> None:
        self.system, self.name = system, name
        self.client, self.peer = free_port(), free_port()
        self.data = tmp / name
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def argv(self, cluster: str) -> list[str]:
        exe = [etcd_binary()] if self.system == "etcd" else [sys.executable, "-m",
                                                              "kubekv_server"]
        c, p = f"http://127.0.0.1:{self.client}", f"http://127.0.0.1:{self.peer}"
        return [*exe, "--name", self.name, "--data-dir", str(self.data),
                "--listen-client-urls", c, "--advertise-client-urls", c,
                "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                "--initial-cluster", cluster, "--initial-cluster-token", "startup-bench",
                "--initial-cluster-state", "new"]

    def launch(self, cluster: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(cluster), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def a_follower(members: list[Member]) -> Member:
    """A member that is not the leader, from etcd's own /metrics (etcd_server_is_leader)."""
    for m in members:
        conn = http.client.HTTPConnection("127.0.0.1", m.client, timeout=2)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        if "etcd_server_is_leader 0" in text:
            return m
    raise RuntimeError("no follower")


def one_run(system: str, down: float) -> dict[str, float]:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"startup-{system}-"))
    members = [Member(system, tmp, f"m{i}") for i in range(3)]
    cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in members)
    out: dict[str, float] = {}
    try:
        start = time.monotonic()
        for m in members:
            m.launch(cluster)
        out["fresh: first /health 200"] = until(
            lambda: any(health(m.client) == 200 for m in members), start)
        out["fresh: all /health 200"] = until(
            lambda: all(health(m.client) == 200 for m in members), start)
        f = a_follower(members)
        f.stop()
        time.sleep(down)  # the follower stays down this long (peers back off meanwhile)
        start = time.monotonic()
        f.launch(cluster)
        t: dict[str, float] = {}
        deadline = start + TIMEOUT
        while len(t) < 2 and time.monotonic() < deadline:
            if "peer" not in t and accepts(f.peer):
                t["peer"] = time.monotonic()
            if "client" not in t and health(f.client) is not None:
                t["client"] = time.monotonic()
            time.sleep(POLL)
        out["restart: peer port accepts"] = t["peer"] - start
        out["restart: client port answers"] = t["client"] - start
        out["restart: /health 200"] = until(lambda: health(f.client) == 200, start)
    finally:
        for m in members:
            m.stop()
        if not os.environ.get("STARTUP_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", default="kubekv,etcd")
    ap.add_argument("--down", type=float, default=5.0,
                    help="seconds the follower stays stopped before its restart")
    args = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    for system in args.systems.split(","):
        for _ in range(args.runs):
            for k, v in one_run(system, args.down).items():
                results.setdefault(k, {}).setdefault(system, []).append(v)
    systems = args.systems.split(",")
    print("| seconds from launch (median, min–max) | " + " | ".join(systems) + " |")
    print("|---|" + "---|" * len(systems))
    for k, by in results.items():
        cells = [f"{statistics.median(by[s]):.2f} ({min(by[s]):.2f}–{max(by[s]):.2f})"
                 for s in systems]
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
