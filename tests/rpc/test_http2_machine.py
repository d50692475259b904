"""kubekv's HTTP/2 state machine (rpc/http2.py) driven in memory, with `h2` as the client.

Correct traffic: h2 must accept everything we send. Violations: each frame rule of
RFC 9113 §5.1, §6 and §8 gets the stream or connection error the RFC names.
"""

from __future__ import annotations

import struct

import h2.events
import h2.settings
import hpack
import pytest

from kubekv_server.rpc import frames as f
from kubekv_server.rpc import http2, limits

from .h2_client import (
    REQUEST,
    Pair,
    encode_headers,
    goaway_code,
    parse_frames,
    raw_server,
    rst_codes,
)


def kinds(events) -> list[type]:
    return [type(e) for e in events]


def respond(server, sid: int, body: bytes = b"hello") -> None:
    server.send_headers(sid, f.RESPONSE_HEADERS, end_stream=False)
    server.send_data(sid, body)
    server.send_trailers(sid, f.TRAILERS_OK)


# ------------------------------------------------------------------ correct traffic


def test_request_and_response_parse_in_h2():
    p = Pair()
    sid = p.request(end_stream=False)
    p.client.send_data(sid, b"\x00\x00\x00\x00\x03abc", end_stream=True)
    events = p.exchange()
    assert kinds(events) == [http2.RequestReceived, http2.DataReceived]
    assert dict(events[0].headers)[b":path"] == b"/etcdserverpb.KV/Range"
    assert events[1].data == b"\x00\x00\x00\x00\x03abc" and events[1].end_stream
    respond(p.server, sid)
    p.exchange()
    got = kinds(p.client_events)
    assert h2.events.ResponseReceived in got and h2.events.TrailersReceived in got
    assert h2.events.StreamEnded in got
    assert not any(isinstance(e, h2.events.ConnectionTerminated | h2.events.StreamReset)
                   for e in p.client_events)
    assert sid not in p.server.streams  # closed on both sides


def test_our_settings_are_what_h2_sees():
    p = Pair(max_streams=7)
    remote = p.client.remote_settings
    assert remote.max_concurrent_streams == 7
    assert remote.initial_window_size == limits.INITIAL_STREAM_WINDOW
    assert remote.max_frame_size == limits.MAX_FRAME_SIZE
    assert remote.max_header_list_size == limits.MAX_HEADER_LIST_SIZE
    assert p.client.inbound_flow_control_window == 65535  # h2 tracks our sends, not ours
    assert p.client.outbound_flow_control_window == limits.CONNECTION_WINDOW
    assert p.server.connection_window == limits.CONNECTION_WINDOW


def test_continuation_frames_are_joined():
    p = Pair()
    big = [*REQUEST, ("x-big", "v" * 40_000)]  # h2 splits it over CONTINUATION frames
    sid = p.request(headers=big)
    events = p.exchange()
    assert kinds(events) == [http2.RequestReceived]
    assert dict(events[0].headers)[b"x-big"] == b"v" * 40_000
    assert events[0].stream_id == sid and events[0].end_stream


def test_response_larger_than_peer_frame_size_is_split():
    p = Pair()
    sid = p.request()
    p.exchange()
    respond(p.server, sid, b"z" * 50_000)
    p.exchange()
    data = b"".join(e.data for e in p.client_events if isinstance(e, h2.events.DataReceived))
    assert data == b"z" * 50_000


def test_send_waits_for_window_and_reports_writable():
    p = Pair(h2_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    sid = p.request()
    p.exchange()
    p.server.send_headers(sid, f.RESPONSE_HEADERS, end_stream=False)
    p.server.send_data(sid, b"0123456789abcdef")
    p.server.send_trailers(sid, f.TRAILERS_OK)
    p.exchange()
    received = [e for e in p.client_events if isinstance(e, h2.events.DataReceived)]
    assert b"".join(e.data for e in received) == b"0123456789"
    assert p.server.pending_bytes(sid) == 6 and p.server.queued_bytes == 6
    p.client.increment_flow_control_window(100, stream_id=sid)
    p.exchange()
    received = [e for e in p.client_events if isinstance(e, h2.events.DataReceived)]
    assert b"".join(e.data for e in received) == b"0123456789abcdef"
    assert h2.events.StreamEnded in kinds(p.client_events)
    assert p.server.queued_bytes == 0


def test_streaming_sender_gets_writable_event():
    p = Pair(h2_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4})
    sid = p.request()
    p.exchange()
    p.server.send_headers(sid, f.RESPONSE_HEADERS, end_stream=False)
    p.server.send_data(sid, b"abcdefgh")
    p.exchange()
    assert p.server.unacknowledged_bytes(sid) == 8
    p.client.increment_flow_control_window(4, stream_id=sid)
    events = p.exchange()
    assert [e.stream_id for e in events if isinstance(e, http2.StreamWritable)] == [sid]


