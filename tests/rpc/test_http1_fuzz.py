"""Hypothesis fuzzing of the HTTP/1.1 handler: random and mutated byte streams, split at
random points, through Http1Handler with a fake transport. Whatever arrives, the outcome
is well-formed answers, a refusal and a close, or a close: never an exception, never a
buffer beyond its bound, never an example that does not finish."""

from __future__ import annotations

import asyncio
import datetime
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubekv_server.rpc.http1 import MAX_BODY, MAX_HEAD, MAX_PIPELINED, Http1Handler
from tests.rpc.fake_http1 import echo_server, settle
from tests.rpc.fake_transport import FakeTransport

B = b'{"key":"YQ=="}'
SEEDS = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n" + B,
    b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\n{\"key\r\n9;x=1\r\n\":\"YQ==\"}\r\n0\r\nX-T: 1\r\n\r\n",
    b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /version HTTP/1.0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")
ALLOWED = {100, 200, 400, 413, 431, 501, 505}


def _mutate(data: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, pos, blob in ops:
        pos = pos % (len(out) + 1)
        if kind == 0:
            out[pos:pos] = blob  # insert
        elif kind == 1:
            del out[pos:pos + len(blob) + 1]  # delete
        elif kind == 2:
            out[pos:pos + len(blob)] = blob  # overwrite
        else:
            out[pos:pos] = out[pos:pos + 1 + len(blob) * 7]  # duplicate a stretch
    return bytes(out)


_blob = st.sampled_from([b"\r\n", b"\n", b"\r", b":", b" ", b"\x00", b"-6", b"0x", b"_",
                         b"+", b";", b"chunked", b"Content-Length: 9\r\n", b"f" * 24,
                         b"Transfer-Encoding: chunked\r\n", b"HTTP/2.0", b"\xff"]) | st.binary(
    max_size=6)
_mutations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 400), _blob), max_size=6)
_streams = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda seeds, ops: _mutate(b"".join(seeds), ops),
              st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3), _mutations),
)


def _check_answers(out: bytes, closed: bool) -> None:
    """The output is a sequence of whole responses; a refusal is the last thing sent."""
    pos = 0
    while pos < len(out):
        m = STATUS.match(out, pos)
        assert m, out[pos:pos + 80]
        status = int(m.group(1))
        assert status in ALLOWED, status
        end = out.find(b"\r\n\r\n", pos)
        assert end >= 0
        head = out[pos:end]
        pos = end + 4
        if status == 100:
            continue
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        if length is None:  # Go's error answer: its text runs to the close
            assert status >= 400 and closed
            return
        pos += int(length.group(1))
        assert pos <= len(out)
        if status >= 400:
            assert closed and pos == len(out)


async def _drive(data: bytes, cuts: list[int], mux: bool, eof: bool):
    t = FakeTransport()
    h = Http1Handler(echo_server(), t, mux_first_line=mux)
    points = sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]
    start = 0
    for p in points:
        if t.closed:
            break
        h.data_received(data[start:p])
        start = p
        await settle(h)
        assert h._reader.buffered() <= min(len(data), MAX_HEAD + MAX_BODY + MAX_PIPELINED)
    if eof and not t.closed:
        if not h.eof_received():
            t.close()
        await settle(h)
    h.connection_lost()
    return t


@settings(max_examples=400, deadline=datetime.timedelta(seconds=10),
          suppress_health_check=[HealthCheck.too_slow])
@given(_streams, st.lists(st.integers(0, 2000), max_size=8), st.booleans(), st.booleans())
def test_any_byte_stream_ends_in_answers_a_refusal_or_a_close(data, cuts, mux, eof):
    t = asyncio.run(_drive(data, cuts, mux, eof))
    _check_answers(bytes(t.out), t.closed)
