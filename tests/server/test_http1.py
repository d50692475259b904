"""HTTP/1.1 on the client port: Http1Handler driven with a fake transport (no sockets)
through every malformed request etcd's Go server has an answer for, the bounds and
timeouts, and malformed requests answered without harm to a real server."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.http.gateway_json import JSONError, decode_stream
from kubekv_server.rpc import http1
from kubekv_server.rpc.http1 import MAX_BODY, MAX_HEAD, MAX_PIPELINED, Http1Handler, go_error
from kubekv_testing.raw_socket import exchange
from tests.harness import kubekv_process, running
from tests.rpc.fake_http1 import Server, echo_server, run, settle
from tests.rpc.fake_transport import FakeTransport

GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
B = b'{"key":"YQ=="}'
DATE = re.compile(rb"Date: [^\r]*\r\n")


def _id(value) -> str | None:
    """Short test ids for byte strings (some are a megabyte long)."""
    return repr(value)[:48] if isinstance(value, bytes) else None


def _answers(out: bytes) -> list[bytes]:
    """Responses in a byte stream, Date lines blanked (they are the only varying part)."""
    return [b"HTTP/1." + r for r in DATE.sub(b"Date: D\r\n", bytes(out)).split(b"HTTP/1.")[1:]]


def _ok(body: bytes, close: bool = False, version: bytes = b"1.1") -> bytes:
    return (b"HTTP/" + version + b" 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Date: D\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), b"Connection: close\r\n" if close else b"", body))


# ------------------------------------------------------------------ well-formed requests


def test_a_request_is_answered_in_go_layout_and_the_connection_stays_open():
    t, _, _ = run([GET])
    assert _answers(t.out) == [_ok(b"GET /health 0 -")]
    assert not t.closed


def test_pipelined_requests_are_answered_in_order_on_one_connection():
    body = POST + b"Content-Length: 14\r\n\r\n" + B
    t, _, server = run([GET + body + GET])
    assert _answers(t.out) == [_ok(b"GET /health 0 -"), _ok(b"POST /v3/kv/range 14 -"),
                               _ok(b"GET /health 0 -")]
    assert server.calls[1][3] == B and not t.closed


def test_a_chunked_body_split_at_every_byte_arrives_whole():
    wire = CHUNKED + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n" + GET
    t, _, server = run([wire[i:i + 1] for i in range(len(wire))])
    assert server.calls[0][3] == b"hello world"
    assert _answers(t.out) == [_ok(b"POST /v3/kv/range 11 -"), _ok(b"GET /health 0 -")]


def test_content_length_and_transfer_encoding_together_read_chunked_as_go_does():
    wire = (POST + b"Content-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\ne\r\n" + B
            + b"\r\n0\r\n\r\n")
    t, _, server = run([wire])
    assert server.calls[0][3] == B and not t.closed


def test_repeated_equal_content_lengths_are_one():
    t, _, server = run([POST + b"Content-Length: 14\r\nContent-Length: 14\r\n\r\n" + B])
    assert server.calls[0][3] == B


def test_lone_lf_line_endings_are_accepted_as_go_does():
    t, _, _ = run([b"GET /health HTTP/1.1\nHost: x\n\n"])
    assert _answers(t.out) == [_ok(b"GET /health 0 -")]


def test_http10_is_answered_in_http10_and_closed_without_a_connection_header():
    t, _, _ = run([b"GET /health HTTP/1.0\r\n\r\n"])
    assert _answers(t.out) == [_ok(b"GET /health 0 -", version=b"1.0")]
    assert t.closed


def test_connection_close_is_honoured_and_said():
    t, _, _ = run([b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET])
    assert _answers(t.out) == [_ok(b"GET /health 0 -", close=True)]
    assert t.closed


def test_expect_100_continue_is_answered_before_the_body():
    head = POST + b"Expect: 100-continue\r\nContent-Length: 14\r\n\r\n"

    async def go():
        t = FakeTransport()
        h = Http1Handler(echo_server(), t, mux_first_line=False)
        h.data_received(head)
        assert bytes(t.out) == b"HTTP/1.1 100 Continue\r\n\r\n"
        h.data_received(B)
        await settle(h)
        h.connection_lost()
        return t

    t = asyncio.run(go())
    assert _answers(t.out)[1:] == [_ok(b"POST /v3/kv/range 14 -")]


def _streaming_server(chunks):
    async def handler(method, target, headers, body):
        async def gen():
            for c in chunks:
                yield c
        return 200, "application/json", gen(), [("X-A", "1")]
    return Server(handler)


def test_a_streamed_answer_is_chunked_then_the_connection_serves_on():
    t, _, _ = run([GET, GET], server=_streaming_server([b"ab", b"", b"cde"]))
    one = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: 1\r\nDate: D\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
    assert _answers(t.out) == [one, one] and not t.closed


def test_a_streamed_answer_to_http10_runs_to_the_close():
    t, _, _ = run([b"GET /health HTTP/1.0\r\n\r\n"], server=_streaming_server([b"ab", b"c"]))
    assert _answers(t.out) == [b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                               b"X-A: 1\r\nDate: D\r\n\r\nabc"]
    assert t.closed


# ------------------------------------------------------------------ malformed requests

BAD_NAME = go_error(400, "invalid header name")
BAD_VALUE = go_error(400, "invalid header value")
TE_501 = (b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain; charset=utf-8\r\n"
          b"Connection: close\r\n\r\nUnsupported transfer encoding")


@pytest.mark.parametrize("wire, answer", [
    (b"GARBAGE\r\n\r\n", go_error(400)),
    (b"GET /x\r\n\r\n", go_error(400)),
    (b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n", go_error(400)),
    (b"GET /hea\x00lth HTTP/1.1\r\nHost: x\r\n\r\n", go_error(400)),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nfoo\r\n\r\n", go_error(400)),
    (b"GET /health HTTP/1.1\r\n Host: x\r\n\r\n", go_error(400)),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nfoo : bar\r\n\r\n", BAD_NAME),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nf(o: bar\r\n\r\n", BAD_NAME),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nfoo: a\x00b\r\n\r\n", BAD_VALUE),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nfoo: a\x01b\r\n\r\n", BAD_VALUE),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nfoo: a\x7fb\r\n\r\n", BAD_VALUE),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nfoo: a\rb\r\n\r\n", BAD_VALUE),
    (b"GET /health HTTP/1.1\r\n\r\n", go_error(400, "missing required Host header")),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
     go_error(400, "too many Host headers")),
    (POST + b"Content-Length: zz\r\n\r\n", go_error(400)),
    (POST + b"Content-Length: -1\r\n\r\n", go_error(400)),
    (POST + b"Content-Length: +14\r\n\r\n" + B, go_error(400)),
    (POST + b"Content-Length: 14\r\nContent-Length: 15\r\n\r\n" + B, go_error(400)),
    (POST + b"Content-Length: 14, 15\r\n\r\n" + B, go_error(400)),
    (POST + b"Transfer-Encoding: gzip\r\n\r\n", TE_501),
    (POST + b"Transfer-Encoding: xchunked\r\n\r\n", TE_501),
    (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", TE_501),
    (POST + b"Transfer-Encoding: identity\r\nContent-Length: 14\r\n\r\n" + B, TE_501),
    (POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", TE_501),
    (b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n",
     go_error(505, "unsupported protocol version")),
    (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
     go_error(505, "unsupported protocol version")),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * MAX_HEAD + b"\r\n\r\n",
     go_error(431)),
], ids=_id)
def test_malformed_heads_get_go_answers_and_the_connection_closes(wire, answer):
    t, _, server = run([wire + GET])
    assert bytes(t.out) == answer and t.closed and not server.calls


@pytest.mark.parametrize("wire", [
    b"GARBAGE\r\n\r\n", b"GET /x\r\n\r\n", b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n", b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
    b"\r\n" + GET, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=_id)
def test_a_first_line_cmux_would_not_match_closes_without_a_word(wire):
    t, _, server = run([wire], mux=True)
    assert t.out == b"" and t.closed and not server.calls


def test_cmux_looks_at_the_first_request_only():
    t, _, _ = run([GET + b"GARBAGE\r\n\r\n"], mux=True)
    assert _answers(t.out) == [_ok(b"GET /health 0 -"), go_error(400)] and t.closed


@pytest.mark.parametrize("chunks, error", [
    (b"-6\r\n", "invalid byte in chunk length"),  # once an endless loop on the event loop
    (b"0x12\r\n" + b"a" * 18 + b"\r\n0\r\n\r\n", "invalid byte in chunk length"),
    (b"1_2\r\n" + b"a" * 18 + b"\r\n0\r\n\r\n", "invalid byte in chunk length"),
    (b"+5\r\nabcde\r\n0\r\n\r\n", "invalid byte in chunk length"),
    (b"zz\r\n", "invalid byte in chunk length"),
    (b"\r\n", "invalid byte in chunk length"),
    (b"1" * 17 + b"\r\n", "http chunk length too large"),
    (b"f" * 20 + b"\r\n", "http chunk length too large"),
    (b"f" * 40 + b"\r\n", "http chunk length too large"),
    (b"e\r\n" + B + b"XX0\r\n\r\n", "malformed chunked encoding"),
    (b"e\r\n" + B + b"\r\n0\r\nfoo\r\n\r\n", "malformed MIME header"),
], ids=_id)
def test_malformed_chunked_bodies_reach_the_handler_as_go_read_errors(chunks, error):
    t, _, server = run([CHUNKED + chunks + GET])
    assert [c[3].error for c in server.calls] == [error]
    assert _answers(t.out) == [_ok(f"POST /v3/kv/range 0 {error}".encode(), close=True)]
    assert t.closed


TRAILER_EOF = "http: unexpected EOF reading trailer"


@pytest.mark.parametrize("wire, error", [
    (POST + b"Content-Length: 100\r\n\r\n" + B, "unexpected EOF"),
    (CHUNKED + b"5", "unexpected EOF"),
    (CHUNKED + b"5\r\nabcde", "unexpected EOF"),
    (CHUNKED + b"5\r\nabcde\r\n", "unexpected EOF"),
    (CHUNKED + b"5\r\n", TRAILER_EOF),
    (CHUNKED + b"5\r\nab", TRAILER_EOF),
    (CHUNKED + b"0\r\n", TRAILER_EOF),
], ids=_id)
def test_a_body_cut_short_by_the_clients_close_is_go_s_eof_error(wire, error):
    t, _, server = run([wire], eof=True)
    assert [c[3].error for c in server.calls] == [error]
    assert _answers(t.out) == [_ok(f"POST /v3/kv/range 0 {error}".encode(), close=True)]


def test_a_head_cut_short_by_the_clients_close_is_a_go_400():
    t, _, _ = run([POST], eof=True)
    assert bytes(t.out) == go_error(400) and t.closed


def test_a_clean_close_between_requests_closes_quietly():
    t, _, _ = run([GET], eof=True)
    assert _answers(t.out) == [_ok(b"GET /health 0 -")] and t.closed


TOO_LARGE = (b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain; charset=utf-8"
             b"\r\nDate: D\r\nContent-Length: 23\r\nConnection: close\r\n\r\n"
             b"request body too large\n")


@pytest.mark.parametrize("chunks", [
    [POST + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)],
    [CHUNKED + b"%x\r\n" % (MAX_BODY + 1)],
    [CHUNKED] + [b"%x\r\n%s\r\n" % (1 << 20, b"a" * (1 << 20))] * 9,
], ids=["length", "chunk-size", "chunks"])
def test_a_body_over_the_limit_is_refused_with_413(chunks):
    t, h, server = run(chunks)
    assert _answers(t.out) == [TOO_LARGE] and t.closed and not server.calls
    assert h._reader.buffered() <= MAX_BODY + (1 << 20) + 64


# ------------------------------------------------------------------ bounds and timeouts


def test_pipelined_input_beyond_the_bound_pauses_reading_until_the_answer():
    gate: asyncio.Future | None = None

    async def slow(method, target, headers, body):
        await gate
        return 200, "text/plain; charset=utf-8", b"x"

    async def go():
        nonlocal gate
        gate = asyncio.get_running_loop().create_future()
        t = FakeTransport()
        h = Http1Handler(Server(slow), t, mux_first_line=False)
        h.data_received(GET)
        for _ in range(2 * MAX_PIPELINED // len(GET)):
            h.data_received(GET)
            if t.paused:
                break
        assert t.paused and h._reader.buffered() <= MAX_PIPELINED + len(GET)
        gate.set_result(None)
        for _ in range(100):
            await asyncio.sleep(0)
        assert not t.paused
        h.connection_lost()
        return t

    t = asyncio.run(go())
    assert t.out.count(b"HTTP/1.1 200 OK") > 1


@pytest.mark.parametrize("chunks", [
    [], [b"GET /health HTTP/1.1\r\nHost"], [POST + b"Content-Length: 14\r\n\r\n{"], [GET],
])
def test_a_connection_that_stalls_is_closed_after_its_timeout(monkeypatch, chunks):
    monkeypatch.setattr(Http1Handler, "head_timeout", 0.0)
    monkeypatch.setattr(Http1Handler, "idle_timeout", 0.0)

    async def go():
        t = FakeTransport()
        h = Http1Handler(echo_server(), t, mux_first_line=False)
        for c in chunks:
            h.data_received(c)
        await settle(h)
        await asyncio.wait_for(t.closed_event.wait(), 30)
        h.connection_lost()
        return t

    t = asyncio.run(go())
    assert t.closed


def test_the_timeouts_are_named_and_sensible():
    assert 30 <= http1.HEAD_TIMEOUT <= 60 and http1.IDLE_TIMEOUT > 90


def test_violations_are_logged_once_per_client_per_interval(caplog):
    caplog.set_level(logging.INFO, logger="kubekv.http")
    for _ in range(5):
        run([b"GET /health HTTP/1.1\r\nfoo\r\n\r\n"], peer=("198.51.100.9", 1))
    lines = [r.getMessage() for r in caplog.records if "198.51.100.9" in r.getMessage()]
    assert len(lines) == 1 and "event=http1_bad_request" in lines[0]
    assert "foo" not in lines[0] and not any(r.exc_info for r in caplog.records)


# ------------------------------------------------------------------ JSON decoding


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_a_json_error(body):
    try:
        decode_stream(body, pb.TxnRequest)
    except JSONError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["key", "range_end", "compare", "success", "failure", "request_put",
                         "requestRange", "target", "result", "value", "lease", "x"]),
        inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_json_value_decodes_or_raises_a_json_error(value):
    import json
    try:
        decode_stream(json.dumps(value).encode(), pb.TxnRequest, 1)
    except JSONError:
        pass


def _exchange(port: int, data: bytes) -> bytes:
    got, reset = exchange(port, data, timeout=10)
    assert not reset, got
    return got


def test_malformed_requests_get_answers_and_the_server_keeps_serving(tmp_path):
    with running(kubekv_process(tmp_path)) as proc:
        got = _exchange(proc.port, b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: zz\r\n\r\n")
        assert got == go_error(400)
        # a negative chunk size once spun the event loop for ever: the whole server hung
        got = _exchange(proc.port, CHUNKED + b"-6\r\n")
        assert got.startswith(b"HTTP/1.1 400 ") and b"invalid byte in chunk length" in got
        body = b'{"key":"YQ==","value":"Yg=="}'
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                           for i in range(0, len(body), 7)) + b"0\r\n\r\n"
        got = _exchange(proc.port, b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\n"
                        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked)
        assert got.startswith(b"HTTP/1.1 200 ") and b'"revision":"2"' in got
        got = _exchange(proc.port, b"GET /health HTTP/1.1\r\nHost: x\r\n"
                        b"Connection: close\r\n\r\n")
        assert got.endswith(b'{"health":"true"}')