def test_max_concurrent_streams_refuses_the_next():
    server = http2.ServerConnection(2)
    server.initiate()
    enc = hpack.Encoder()
    data = f.PREFACE + f.settings({})
    for sid in (1, 3, 5):
        data += f.frame(f.HEADERS, f.END_HEADERS, sid, encode_headers(REQUEST, enc))
    server.receive_data(data)
    events = server.next_events()
    assert [e.stream_id for e in events] == [1, 3]
    assert rst_codes(parse_frames(server.data_to_send())) == {5: f.REFUSED_STREAM}


def test_client_reset_is_reported():
    p = Pair()
    sid = p.request(end_stream=False)
    p.exchange()
    p.client.reset_stream(sid, error_code=f.CANCEL)
    events = p.exchange()
    assert [(type(e), e.stream_id, e.error_code, e.remote) for e in events] == [
        (http2.StreamReset, sid, f.CANCEL, True)]
    assert sid not in p.server.streams


def test_answer_before_request_ends_resets_with_no_error_and_ignores_late_data():
    p = Pair()
    sid = p.request(end_stream=False)
    p.exchange()
    p.server.send_headers(sid, f.RESPONSE_HEADERS + f.trailers(8, "too big"), end_stream=True)
    frames = parse_frames(p.server.data_to_send())
    assert rst_codes(frames) == {sid: f.NO_ERROR}  # as grpc-go: trailers, then RST_STREAM
    events, out = p.raw(f.frame(f.DATA, 0, sid, b"late"))
    assert events == [] and out == []


def test_client_goaway_is_reported_and_later_streams_ignored():
    p = Pair()
    events, _ = p.raw(f.goaway(0, f.NO_ERROR))
    assert kinds(events) == [http2.GoAwayReceived]
    block = encode_headers(REQUEST)
    events, _ = p.raw(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, block))
    assert events == []


def test_priority_frames_and_unknown_types_are_ignored():
    server, _ = raw_server()
    events, out = [], []
    server.receive_data(f.frame(f.PRIORITY, 0, 3, struct.pack(">IB", 1, 16))
                        + f.frame(0xEE, 0, 0, b"whatever"))
    assert server.next_events() == [] and server.data_to_send() == b""
    del events, out


def test_trailers_end_the_request():
    p = Pair()
    sid = p.request(end_stream=False)
    p.client.send_data(sid, b"x")
    p.client.send_headers(sid, [("grpc-foo", "1")], end_stream=True)
    events = p.exchange()
    assert kinds(events) == [http2.RequestReceived, http2.DataReceived, http2.TrailersReceived]


def test_window_is_given_back_as_data_arrives():
    p = Pair()
    sid = p.request(end_stream=False)
    chunk = b"d" * 16_000
    for _ in range(140):  # 2.24 MB: past the stream refill threshold
        p.client.send_data(sid, chunk)
        p.exchange()
        p.client.acknowledge_received_data(0, sid)
    updates = [e for e in p.client_events if isinstance(e, h2.events.WindowUpdated)]
    assert any(u.stream_id == sid for u in updates)
    assert p.client.local_flow_control_window(sid) > 0


def test_passes_are_bounded_and_the_rest_waits():
    server, _ = raw_server()
    server.receive_data(f.frame(f.PING, 0, 0, b"12345678") * 1000)
    assert server.next_events(256) == []
    assert len(parse_frames(server.data_to_send())) == 256
    assert server.has_complete_frame()
    while server.has_complete_frame():
        server.next_events(256)
    assert len(parse_frames(server.data_to_send())) == 744


