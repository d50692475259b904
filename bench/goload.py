"""bench/'s Go load client (`bench/goload/main.go`, etcd's Go clientv3): building it,
and `GoClients`, a drop-in for `loadgen.Clients` whose processes run the same closed
loops with a client whose CPU per request is a fraction of the Python one's.

Why: on the 2-core machine the Python clients take ~0.7 of a core at 10k requests/s,
CPU a server could have used; issue 12's own table was measured with a light Go
client. Building needs Debian's `golang-go` and `golang-etcd-server-dev` (etcd 3.4's
client sources under /usr/share/gocode, built in GOPATH mode, offline).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pathlib
import select
import shutil
import subprocess
import time
from collections.abc import Sequence

from bench.loadgen import cell_commands, preload_commands

SOURCE = pathlib.Path(__file__).resolve().parent / "goload" / "main.go"
GOCODE = pathlib.Path("/usr/share/gocode")
CLIENT_PKG = GOCODE / "src" / "go.etcd.io" / "etcd" / "clientv3"
CACHE = (pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
         / "kubekv-bench")
# How long a client may take to answer a command beyond the cell's own end: a call's
# timeout (10 s) plus slack for the last answers and the latency array.
ANSWER_SLACK_S = 40.0


class GoClientUnavailable(RuntimeError):
    pass


def build(cache: pathlib.Path | None = None) -> pathlib.Path:
    """The goload binary, built into `cache` (default CACHE) when its source changed."""
    cache = cache or CACHE
    if shutil.which("go") is None:
        raise GoClientUnavailable("no `go` on PATH: apt install golang-go")
    if not CLIENT_PKG.is_dir():
        raise GoClientUnavailable(f"no etcd Go client sources at {CLIENT_PKG}: "
                                  "apt install golang-etcd-server-dev")
    src = SOURCE.read_bytes()
    out = cache / f"goload-{hashlib.sha256(src).hexdigest()[:16]}"
    if out.exists():
        return out
    gopath = cache / "gopath"
    pkg = gopath / "src" / "goload"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "main.go").write_bytes(src)
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{gopath}:{GOCODE}",
               GOCACHE=str(cache / "gocache"), GOFLAGS="", CGO_ENABLED="0")
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run(["go", "build", "-o", str(tmp), "."], cwd=pkg, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise GoClientUnavailable(f"go build failed:\n{proc.stderr[-4000:]}")
    tmp.replace(out)
    return out


class GoClients:
    """`n` goload processes, each with `channels` connections to every endpoint; the
    interface of loadgen.Clients (preload, start_cell, finish_cell, pids, close)."""

    def __init__(self, endpoints: str | Sequence[str], n: int, channels: int,
                 cache: pathlib.Path | None = None) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        binary = build(cache)
        self.procs: list[subprocess.Popen] = []
        for i in range(n):
            self.procs.append(subprocess.Popen(
                [str(binary), "-endpoints", ",".join(endpoints), "-conns", str(channels),
                 "-index", str(i)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _send(self, proc: subprocess.Popen, cmd: dict) -> None:
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        proc.stdin.flush()

    def _collect(self, procs: list[subprocess.Popen], timeout: float) -> list[dict]:
        out = []
        deadline = time.monotonic() + timeout
        for p in procs:
            ready, _, _ = select.select([p.stdout], [], [], max(deadline - time.monotonic(), 0.01))
            if not ready:
                raise RuntimeError("a Go client process did not answer in time")
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"a Go client process exited (status {p.poll()})")
            res = json.loads(line)
            if not res.get("ok"):
                raise RuntimeError(f"Go client process failed: {res.get('error')}")
            if "lat" in res:
                res["lat"] = base64.b64decode(res["lat"])  # little-endian float64s
            out.append(res)
        return out

    def preload(self, num_keys: int, inflight: int) -> int:
        for p, cmd in zip(self.procs, preload_commands(num_keys, inflight, len(self.procs)),
                          strict=True):
            self._send(p, cmd)
        return sum(r["done"] for r in self._collect(self.procs, 300))

    def start_cell(self, op: str, inflight: int, t_start: float, t_end: float, seed: int):
        active = []
        for p, cmd in zip(self.procs, cell_commands(op, inflight, t_start, t_end, seed,
                                                    len(self.procs)), strict=True):
            if cmd is not None:
                # a Go process cannot read this process's monotonic clock: relative times
                cmd["start_in"] = cmd.pop("t_start") - time.monotonic()
                cmd["duration"] = cmd.pop("t_end") - t_start
                self._send(p, cmd)
                active.append(p)
        return active

    def finish_cell(self, active, t_end: float) -> list[dict]:
        return self._collect(active, max(t_end - time.monotonic(), 0) + ANSWER_SLACK_S)

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError, BrokenPipeError, ValueError):
                self._send(p, {"cmd": "stop"})
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p.stdout:
                p.stdout.close()
