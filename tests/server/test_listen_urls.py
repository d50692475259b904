"""Listen URLs as etcd takes them: port 0 (any free port, as etcd's e2e asks for) and
unix-socket peer URLs (`unix://name:port`, relative to the working directory)."""

from __future__ import annotations

import re
import subprocess
import sys

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing.polling import wait_for
from tests.harness import ROOT


def _start(tmp_path, *flags: str) -> tuple[subprocess.Popen, object]:
    log = tmp_path / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubekv_server", "--data-dir", str(tmp_path / "d"), *flags],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return proc, log


def _wait_for(log, pattern: str, timeout: float = 30.0) -> re.Match:
    """The first match of `pattern` in the server's log, once it is there."""
    return wait_for(lambda: re.search(pattern, log.read_text(errors="replace")), timeout,
                    f"{pattern!r} in {log}")


def test_port_0_listens_on_a_free_port_and_unix_peers_work(tmp_path):
    proc, log = _start(
        tmp_path, "--name", "u1",
        "--listen-client-urls", "http://127.0.0.1:0",
        "--advertise-client-urls", "http://127.0.0.1:0",
        "--listen-peer-urls", "unix://peer.sock:1",
        "--initial-advertise-peer-urls", "unix://peer.sock:1",
        "--initial-cluster", "u1=unix://peer.sock:1")
    try:
        port = int(_wait_for(log, r"serving_client_requests address=127\.0\.0\.1:(\d+)")[1])
        assert port != 0
        _wait_for(log, r"enabled capabilities for version")
        assert (tmp_path / "peer.sock:1").exists()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            r = rpc_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10)
            assert r.header.revision == 2
    finally:
        proc.terminate()
        proc.wait(15)