def test_header_bytes_per_pass_are_bounded():
    server, _ = raw_server()
    enc = hpack.Encoder()
    data = b""
    for i in range(40):
        block = encode_headers([*REQUEST, ("x-pad", "p" * 8000)], enc)
        data += f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 2 * i + 1, block)
    server.receive_data(data)
    first = server.next_events()
    assert 0 < len(first) < 40
    rest = []
    while server.has_complete_frame():
        rest += server.next_events()
    assert len(first) + len(rest) == 40


# ------------------------------------------------------------------ connection errors


def conn_error(data: bytes) -> int | None:
    server, _ = raw_server()
    events, frames = [], []
    server.receive_data(data)
    events = server.next_events()
    while server.has_complete_frame():
        events += server.next_events()
    frames = parse_frames(server.data_to_send())
    code = goaway_code(frames)
    if code is not None:
        assert isinstance(events[-1], http2.ConnectionTerminated)
        assert server.closed
        server.receive_data(f.frame(f.PING, 0, 0, b"12345678"))
        assert server.next_events() == [] and server.data_to_send() == b""
    return code


HEADERS_1 = f.frame(f.HEADERS, f.END_HEADERS, 1, encode_headers(REQUEST))


@pytest.mark.parametrize("data, code", [
    (f.frame(f.DATA, 0, 0, b"x"), f.PROTOCOL_ERROR),
    (f.frame(f.DATA, 0, 5, b"x"), f.PROTOCOL_ERROR),  # idle stream
    (f.frame(f.HEADERS, f.END_HEADERS, 0, b""), f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS, 2, encode_headers(REQUEST)), f.PROTOCOL_ERROR),
    (f.frame(f.RST_STREAM, 0, 0, b"\0\0\0\0"), f.PROTOCOL_ERROR),
    (f.frame(f.RST_STREAM, 0, 3, b"\0\0\0\0"), f.PROTOCOL_ERROR),  # idle stream
    (HEADERS_1 + f.frame(f.RST_STREAM, 0, 1, b"\0\0\0"), f.FRAME_SIZE_ERROR),
    (f.frame(f.PING, 0, 1, b"12345678"), f.PROTOCOL_ERROR),
    (f.frame(f.PING, 0, 0, b"1234567"), f.FRAME_SIZE_ERROR),
    (f.frame(f.SETTINGS, 0, 1, b""), f.PROTOCOL_ERROR),
    (f.frame(f.SETTINGS, 0, 0, b"\0\0\0\0\0"), f.FRAME_SIZE_ERROR),
    (f.frame(f.SETTINGS, f.ACK, 0, b"\0\0\0\0\0\0"), f.FRAME_SIZE_ERROR),
    (f.settings({f.SETTINGS_MAX_FRAME_SIZE: 0}), f.PROTOCOL_ERROR),
    (f.settings({f.SETTINGS_MAX_FRAME_SIZE: 1}), f.PROTOCOL_ERROR),
    (f.settings({f.SETTINGS_MAX_FRAME_SIZE: 1 << 24}), f.PROTOCOL_ERROR),
    (f.settings({f.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 31}), f.FLOW_CONTROL_ERROR),
    (f.settings({f.SETTINGS_ENABLE_PUSH: 2}), f.PROTOCOL_ERROR),
    (f.window_update(0, 0), f.PROTOCOL_ERROR),
    (f.window_update(0, f.MAX_WINDOW), f.FLOW_CONTROL_ERROR),
    (f.frame(f.WINDOW_UPDATE, 0, 0, b"\0\0\1"), f.FRAME_SIZE_ERROR),
    (f.window_update(9, 1), f.PROTOCOL_ERROR),  # idle stream
    (f.frame(f.GOAWAY, 0, 1, b"\0" * 8), f.PROTOCOL_ERROR),
    (f.frame(f.GOAWAY, 0, 0, b"\0" * 7), f.FRAME_SIZE_ERROR),
    (f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\0\0\0\2"), f.PROTOCOL_ERROR),
    (f.frame(f.CONTINUATION, f.END_HEADERS, 1, b""), f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, 0, 1, b"") + f.frame(f.PING, 0, 0, b"12345678"), f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, 0, 1, b"") + f.frame(f.CONTINUATION, f.END_HEADERS, 3, b""),
     f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS | f.PADDED, 1, b"\x05abc"), f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS | f.PADDED, 1, b""), f.FRAME_SIZE_ERROR),
    (HEADERS_1 + f.frame(f.DATA, f.PADDED, 1, b"\x09abc"), f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS | f.PRIORITY_FLAG, 1, b"\0\0"), f.FRAME_SIZE_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS, 1, b"\xff\xff\xff\xff\x0f"), f.COMPRESSION_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS, 1, b"\xbf"), f.COMPRESSION_ERROR),  # index 63: none
], ids=lambda v: v.hex()[:24] if isinstance(v, bytes) else str(v))
def test_connection_errors(data, code):
    assert conn_error(data) == code


