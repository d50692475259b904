"""SIGTERM with JSON-gateway watch streams open (HTTP/1.1 chunked `POST /v3/watch`, as
curl and Patroni's etcd3 client keep them): the stream ends with etcd's last error object
and the chunked terminator, byte for byte as etcd 3.5.1 ends it, never mid-chunk."""

from __future__ import annotations

import signal
import socket

import pytest

from kubekv_testing.raw_socket import read_to_close
from tests.harness import ServerProcess, etcd_process, kubekv_process

WATCH = b'{"create_request":{"key":"Zm9v"}}'
CREATED = b'"created":true}}\n\r\n'
# etcd 3.5.1's bytes after the last result, measured by SIGTERMing it with this client
ENDING = (b'79\r\n{"error":{"grpc_code":14,"http_code":503,"message":"error reading from '
          b'server: EOF","http_status":"Service Unavailable"}}\r\n0\r\n\r\n')


def open_watch(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(WATCH), WATCH))
    got = b""
    while CREATED not in got:
        data = sock.recv(65536)
        assert data, got
        got += data
    assert got.endswith(CREATED) and b"Transfer-Encoding: chunked" in got
    return sock


def rest(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    with sock:
        return read_to_close(sock)


@pytest.mark.parametrize("make", [kubekv_process, etcd_process], ids=["kubekv", "etcd"])
def test_sigterm_ends_watch_streams_as_etcd(tmp_path, make):
    proc: ServerProcess = make(tmp_path).start()
    try:
        streams = [open_watch(proc.port) for _ in range(2)]
        proc.proc.send_signal(signal.SIGTERM)
        assert [rest(s) for s in streams] == [ENDING, ENDING]
        proc.proc.wait(30)  # (etcd re-raises SIGTERM to exit; kubekv exits 0)
    finally:
        proc.stop()
