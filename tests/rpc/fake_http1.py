"""Trivial handlers for driving rpc.http1's Http1Handler without sockets, over
`FakeTransport`."""

from __future__ import annotations

import asyncio

from kubekv_server.rpc.http1 import Http1Handler

from .fake_transport import FakeTransport

# loop turns a test waits for the handler to finish before calling it stuck
MAX_TURNS = 1000


class Server:
    def __init__(self, handler) -> None:
        self.http_handler = handler
        self.calls: list[tuple] = []


def echo_server() -> Server:
    """A handler that answers `<method> <target> <len(body)> <body error or ->`."""
    server = Server(None)

    async def handler(method, target, headers, body):
        server.calls.append((method, target, headers, body))
        err = getattr(body, "error", "-")
        text = f"{method} {target} {len(body)} {err}".encode()
        return 200, "text/plain; charset=utf-8", text

    server.http_handler = handler
    return server


async def settle(h: Http1Handler) -> None:
    """Let the handler's task (and a stream) run to completion."""
    for _ in range(MAX_TURNS):
        if not h._busy:
            return
        await asyncio.sleep(0)
    raise AssertionError("handler still busy")


async def drive(chunks, server=None, mux=False, eof=False, peer=("192.0.2.7", 4242)):
    """Feed chunks to a new Http1Handler (letting each answer finish); returns
    (transport, handler, server)."""
    server = server or echo_server()
    t = FakeTransport(peer)
    h = Http1Handler(server, t, mux_first_line=mux)
    for chunk in chunks:
        if t.closed:
            break
        h.data_received(chunk)
        await settle(h)
    if eof and not t.closed:
        if not h.eof_received():
            t.close()
        await settle(h)
    h.connection_lost()
    return t, h, server


def run(chunks, **kw):
    return asyncio.run(drive(chunks, **kw))