def test_stream_id_must_grow():
    block = encode_headers(REQUEST)
    data = (f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 5, block)
            + f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 3, block))
    assert conn_error(data) == f.PROTOCOL_ERROR


def test_first_frame_must_be_settings_and_preface_exact():
    server = http2.ServerConnection()
    server.initiate()
    server.data_to_send()
    server.receive_data(f.PREFACE + f.frame(f.PING, 0, 0, b"12345678"))
    assert goaway_code(parse_frames(_drain(server))) == f.PROTOCOL_ERROR
    server = http2.ServerConnection()
    server.receive_data(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert goaway_code(parse_frames(_drain(server))) == f.PROTOCOL_ERROR


def _drain(server) -> bytes:
    server.next_events()
    return server.data_to_send()


def test_oversized_frame_is_refused_before_its_payload_arrives():
    header_only = bytes((0xFF, 0xFF, 0xFF, f.DATA, 0)) + b"\0\0\0\1"
    assert conn_error(header_only) == f.FRAME_SIZE_ERROR
    assert conn_error(f.frame(f.DATA, 0, 1, b"x" * (limits.MAX_FRAME_SIZE + 1))[:100]) \
        == f.FRAME_SIZE_ERROR


def test_continuation_flood_ends_the_connection():
    data = f.frame(f.HEADERS, 0, 1, b"")
    data += f.frame(f.CONTINUATION, 0, 1, b"") * (limits.MAX_CONTINUATION_FRAMES + 1)
    assert conn_error(data) == f.ENHANCE_YOUR_CALM


def test_header_block_size_is_bounded_while_accumulating():
    data = f.frame(f.HEADERS, 0, 1, b"\0" * 16_000)
    data += f.frame(f.CONTINUATION, 0, 1, b"\0" * 16_000) * 16
    assert conn_error(data) == f.ENHANCE_YOUR_CALM


def test_hpack_bomb_is_stopped_on_the_decoder_path_and_the_fast_path():
    enc = hpack.Encoder()
    first = enc.encode([*REQUEST, ("x-bomb", "b" * 4000)])  # enters the dynamic table
    server, _ = raw_server()
    server.receive_data(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, first))
    assert kinds(server.next_events()) == [http2.RequestReceived]
    index = 62  # the newest dynamic entry: x-bomb
    refs = bytes((0x80 | index,)) * 100  # 100 x 4 KB decoded from 100 bytes
    server.receive_data(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 3, refs))
    events = server.next_events()
    assert kinds(events) == [http2.ConnectionTerminated]
    assert events[0].error_code == f.ENHANCE_YOUR_CALM
    # the same through the decoder (a literal in front defeats the fast path)
    server, _ = raw_server()
    server.receive_data(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, first))
    server.next_events()
    block = b"\x00\x01a\x01b" + refs  # a literal without indexing, then the references
    server.receive_data(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 3, block))
    assert server.next_events()[-1].error_code == f.ENHANCE_YOUR_CALM


def test_connection_window_overrun_is_a_flow_control_error():
    server, _ = raw_server()
    server.recv_window = 100  # as if the client had used the rest
    server.receive_data(HEADERS_1 + f.frame(f.DATA, 0, 1, b"x" * 101))
    assert server.next_events()[-1].error_code == f.FLOW_CONTROL_ERROR


