"""Hypothesis fuzzing of the HTTP/2 state machine: random and mutated byte streams.

Whatever arrives, the machine either serves it or answers with a protocol error;
it never raises, never holds more than its bounds, and stops reading once it has
sent GOAWAY.
"""

from __future__ import annotations

import h2.config
import h2.connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubekv_server.rpc import frames as f
from kubekv_server.rpc import http2, limits

from .h2_client import REQUEST

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


START = f.PREFACE + f.settings({})


def drive(chunks: list[bytes], prefix: bytes = START) -> http2.ServerConnection:
    """Feed the chunks to a server machine, answering every request, checking bounds."""
    server = http2.ServerConnection(100)
    server.initiate()
    chunks = [prefix, *chunks] if prefix else chunks
    for chunk in chunks:
        server.receive_data(chunk)
        while True:
            events = server.next_events(64)
            for event in events:
                if isinstance(event, http2.RequestReceived):
                    sid = event.stream_id
                    server.send_headers(sid, f.RESPONSE_HEADERS, end_stream=False)
                    server.send_data(sid, b"\x00\x00\x00\x00\x05hello" * 3000)
                    server.send_trailers(sid, f.TRAILERS_OK)
            check_bounds(server, len(chunk))
            if not server.has_complete_frame():
                break
        server.data_to_send()
        if server.closed:
            assert server.buffered == 0
            assert server.next_events() == [] and server.data_to_send() == b""
    return server


def check_bounds(server: http2.ServerConnection, chunk: int) -> None:
    assert server.buffered <= chunk + limits.MAX_FRAME_SIZE + 9 + len(f.PREFACE)
    assert len(server.streams) <= 100
    assert len(server._recently_reset) <= limits.MAX_RECENTLY_RESET_STREAMS
    block = server._header_block
    assert block is None or len(block) <= limits.MAX_HEADER_BLOCK_BYTES
    assert server.queued_bytes == sum(s.pending_bytes for s in server.streams.values())
    assert server.queued_bytes >= 0


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_bytes_after_a_valid_preface(chunks):
    drive(chunks)


@FUZZ
@given(st.lists(st.binary(max_size=100), max_size=10))
def test_random_bytes_instead_of_a_preface(chunks):
    server = drive(chunks, prefix=b"")
    assert server.closed or not server.established or server.buffered >= 0


def frame_strategy():
    """Frames with a valid header and random type, flags, stream and payload."""
    return st.builds(
        lambda t, fl, sid, payload: f.frame(t, fl, sid, payload),
        st.sampled_from(list(range(0, 11)) + [0xEE]),
        st.integers(0, 255),
        st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),
        st.binary(max_size=64),
    )


@FUZZ
@given(st.lists(frame_strategy(), max_size=30), st.integers(1, 50))
def test_random_frames_split_anywhere(frames, step):
    data = b"".join(frames)
    drive([data[i:i + step] for i in range(0, len(data), step)])


def valid_conversation(n_streams: int, body: bytes) -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    out = client.data_to_send()
    for i in range(n_streams):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [*REQUEST, ("x-i", str(i))])
        client.send_data(sid, body, end_stream=i % 2 == 0)
        if i % 3 == 1:
            client.reset_stream(sid)
        client.ping(b"12345678")
        out += client.data_to_send()
    return out


@FUZZ
@given(st.integers(1, 6), st.binary(max_size=200),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(1, 64))
def test_mutated_valid_conversations(n, body, flips, step):
    data = bytearray(valid_conversation(n, body))
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data)
    drive([data[i:i + step] for i in range(0, len(data), step)], prefix=b"")


@FUZZ
@given(st.integers(1, 6), st.binary(max_size=200), st.integers(0, 2000))
def test_truncated_and_repeated_conversations(n, body, cut):
    data = valid_conversation(n, body)
    drive([data[:cut], data[cut:], data[len(f.PREFACE):]], prefix=b"")
