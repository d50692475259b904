"""The connection glue (rpc/connection.py) over a fake socket, with `h2` as the client:
calls are served, one connection cannot hold the loop or our memory, and violations
end in protocol errors without a traceback."""

from __future__ import annotations

import asyncio
import logging
import time

import h2.config
import h2.connection
import h2.events
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.rpc import frames as f
from kubekv_server.rpc import grpc_messages, limits
from kubekv_server.rpc.calls import Method, inline
from kubekv_server.rpc.connection import Http2Connection
from kubekv_server.rpc.server import RpcServer

from .fake_transport import FakeTransport
from .h2_client import REQUEST, goaway_code, parse_frames

RANGE = b"/etcdserverpb.KV/Range"


@inline
def range_handler(req, ctx):
    return pb.RangeResponse(count=len(req.key))


@pytest.fixture
def server(loop):
    srv = RpcServer(loop, max_receive_bytes=2 << 20)
    srv.methods[RANGE] = Method.of(RANGE, pb.RangeRequest, False, False, range_handler)
    yield srv
    srv.executor.shutdown(wait=False)


def connect(server, transport: FakeTransport | None = None
            ) -> tuple[Http2Connection, FakeTransport]:
    conn = Http2Connection(server)
    transport = transport or FakeTransport()
    conn.connection_made(transport)
    return conn, transport


def grpc_headers(path) -> list[tuple]:
    """A gRPC call's request headers for `path`."""
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x"),
            ("content-type", "application/grpc")]


def run(loop) -> None:
    """Let the loop run what is ready (call_soon passes) until nothing is left."""
    for _ in range(10_000):
        loop.run_until_complete(asyncio.sleep(0))
        if not loop._ready:  # noqa: SLF001 - nothing scheduled: the passes are done
            return


def client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                             header_encoding=None))
    c.initiate_connection()
    return c


def grpc_message(msg) -> bytes:
    data = msg.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def test_unary_call_is_answered(loop, server):
    conn, transport = connect(server)
    c = client()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, grpc_headers(RANGE))
    c.send_data(sid, grpc_message(pb.RangeRequest(key=b"abc")), end_stream=True)
    conn.data_received(c.data_to_send())
    run(loop)
    events = c.receive_data(transport.take())
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert pb.RangeResponse.FromString(data[5:]).count == 3
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert (b"grpc-status", b"0") in trailers.headers


def test_a_burst_is_handled_in_bounded_passes_with_reading_paused(loop, server):
    conn, transport = connect(server)
    conn.data_received(f.PREFACE + f.settings({}))
    transport.take()
    conn.data_received(f.frame(f.PING, 0, 0, b"12345678") * 2000)
    # the first pass answered at most MAX_FRAMES_PER_PASS frames and stopped reading
    assert len(parse_frames(transport.take())) <= limits.MAX_FRAMES_PER_PASS
    assert not transport.reading
    run(loop)
    assert transport.reading
    assert len(parse_frames(transport.take())) >= 2000 - limits.MAX_FRAMES_PER_PASS


def test_a_client_that_does_not_read_stops_our_reading(loop, server):
    conn, transport = connect(server)
    conn.data_received(f.PREFACE + f.settings({}))
    conn.pause_writing()
    assert not transport.reading
    conn.resume_writing()
    assert transport.reading


