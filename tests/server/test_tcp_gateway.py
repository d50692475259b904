"""`kubekv gateway start`: etcd's TCP gateway: its flags, and etcdctl through it to a
server, past an endpoint that refuses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubekv_server.tcp_gateway import GatewayFlagError, parse_gateway_args
from kubekv_testing.polling import wait_for
from tests.harness import ROOT, etcdctl, free_port, kubekv_process, running


def test_flags_on_either_side_of_start():
    cfg = parse_gateway_args(["--endpoints=http://a:1,b:2", "start", "--retry-delay", "5s"])
    assert (cfg.endpoints, cfg.listen_addr, cfg.retry_delay) == (["a:1", "b:2"],
                                                                 "127.0.0.1:23790", 5.0)
    for bad in (["--endpoints=a:1"], ["start", "--nope=1"], ["start", "--retry-delay"],
                ["start", "--retry-delay", "soon"], ["start", "extra"]):
        with pytest.raises(GatewayFlagError):
            parse_gateway_args(bad)


def test_etcdctl_through_the_gateway(tmp_path):
    listen = f"127.0.0.1:{free_port()}"
    with running(kubekv_process(tmp_path)) as server:
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        log = tmp_path / "gateway.log"
        with open(log, "ab") as out:
            gw = subprocess.Popen(
                [sys.executable, "-m", "kubekv_server", "gateway",
                 f"--endpoints={dead},{server.endpoint}", "start", "--listen-addr", listen],
                stdout=out, stderr=subprocess.STDOUT,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        try:
            wait_for(lambda: "ready to proxy client requests" in log.read_text(), 20,
                     f"the gateway to be ready (log: {log})",
                     give_up=lambda: gw.poll() is not None and log.read_text())
            assert etcdctl(listen, "put", "foo", "bar").stdout.strip() == "OK"
            assert etcdctl(listen, "get", "foo").stdout.split() == ["foo", "bar"]
            assert etcdctl(server.endpoint, "get", "foo").stdout.split() == ["foo", "bar"]
        finally:
            gw.terminate()
            gw.wait(10)
