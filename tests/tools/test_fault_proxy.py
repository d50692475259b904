"""The fault proxy, between plain TCP echo servers (no kubekv needed)."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time

import pytest

from kubekv_testing.fault_proxy import FaultNetwork
from kubekv_testing.polling import wait_for


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Echo)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def echo():
    servers = []

    def make():
        servers.append(EchoServer())
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def net():
    with FaultNetwork(seed=1) as n:
        yield n


def connect(port, timeout=2.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def roundtrip(sock, data=b"ping"):
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got


def works(port, timeout=1.0) -> bool:
    """A fresh connection through the port echoes."""
    try:
        with connect(port, timeout) as s:
            return roundtrip(s) == b"ping"
    except OSError:
        return False


def is_dead(sock, timeout=2.0) -> bool:
    """The connection was closed or reset by the proxy."""
    sock.settimeout(timeout)
    try:
        sock.sendall(b"x")
        return sock.recv(10) == b""
    except (ConnectionError, OSError) as exc:
        return not isinstance(exc, TimeoutError)




def test_forwards_both_ways_and_counts(net, echo):
    link = net.add_link("a", "b", echo().port)
    with connect(link.port) as s:
        assert roundtrip(s, b"hello" * 1000) == b"hello" * 1000
        wait_for(lambda: link.connections == 1, 3.0, "one proxied connection", interval=0.02)
    assert link.bytes_forwarded["up"] == 5000
    wait_for(lambda: link.connections == 0, 3.0, "no proxied connection", interval=0.02)
    assert link.accepted == 1


def test_cut_resets_existing_and_refuses_new_until_healed(net, echo):
    link = net.add_link("a", "b", echo().port)
    s = connect(link.port)
    assert roundtrip(s) == b"ping"
    link.cut()
    assert is_dead(s)
    s.close()
    assert not works(link.port)
    assert link.state == "reset"
    link.heal()
    assert works(link.port)


def test_blackhole_stalls_and_heal_delivers_what_was_buffered(net, echo):
    link = net.add_link("a", "b", echo().port)
    s = connect(link.port)
    assert roundtrip(s) == b"ping"
    link.cut("blackhole")
    s.sendall(b"late")
    s.settimeout(0.3)
    with pytest.raises(TimeoutError):
        s.recv(10)
    # a new connection is accepted but goes nowhere
    t = connect(link.port)
    t.sendall(b"held")
    t.settimeout(0.3)
    with pytest.raises(TimeoutError):
        t.recv(10)
    link.heal()
    s.settimeout(2)
    t.settimeout(2)
    assert s.recv(10) == b"late"
    assert t.recv(10) == b"held"
    s.close()
    t.close()


def test_delay_adds_latency_without_limiting_throughput(net, echo):
    link = net.add_link("a", "b", echo().port)
    link.delay(0.3)
    with connect(link.port) as s:
        t0 = time.monotonic()
        assert roundtrip(s) == b"ping"
        assert 0.28 <= time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        for i in range(10):  # pipelined: all arrive ~0.3 s later, not 3 s
            s.sendall(b"m%d;" % i)
            time.sleep(0.01)
        want = b"".join(b"m%d;" % i for i in range(10))
        got = b""
        while len(got) < len(want):
            got += s.recv(100)
        assert got == want  # in order
        assert time.monotonic() - t0 < 0.8
        link.delay(0)
        t0 = time.monotonic()
        roundtrip(s)
        assert time.monotonic() - t0 < 0.2


def test_drop_probability(net, echo):
    link = net.add_link("a", "b", echo().port)
    link.drop_probability(1.0)
    assert not works(link.port)
    link.drop_probability(0.0)
    s = connect(link.port)
    assert roundtrip(s) == b"ping"
    link.drop_probability(1.0)  # the next chunk kills the live connection
    assert is_dead(s)
    s.close()
    link.drop_probability(0.3)
    results = [works(link.port) for _ in range(40)]
    assert 3 <= sum(results) <= 37
    with pytest.raises(ValueError):
        link.drop_probability(2)


def test_only_loopback_and_dial_map(net, echo):
    ports = {m: echo().port for m in "abc"}
    net.add_cluster(ports)
    assert len(net.links) == 6
    dm = net.dial_map("a")
    assert set(dm) == {"b", "c"}
    assert all(addr.startswith("127.0.0.1:") for addr in dm.values())
    assert net.link("a", "b").target_port == ports["b"]
    assert net.link("a", "b").url == "http://" + dm["b"]


def _matrix(net):
    return {(link.src, link.dst): works(link.port, 0.5) for link in net.links}


def test_isolate(net, echo):
    net.add_cluster({m: echo().port for m in "abc"})
    net.isolate("a")
    m = _matrix(net)
    assert m == {("a", "b"): False, ("a", "c"): False, ("b", "a"): False,
                 ("c", "a"): False, ("b", "c"): True, ("c", "b"): True}
    net.heal_all()
    assert all(_matrix(net).values())


def test_split(net, echo):
    net.add_cluster({m: echo().port for m in "abcd"})
    net.split(["a", "b"], ["c", "d"])
    for (src, dst), ok in _matrix(net).items():
        assert ok == ((src in "ab") == (dst in "ab")), (src, dst)
    with pytest.raises(ValueError):
        net.split(["a"], ["b"])  # c and d in no group


def test_asymmetric(net, echo):
    net.add_cluster({m: echo().port for m in "abc"})
    net.asymmetric("a", "b")
    m = _matrix(net)
    assert m[("a", "b")] and not m[("b", "a")]
    assert m[("a", "c")] and m[("c", "a")] and m[("b", "c")] and m[("c", "b")]


def test_bridge(net, echo):
    net.add_cluster({m: echo().port for m in "abc"})
    net.bridge(["a"], "b", ["c"])
    m = _matrix(net)
    assert not m[("a", "c")] and not m[("c", "a")]
    assert m[("a", "b")] and m[("b", "a")] and m[("c", "b")] and m[("b", "c")]


def test_cut_with_many_live_connections_and_close(echo):
    port = echo().port
    net = FaultNetwork()
    link = net.add_link("a", "b", port)
    socks = [connect(link.port) for _ in range(20)]
    for s in socks:
        assert roundtrip(s) == b"ping"
    wait_for(lambda: link.connections == 20, 3.0, "20 proxied connections", interval=0.02)
    link.cut()
    assert link.connections == 0
    assert all(is_dead(s) for s in socks)
    for s in socks:
        s.close()
    net.close()
    with contextlib.suppress(OSError), connect(link.port, 0.5):
        pytest.fail("the proxy still listens after close()")