def test_ping_flood_against_a_client_that_does_not_read():
    server, _ = raw_server()
    ping = f.frame(f.PING, 0, 0, b"12345678")
    server.receive_data(ping * limits.MAX_QUEUED_CONTROL_FRAMES)
    while server.has_complete_frame():
        assert server.next_events(256) == []
    server.receive_data(ping)
    assert server.next_events()[-1].error_code == f.ENHANCE_YOUR_CALM


def test_ping_flood_from_a_client_that_reads_is_answered():
    server, _ = raw_server()
    ping = f.frame(f.PING, 0, 0, b"12345678")
    for _ in range(3):
        server.receive_data(ping * limits.MAX_QUEUED_CONTROL_FRAMES)
        while server.has_complete_frame():
            assert server.next_events(256) == []
            server.data_to_send()
            server.socket_drained()
    assert not server.closed


def test_rapid_reset_ends_the_connection_and_slow_resets_do_not():
    block = encode_headers(REQUEST)
    server, clock = raw_server()
    sid = 1
    for _ in range(limits.MAX_RESETS_PER_WINDOW):
        server.receive_data(f.frame(f.HEADERS, f.END_HEADERS, sid, block)
                            + f.rst_stream(sid, f.CANCEL))
        sid += 2
    assert not any(isinstance(e, http2.ConnectionTerminated) for e in server.next_events(10**6))
    server.receive_data(f.frame(f.HEADERS, f.END_HEADERS, sid, block) + f.rst_stream(sid, 8))
    assert server.next_events()[-1].error_code == f.ENHANCE_YOUR_CALM

    server, clock = raw_server()
    sid = 1
    for _ in range(3):
        for _ in range(limits.MAX_RESETS_PER_WINDOW // 2):
            server.receive_data(f.frame(f.HEADERS, f.END_HEADERS, sid, block)
                                + f.rst_stream(sid, f.CANCEL))
            sid += 2
        server.next_events(10**6)
        clock.now += limits.RAPID_RESET_WINDOW + 1
    assert not server.closed


# ------------------------------------------------------------------ stream errors


def stream_error(data: bytes, sid: int = 1) -> int | None:
    server, _ = raw_server()
    server.receive_data(data)
    events = server.next_events()
    frames = parse_frames(server.data_to_send())
    assert goaway_code(frames) is None, "a stream error must not end the connection"
    assert not server.closed
    assert not any(isinstance(e, http2.RequestReceived) and e.stream_id == sid
                   and sid in server.streams for e in events)
    return rst_codes(frames).get(sid)


def request_with(headers) -> bytes:
    return f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, encode_headers(headers))


@pytest.mark.parametrize("headers", [
    [(":method", "POST"), (":scheme", "http"), (":path", "/a"), ("Content-Type", "x")],
    [(":method", "POST"), ("content-type", "x"), (":scheme", "http"), (":path", "/a")],
    [*REQUEST, ("connection", "keep-alive")],
    [*REQUEST, ("transfer-encoding", "chunked")],
    [*REQUEST, ("upgrade", "h2c")],
    [*REQUEST[:5], ("te", "gzip")],
    [(":method", "POST"), (":scheme", "http")],  # no :path
    [(":method", "POST"), (":path", "/a")],  # no :scheme
    [(":scheme", "http"), (":path", "/a")],  # no :method
    [*REQUEST, (":status", "200")],
    [(":method", "POST"), (":method", "GET"), (":scheme", "http"), (":path", "/a")],
    [*REQUEST, ("x-bad", " leading space")],
    [*REQUEST, ("x-bad", "nul\x00byte")],
    [*REQUEST, ("x bad", "space in name")],
    [(":method", "CONNECT"), (":authority", "example:443")],
    [(":method", "POST"), (":scheme", "http"), (":path", "")],
], ids=str)
def test_malformed_requests_are_reset_with_protocol_error(headers):
    assert stream_error(request_with(headers)) == f.PROTOCOL_ERROR