def test_control_frames_to_a_client_that_does_not_read_end_the_connection(loop, server):
    conn, transport = connect(server)
    transport.buffer_size = 1  # the socket never drains
    conn.data_received(f.PREFACE + f.settings({}))
    ping = f.frame(f.PING, 0, 0, b"12345678")
    for _ in range(limits.MAX_QUEUED_CONTROL_FRAMES // 1000 + 1):
        conn.data_received(ping * 1000)
        run(loop)
    assert goaway_code(parse_frames(transport.take())) == f.ENHANCE_YOUR_CALM
    assert transport.closed


class WritesCounted(FakeTransport):
    """A FakeTransport that keeps each write apart, with when it was made (the event
    loop's clock, `time.monotonic`)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.times: list[float] = []

    def write(self, data) -> None:
        super().write(data)
        self.writes.append(bytes(data))
        self.times.append(time.monotonic())


def held_call(loop, server) -> tuple[Http2Connection, WritesCounted, asyncio.Future, bytes]:
    """A connection whose client opened a call the server answers only when the returned
    future is resolved; returns the bytes of the call (its HEADERS and DATA) unsent."""
    answer = loop.create_future()
    slow = b"/etcdserverpb.KV/Put"

    async def put_handler(req, ctx):
        await answer
        return pb.PutResponse()

    server.methods[slow] = Method.of(slow, pb.PutRequest, False, False, put_handler)
    conn, transport = connect(server, WritesCounted())
    conn.data_received(f.PREFACE + f.settings({}))
    run(loop)
    transport.writes.clear()
    transport.times.clear()
    c = client()
    c.data_to_send()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, grpc_headers(slow))
    c.send_data(sid, grpc_message(pb.PutRequest(key=b"k")), end_stream=True)
    return conn, transport, answer, c.data_to_send()


def ping_acks(data: bytes) -> int:
    return sum(1 for t, fl, _, _ in parse_frames(data) if t == f.PING and fl & f.ACK)


def test_a_ping_with_a_request_is_acked_in_the_answers_write(loop, server, monkeypatch):
    # grpc-go sends a BDP PING with its next request after each answer: the ACK waits
    # for that request's answer and leaves in the same socket write. (The delay is made
    # longer than any pass of a loaded test machine: only the answer may release it.)
    monkeypatch.setattr(limits, "PING_ACK_DELAY", 60.0)
    conn, transport, answer, request = held_call(loop, server)
    conn.data_received(request + f.frame(f.PING, 0, 0, b"bdp-ping"))
    run(loop)
    assert transport.writes == []
    answer.set_result(None)
    run(loop)
    assert len(transport.writes) == 1
    frames = parse_frames(transport.writes[0])
    assert ping_acks(transport.writes[0]) == 1
    assert any(t == f.HEADERS for t, _, _, _ in frames)  # the answer


def test_a_held_ping_ack_is_written_once_its_delay_is_over(loop, server):
    conn, transport, answer, request = held_call(loop, server)
    received = time.monotonic()
    conn.data_received(request + f.frame(f.PING, 0, 0, b"bdp-ping"))
    # the ACK's timer is due before this sleep's (timers run in deadline order)
    loop.run_until_complete(asyncio.sleep(limits.PING_ACK_DELAY * 3))
    assert [ping_acks(w) for w in transport.writes] == [1]  # alone: no answer yet
    # not at once: the loop's timers run no earlier than its clock resolution allows
    assert transport.times[0] - received >= limits.PING_ACK_DELAY - 1e-4
    answer.set_result(None)
    run(loop)


def test_a_ping_without_an_open_call_is_acked_at_once(loop, server):
    conn, transport = connect(server)
    conn.data_received(f.PREFACE + f.settings({}))
    transport.take()
    conn.data_received(f.frame(f.PING, 0, 0, b"keepaliv"))
    assert ping_acks(transport.take()) == 1


def test_pings_beyond_one_are_acked_at_once_even_with_a_call_open(loop, server):
    conn, transport, answer, request = held_call(loop, server)
    conn.data_received(request + f.frame(f.PING, 0, 0, b"ping-one") +
                       f.frame(f.PING, 0, 0, b"ping-two"))
    assert sum(ping_acks(w) for w in transport.writes) == 2
    answer.set_result(None)
    run(loop)


def test_unknown_method_message_is_bounded(loop, server):
    conn, transport = connect(server)
    c = client()
    sid = c.get_next_available_stream_id()
    path = "/etcdserverpb.KV/" + "X" * 20_000
    c.send_headers(sid, grpc_headers(path), end_stream=True)
    conn.data_received(c.data_to_send())
    run(loop)
    events = c.receive_data(transport.take())
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    fields = dict(response.headers)
    assert fields[b"grpc-status"] == b"12"
    assert len(fields[b"grpc-message"]) <= grpc_messages.MAX_ECHOED_NAME + 100


def test_partial_bodies_run_out_of_connection_window(loop, server):
    """Request bytes a connection's calls hold incomplete are bounded by the connection
    window, which is given back only for what calls consumed."""
    conn, transport = connect(server)
    c = client()
    conn.data_received(c.data_to_send())
    c.receive_data(transport.take())  # our SETTINGS and connection window
    window = c.outbound_flow_control_window
    announced = (2 << 20) - 100
    streams = []
    while c.outbound_flow_control_window > 0:
        sid = c.get_next_available_stream_id()
        streams.append(sid)
        c.send_headers(sid, grpc_headers(RANGE))
        body = b"\x00" + announced.to_bytes(4, "big") + b"p" * (announced - 1)  # one short
        pos = 0
        while pos < len(body) and c.local_flow_control_window(sid) > 0:
            n = min(16_000, c.local_flow_control_window(sid), len(body) - pos)
            c.send_data(sid, body[pos:pos + n])
            pos += n
        conn.data_received(c.data_to_send())
        run(loop)
        c.receive_data(transport.take())
    held = sum(call.buffered for call in conn.calls.values())
    assert held == conn._buffered_requests <= window
    assert held > window - (16 << 10) * len(streams)  # the window is what stops the client
    assert c.outbound_flow_control_window == 0  # and no WINDOW_UPDATE gave it more
    # a reset stream's bytes were never consumed by a handler: they are given back
    for sid in streams[:3]:
        c.reset_stream(sid)
    conn.data_received(c.data_to_send())
    run(loop)
    c.receive_data(transport.take())
    assert c.outbound_flow_control_window > 0


def test_rapid_reset_ends_the_connection(loop, server):
    conn, transport = connect(server)
    c = client()
    sent = 0
    while sent <= limits.MAX_RESETS_PER_WINDOW:
        for _ in range(100):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, REQUEST)
            c.reset_stream(sid)
            sent += 1
        conn.data_received(c.data_to_send())
        run(loop)
        if transport.closed:
            break
    assert goaway_code(parse_frames(transport.take())) == f.ENHANCE_YOUR_CALM
    assert transport.closed


def test_protocol_error_is_one_log_line_without_traceback(loop, server, caplog):
    caplog.set_level(logging.INFO, logger="kubekv.rpc")
    for _ in range(5):
        conn, transport = connect(server)
        conn.data_received(f.PREFACE + f.settings({f.SETTINGS_MAX_FRAME_SIZE: 0}))
        assert goaway_code(parse_frames(transport.take())) == f.PROTOCOL_ERROR
        assert transport.closed
    lines = [r for r in caplog.records if "http2_protocol_error" in r.getMessage()]
    assert len(lines) <= 1  # rate-limited per client (the table may hold an earlier line)
    assert not any(r.exc_info for r in caplog.records)


def test_preface_timeout_closes_a_silent_connection(loop, server):
    server.preface_timeout = 0.05
    conn, transport = connect(server)
    conn.data_received(f.PREFACE[:10])
    loop.run_until_complete(asyncio.sleep(0.2))  # the timeout itself is what is tested
    assert transport.aborted


def test_established_connection_is_not_timed_out(loop, server):
    server.preface_timeout = 0.05
    conn, transport = connect(server)
    conn.data_received(f.PREFACE + f.settings({}))
    loop.run_until_complete(asyncio.sleep(0.2))
    assert not transport.closed
