"""etcd's health endpoints on real processes: /health side by side with etcd 3.5.1, and
/livez, /readyz as etcd 3.5.17's source answers them (etcd 3.5.1 has neither).

Compared where a client can see it: status, Content-Type and body, on the client port
and on --listen-metrics-urls; with no alarm, with a NOSPACE alarm (a small
--quota-backend-bytes, filled) and with no leader (2 of 3 members stopped).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.http.health import HealthEndpoints
from kubekv_testing.polling import wait_for
from kubekv_testing.raw_socket import read_to_close
from tests.harness import (
    ROOT,
    ServerProcess,
    etcd_binary,
    etcd_process,
    free_port,
    kubekv_process,
    running,
)

TEXT = "text/plain; charset=utf-8"
HEALTHY = b'{"health":"true"}'


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def seen(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """What a client compares: status, content type, body. A /health body is compared
    without etcd 3.5's "reason" field: kubekv keeps 3.4's body, which etcd's e2e suite
    checks (TestCtlV3Alarm looks for `{"health":"false"}`)."""
    status, ctype, body = get(port, path, method)[:3]
    return status, ctype, _REASON.sub(b"", body)


_REASON = re.compile(rb',"reason":"[^"]*"(?=\})')


def with_metrics(proc: ServerProcess) -> int:
    port = free_port()
    proc.argv += ["--listen-metrics-urls", f"http://127.0.0.1:{port}"]
    return port


HEALTH_PATHS = ["/health", "/health?serializable=true", "/health?serializable=false",
                "/health?exclude=NOSPACE", "/health?exclude=CORRUPT", "/health?exclude=",
                "/health?exclude=NOSPACE&exclude=CORRUPT&serializable=true"]


def fill(proc: ServerProcess) -> None:
    """Puts until the quota refuses one: the NOSPACE alarm is then raised."""
    value = b"x" * 8000
    with pytest.raises(grpc.RpcError) as err:
        for i in range(1000):
            proc.kv.Put(pb.PutRequest(key=b"k%d" % i, value=value), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_answers_as_etcd_with_and_without_nospace(tmp_path):
    kubekv = kubekv_process(tmp_path, "--quota-backend-bytes", "200000")
    etcd = etcd_process(tmp_path, "--quota-backend-bytes", "200000")
    k_metrics, e_metrics = with_metrics(kubekv), with_metrics(etcd)
    with running(kubekv), running(etcd):
        for k_port, e_port in ((kubekv.port, etcd.port), (k_metrics, e_metrics)):
            for path in HEALTH_PATHS:
                assert seen(k_port, path) == seen(e_port, path), path
            assert seen(k_port, "/health") == (200, TEXT, HEALTHY)
            assert seen(k_port, "/health", "POST") == seen(e_port, "/health", "POST") == (
                405, TEXT, b"Method Not Allowed\n")
            assert get(k_port, "/health", "POST")[3]["Allow"] == "GET"
        # etcd's metrics listener is a bare mux: no CORS headers there
        assert not any(h.startswith("Access-Control") for h in get(k_metrics, "/health")[3])
        assert get(kubekv.port, "/health")[3]["Access-Control-Allow-Origin"] == "*"

        fill(kubekv)
        fill(etcd)
        for k_port, e_port in ((kubekv.port, etcd.port), (k_metrics, e_metrics)):
            for path in HEALTH_PATHS:
                assert seen(k_port, path) == seen(e_port, path), path
            assert seen(k_port, "/health") == (
                503, TEXT, b'{"health":"false"}\n')
            assert seen(k_port, "/health?exclude=NOSPACE") == (200, TEXT, HEALTHY)
            # NOSPACE is no data corruption: etcd's probes stay green
            assert seen(k_port, "/livez") == seen(k_port, "/readyz") == (200, TEXT, b"ok\n")


def test_livez_and_readyz_as_etcd_3_5_17(tmp_path):
    proc = kubekv_process(tmp_path)
    metrics = with_metrics(proc)
    with running(proc):
        for port in (proc.port, metrics):
            assert seen(port, "/livez") == seen(port, "/readyz") == (200, TEXT, b"ok\n")
            assert get(port, "/readyz")[3]["X-Content-Type-Options"] == "nosniff"
            assert seen(port, "/livez?verbose") == (
                200, TEXT, b"[+]serializable_read ok\nok\n")
            assert seen(port, "/readyz?verbose=false") == (200, TEXT, (
                b"[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n"
                b"ok\n"))
            # excluded checks are skipped; a name of no check is ignored
            assert seen(port, "/readyz?verbose&exclude=linearizable_read&exclude=nosuch") == (
                200, TEXT, b"[+]data_corruption ok\n[+]serializable_read ok\nok\n")
            assert seen(port, "/livez?exclude=serializable_read&verbose") == (200, TEXT, b"ok\n")
            # every check has a path of its own, where exclude does not apply
            for path in ("/livez/serializable_read", "/readyz/data_corruption",
                         "/readyz/serializable_read", "/readyz/linearizable_read"):
                name = path.rsplit("/", 1)[1].encode()
                assert seen(port, path + "?verbose&exclude=" + name.decode()) == (
                    200, TEXT, b"[+]" + name + b" ok\nok\n")
            for path in ("/livez/", "/readyz/nosuch", "/livez/linearizable_read", "/livez/x/y"):
                assert seen(port, path) == (404, TEXT, b"404 page not found\n"), path
            assert seen(port, "/readyz", "POST") == (405, TEXT, b"Method Not Allowed\n")
    # etcd 3.5.1 has neither endpoint: the paths kubekv adds are new ones, not changed ones
    with running(etcd_process(tmp_path)) as etcd:
        assert seen(etcd.port, "/livez")[0] == seen(etcd.port, "/readyz")[0] == 404


# --------------------------------------------------------------------- no leader


def three(system: str, tmp: pathlib.Path) -> list[ServerProcess]:
    """Three members of a new cluster (not started), etcd's or kubekv's."""
    names = ["a", "b", "c"]
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    initial = ",".join(f"{n}={u}" for n, u in peers.items())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    out = []
    for n in names:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        exe = [etcd_binary()] if system == "etcd" else [sys.executable, "-m", "kubekv_server"]
        argv = [*exe, "--name", n, "--data-dir", str(tmp / f"{system}-{n}"),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", peers[n], "--initial-advertise-peer-urls", peers[n],
                "--initial-cluster", initial, "--initial-cluster-token", f"health-{system}"]
        out.append(ServerProcess(argv, tmp / f"{system}-{n}", port, tmp / f"{system}-{n}.log",
                                 env))
    return out


def launch(members: list[ServerProcess]) -> None:
    for m in members:
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(m.argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=m.env)
    for m in members:
        m.wait_ready(60)


@pytest.mark.parametrize("system", ["kubekv", "etcd"])
def test_health_without_a_leader(tmp_path, system):
    """Two of three members stopped: the survivor's /health says "RAFT NO LEADER" (etcd
    3.5.1's exact answer, checked on both); kubekv's ?serializable=true stays healthy."""
    members = three(system, tmp_path)
    try:
        launch(members)
        survivor = members[0]
        assert seen(survivor.port, "/health") == (200, TEXT, HEALTHY)
        for m in members[1:]:
            m.stop(signal.SIGKILL)
        no_leader = (503, TEXT, b'{"health":"false"}\n')
        wait_for(lambda: seen(survivor.port, "/health") == no_leader, 30, "RAFT NO LEADER")
        if system == "kubekv":  # etcd 3.5.1 has no ?serializable, /livez, /readyz
            # etcd ≥ 3.5.3 skips the leader check and reads locally with ?serializable=true
            assert seen(survivor.port, "/health?serializable=true") == (200, TEXT, HEALTHY)
            assert seen(survivor.port, "/livez") == (200, TEXT, b"ok\n")
            # etcd's read-index loop gives up after its request timeout (7 s)
            assert seen(survivor.port, "/readyz?exclude=linearizable_read") == (
                200, TEXT, b"ok\n")
            assert seen(survivor.port, "/readyz") == (503, TEXT, (
                b"[+]data_corruption ok\n[+]serializable_read ok\n"
                b"[-]linearizable_read failed: etcdserver: request timed out\n\n"))
    finally:
        for m in members:
            m.stop()


# ------------------------------------------------------- in-process: a CORRUPT alarm


class _Node:
    leader_id = 1


class _Member:
    """Just what the health checks read: alarms, the leader, reads."""

    def __init__(self, alarms: list[int]) -> None:
        self._alarms = alarms
        self.node = _Node()

    def alarms(self) -> list[pb.AlarmMember]:
        return [pb.AlarmMember(memberID=1, alarm=a) for a in self._alarms]

    def read_barrier(self):
        return None

    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        return pb.RangeResponse()


def test_corrupt_alarm_fails_readyz_and_health_not_livez():
    asyncio.run(_corrupt_alarm())


async def _corrupt_alarm() -> None:
    h = HealthEndpoints(_Member([pb.CORRUPT, pb.NOSPACE]), 7.0)
    assert (await h.answer("GET", "/health"))[2] == (
        b'{"health":"false"}\n')
    assert (await h.answer("GET", "/health?exclude=CORRUPT"))[2] == (
        b'{"health":"false"}\n')
    assert (await h.answer("GET", "/health?exclude=CORRUPT&exclude=NOSPACE"))[:3] == (
        200, TEXT, HEALTHY)
    assert (await h.answer("GET", "/readyz"))[:3] == (503, TEXT, (
        b"[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n"
        b"[+]linearizable_read ok\n\n"))
    assert (await h.answer("GET", "/readyz?exclude=data_corruption"))[:3] == (
        200, TEXT, b"ok\n")
    assert (await h.answer("GET", "/livez"))[:3] == (200, TEXT, b"ok\n")
    assert await h.answer("GET", "/version") is None


def test_health_json_escapes_as_go():
    from kubekv_server.http.health import go_json
    assert go_json({"health": "false", "reason": "a<b>&\u2028é"}) == (
        '{"health":"false","reason":"a\\u003cb\\u003e\\u0026\\u2028é"}'.encode())
    assert json.loads(go_json({"reason": "x"})) == {"reason": "x"}


@pytest.mark.parametrize("system", ["kubekv", "etcd"])
def test_start_order_metrics_listener_first_clients_once_ready(tmp_path, system):
    """etcd's start order, seen from outside: the metrics listener answers while the
    member still waits for a quorum ("RAFT NO LEADER"); the client port already accepts
    connections then, and answers a request that waited there once the member is ready."""
    members = three(system, tmp_path)
    metrics = with_metrics(members[0])
    first, others = members[0], members[1:]
    try:
        with open(first.log_path, "ab") as log:
            first.proc = subprocess.Popen(first.argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=first.env)
        no_leader = (503, TEXT, b'{"health":"false"}\n')
        wait_for(lambda: seen(metrics, "/health") == no_leader, 60, "the metrics listener")
        if system == "kubekv":
            assert seen(metrics, "/livez") == (200, TEXT, b"ok\n")
        early = socket.create_connection(("127.0.0.1", first.port), timeout=60)
        early.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        launch(others)
        with early:
            answer = read_to_close(early)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        assert _REASON.sub(b"", answer).endswith(HEALTHY), answer
    finally:
        for m in members:
            m.stop()


def test_health_endpoints_over_http2_with_tls(tmp_path):
    """curl on an https client URL speaks HTTP/2: the same answers reach it."""
    from tests.server.test_gateway import _h2_post, auto_tls_process

    proc = auto_tls_process(tmp_path)
    with running(proc):
        for path, body in (("/health", HEALTHY), ("/livez", b"ok\n"),
                           ("/readyz?verbose", b"[+]data_corruption ok\n[+]serializable_read ok"
                                               b"\n[+]linearizable_read ok\nok\n")):
            status, headers, got = _h2_post(proc.port, path, b"", method="GET")
            assert (status, headers["content-type"], got) == (200, TEXT, body), path
        status, headers, got = _h2_post(proc.port, "/livez", b"{}")
        assert (status, headers["allow"], got) == (405, "GET", b"Method Not Allowed\n")
