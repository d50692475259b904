"""Raw TCP exchanges with a server on loopback, for tests that compare bytes on the wire
(HTTP/1.1 heads, chunked streams): send, then read until the server closes."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection (the socket's timeout
    bounds each read)."""
    got = bytearray()
    while chunk := sock.recv(65536):
        got += chunk
    return bytes(got)


def exchange(port: int, data: bytes, *, timeout: float, half_close: bool = False
             ) -> tuple[bytes, bool]:
    """Connect to 127.0.0.1:`port`, send `data` (then shut down our side if `half_close`)
    and read until the server closes; (bytes received, whether the server reset the
    connection instead of closing it)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        got = bytearray()
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            return bytes(got), True
        return bytes(got), False
