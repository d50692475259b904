"""Helpers for auth tests: etcdctl with credentials, and servers with auth set up."""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing.polling import GaveUp, wait_for
from tests.harness import ServerProcess, etcd_binary, kubekv_process


def ctl(endpoint: str, *args: str, user: str | None = None, input: str | None = None,
        timeout: float = 30.0) -> tuple[int, str]:
    """Run etcdctl 3.5; (exit status, stdout + stderr without the client's JSON log lines)."""
    argv = [etcd_binary("etcdctl"), f"--endpoints={endpoint}"]
    if user is not None:
        argv += ["--user", user]
    res = subprocess.run(argv + list(args), input=input, capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, ETCDCTL_API="3"))
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if not ln.startswith("{")]
    return res.returncode, "\n".join(lines).strip()


def ok(endpoint: str, *args: str, **kw) -> str:
    rc, out = ctl(endpoint, *args, **kw)
    assert rc == 0, f"etcdctl {' '.join(args)}: {out}"
    return out


def setup_root(ep: str) -> None:
    """root:root with the root role, test-user:pass with test-role (readwrite foo), auth on."""
    ok(ep, "user", "add", "root:root")
    ok(ep, "user", "grant-role", "root", "root")
    ok(ep, "user", "add", "test-user:pass")
    ok(ep, "role", "add", "test-role")
    ok(ep, "user", "grant-role", "test-user", "test-role")
    ok(ep, "role", "grant-permission", "test-role", "readwrite", "foo")
    assert ok(ep, "auth", "enable") == "Authentication Enabled"


def wait_up(proc: ServerProcess, timeout: float = 30.0) -> None:
    """Readiness without credentials: Status is open to everyone under auth."""

    def status() -> pb.StatusResponse:
        with grpc.insecure_channel(proc.endpoint) as ch:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=1)

    try:
        wait_for(status, timeout, "Status from the server",
                 give_up=lambda: proc.proc.poll() is not None and "the server exited")
    except (GaveUp, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n{proc.log_tail()}") from None


def restart(proc: ServerProcess) -> None:
    proc.stop()
    log = open(proc.log_path, "ab")
    proc.proc = subprocess.Popen(proc.argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=proc.env,
                                 cwd=str(proc.data_dir.parent))
    log.close()
    wait_up(proc)


@pytest.fixture
def authed(tmp_path):
    """A kubekv server with root and test-user set up and auth enabled."""
    proc = kubekv_process(tmp_path)
    proc.start()
    setup_root(proc.endpoint)
    yield proc
    proc.stop()
