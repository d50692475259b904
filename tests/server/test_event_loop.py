"""The server runs on uvloop where it is installed and on asyncio's loop where it is not,
and what differs between the two loops at our listeners behaves the same on both."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

import pytest
import uvloop

from kubekv_server import event_loop
from kubekv_server.rpc.server import RpcServer


async def _loop_class() -> type:
    return type(asyncio.get_running_loop())


def test_runs_on_uvloop_when_installed(caplog):
    with caplog.at_level(logging.INFO, logger="kubekv.event_loop"):
        assert issubclass(event_loop.run(_loop_class()), uvloop.Loop)
    assert not caplog.records


def test_falls_back_to_asyncio_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    with caplog.at_level(logging.INFO, logger="kubekv.event_loop"):
        cls = event_loop.run(_loop_class())
    assert not issubclass(cls, uvloop.Loop) and issubclass(cls, asyncio.BaseEventLoop)
    assert [r.getMessage().split(" msg=")[0] for r in caplog.records] == [
        "event=event_loop loop=asyncio"]


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_a_listener_not_yet_serving_queues_connections(loop_factory):
    """etcd listens before it serves: a client connects (into the backlog) before the
    listener serves, and is served once it does."""

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        rpc = RpcServer(loop, max_receive_bytes=1 << 20)
        server = await rpc.listen("127.0.0.1", 0, start_serving=False)
        client = socket.socket()
        client.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(client, ("127.0.0.1", rpc.bound_port())), 5)
        await server.start_serving()
        await loop.sock_sendall(client, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        settings = await asyncio.wait_for(loop.sock_recv(client, 9), 5)
        client.close()
        await rpc.close(grace=0)
        return settings

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(scenario())[3] == 0x4  # the server's SETTINGS frame
