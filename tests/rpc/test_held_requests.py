"""Client-streaming calls whose requests stay counted against the connection window until
the handler takes them (`Method.hold_requests`, the peer port's calls): a handler slower
than its sender holds at most a window of requests, and the window comes back as the
handler reads. Over a fake socket, with `h2` as the client."""

from __future__ import annotations

import asyncio

import pytest

from etcdproto.raftpb import peer_pb2 as peer_pb
from kubekv_server.rpc import frames as f
from kubekv_server.rpc.calls import Method
from kubekv_server.rpc.connection import Http2Connection
from kubekv_server.rpc.server import RpcServer

from .h2_client import open_grpc_call, parse_frames

PATH = b"/raftpb.RaftPeer/SendSnapshot"
CHUNK = 256 << 10  # one request message's data
CHUNKS = 24  # 6 MiB: more than a quarter of the connection window (when it is given back)


def run(loop) -> None:
    """Let the loop run what is ready until nothing is left."""
    for _ in range(10_000):
        loop.run_until_complete(asyncio.sleep(0))
        if not loop._ready:  # noqa: SLF001 - nothing scheduled: the passes are done
            return


class Handler:
    """Reads one request, then waits for `more` before reading the rest."""

    def __init__(self) -> None:
        self.more = asyncio.Event()
        self.sizes: list[int] = []

    async def __call__(self, requests, context):
        async for item in requests:  # (request, size) pairs when held
            self.sizes.append(item[1] if isinstance(item, tuple) else item.ByteSize())
            if len(self.sizes) == 1:
                await self.more.wait()
        return peer_pb.SnapshotAck(size=sum(self.sizes))


def connection_window_updates(out: bytes) -> int:
    """Bytes the server gave back to the connection window (WINDOW_UPDATE on stream 0)."""
    return sum(int.from_bytes(p, "big") for t, _, sid, p in parse_frames(out)
               if t == f.WINDOW_UPDATE and sid == 0)


def send_chunks(loop, conn, transport, c, sid) -> int:
    """Send CHUNKS messages as the client's windows allow; the connection window given
    back while they were sent."""
    msg = peer_pb.SnapshotChunk(data=b"x" * CHUNK).SerializeToString()
    data = b"\x00" + len(msg).to_bytes(4, "big") + msg
    pending = data * CHUNKS
    given = 0
    while pending:
        room = min(c.local_flow_control_window(sid), c.max_outbound_frame_size, len(pending))
        assert room > 0, "the client ran out of window"
        c.send_data(sid, pending[:room])
        pending = pending[room:]
        conn.data_received(c.data_to_send())
        run(loop)
        out = transport.take()
        given += connection_window_updates(out)
        c.receive_data(out)
    return given


@pytest.mark.parametrize("hold", [True, False])
def test_held_requests_keep_their_window_until_the_handler_reads_them(loop, hold):
    async def setup():
        return RpcServer(asyncio.get_running_loop(), max_receive_bytes=2 << 20)

    server = loop.run_until_complete(setup())
    handler = Handler()
    method = Method.of(PATH, peer_pb.SnapshotChunk, True, False, handler.__call__)
    method.hold_requests = hold
    server.methods[PATH] = method
    conn = Http2Connection(server)
    transport, c, sid = open_grpc_call(conn, PATH)
    run(loop)
    preface = transport.take()
    c.receive_data(preface)
    first = connection_window_updates(preface)  # the window the preface opens
    given = send_chunks(loop, conn, transport, c, sid)
    assert len(handler.sizes) == 1 and handler.sizes[0] > CHUNK
    held = conn._buffered_requests  # noqa: SLF001 - what the connection counts as held
    if hold:
        # every unread message is held: none of its window came back
        assert given == 0 and held >= (CHUNKS - 1) * CHUNK
    else:
        assert given > 0 and held == 0  # queued for the handler, window already given back
    handler.more.set()
    run(loop)
    assert len(handler.sizes) == CHUNKS
    assert conn._buffered_requests == 0  # noqa: SLF001
    if hold:  # read now: the window comes back (in quarters)
        assert connection_window_updates(transport.take()) > 0
    assert first > 0
    conn.connection_lost(None)
    run(loop)
    server.executor.shutdown(wait=False)