def test_content_length_must_match_the_data():
    headers = [*REQUEST, ("content-length", "3")]
    block = encode_headers(headers)
    data = f.frame(f.HEADERS, f.END_HEADERS, 1, block) + f.frame(f.DATA, f.END_STREAM, 1, b"ab")
    assert stream_error(data) == f.PROTOCOL_ERROR
    data = f.frame(f.HEADERS, f.END_HEADERS, 1, block) + f.frame(f.DATA, f.END_STREAM, 1, b"abcd")
    assert stream_error(data) == f.PROTOCOL_ERROR


def test_trailers_must_end_the_stream_and_carry_no_pseudo_headers():
    t = encode_headers([("x-t", "1")])
    assert stream_error(HEADERS_1 + f.frame(f.HEADERS, f.END_HEADERS, 1, t)) == f.PROTOCOL_ERROR
    enc = hpack.Encoder()
    first = f.frame(f.HEADERS, f.END_HEADERS, 1, encode_headers(REQUEST, enc))
    bad = encode_headers([(":path", "/x")], enc)
    assert stream_error(first + f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, bad)) \
        == f.PROTOCOL_ERROR


def test_data_after_end_stream_is_stream_closed():
    done = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, encode_headers(REQUEST))
    assert stream_error(done + f.frame(f.DATA, 0, 1, b"x")) == f.STREAM_CLOSED


def test_window_update_errors_on_a_stream():
    assert stream_error(HEADERS_1 + f.window_update(1, 0)) == f.PROTOCOL_ERROR
    assert stream_error(HEADERS_1 + f.window_update(1, f.MAX_WINDOW)) == f.FLOW_CONTROL_ERROR


def test_priority_errors():
    assert stream_error(f.frame(f.PRIORITY, 0, 1, b"\0\0\0\0")) == f.FRAME_SIZE_ERROR
    assert stream_error(f.frame(f.PRIORITY, 0, 1, struct.pack(">IB", 1, 16))) \
        == f.PROTOCOL_ERROR
    self_dep = struct.pack(">IB", 1, 16) + encode_headers(REQUEST)
    assert stream_error(f.frame(f.HEADERS, f.END_HEADERS | f.PRIORITY_FLAG, 1, self_dep)) \
        == f.PROTOCOL_ERROR


def test_stream_window_overrun_is_a_stream_flow_control_error():
    server, _ = raw_server()
    server.receive_data(HEADERS_1)
    server.next_events()
    server.streams[1].recv_window = 100  # as if the client had used the rest
    server.receive_data(f.frame(f.DATA, 0, 1, b"x" * 101))
    events = server.next_events()
    assert [(type(e), e.error_code) for e in events] == [(http2.StreamReset, f.FLOW_CONTROL_ERROR)]
    assert rst_codes(parse_frames(server.data_to_send())) == {1: f.FLOW_CONTROL_ERROR}
    assert not server.closed


def test_a_stream_error_leaves_other_streams_working():
    server, _ = raw_server()
    enc = hpack.Encoder()
    bad = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1,
                  encode_headers([*REQUEST, ("Upper", "x")], enc))
    good = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 3, encode_headers(REQUEST, enc))
    server.receive_data(bad + good)
    events = server.next_events()
    assert [(type(e), e.stream_id) for e in events] == [(http2.RequestReceived, 3)]
    respond(server, 3)
    frames = parse_frames(server.data_to_send())
    assert rst_codes(frames) == {1: f.PROTOCOL_ERROR}
    assert frames[-1][0] == f.HEADERS and frames[-1][1] & f.END_STREAM


def test_connection_window_comes_back_only_for_consumed_bytes():
    server, _ = raw_server()
    chunk = b"x" * 16_000
    server.receive_data(HEADERS_1 + f.frame(f.DATA, 0, 1, chunk) * 200)  # 3.2 MB
    while server.has_complete_frame():
        server.next_events()
    frames = parse_frames(server.data_to_send())
    assert not [fr for fr in frames if fr[0] == f.WINDOW_UPDATE and fr[2] == 0]
    assert server.recv_window == server.connection_window - 200 * 16_000
    server.acknowledge(server.connection_window // 4)
    frames = parse_frames(server.data_to_send())
    assert [(fr[0], fr[2]) for fr in frames] == [(f.WINDOW_UPDATE, 0)]
    assert server.recv_window == server.connection_window - 200 * 16_000 \
        + server.connection_window // 4
