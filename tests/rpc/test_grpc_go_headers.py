"""Request header blocks as grpc-go sends them: a new grpc-timeout literal per call,
which enters the HPACK table and shifts every reference. rpc/http2.py decodes such
blocks without the hpack library and remembers validated lists with the timeout
blanked; both must give exactly what the library and the full validation give."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubekv_server.rpc import frames as f
from kubekv_server.rpc import http2, limits

from .h2_client import REQUEST, goaway_code, parse_frames, raw_server, rst_codes

GO_REQUEST = [*REQUEST, ("user-agent", "grpc-go/1.33.3")]


def go_calls(n: int, seed: int = 1) -> list[list[tuple[str, str]]]:
    """`n` calls' header lists, each with its own grpc-timeout (microseconds left of
    a 10 s deadline, as grpc-go writes it) and a trailing client-api-version."""
    rnd = random.Random(seed)
    return [[*GO_REQUEST, ("grpc-timeout", f"{9_999_000 + rnd.randrange(1000)}u"),
             ("client-api-version", "3.4")] for _ in range(n)]


def received(server, sid: int, block: bytes) -> list:
    server.receive_data(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, block))
    return server.next_events()


def test_grpc_go_blocks_decode_as_the_library_does_without_it():
    server, _ = raw_server()
    library_calls = 0
    library_decode = server._decoder.decode

    def counting(block, raw=False):
        nonlocal library_calls
        library_calls += 1
        return library_decode(block, raw=raw)

    server._decoder.decode = counting
    enc = hpack.Encoder()
    reference = hpack.Decoder()
    literal_names = 0
    for i, headers in enumerate(go_calls(600)):
        block = enc.encode(headers)
        literal_names += not http2._references_and_short_literals(block)
        want = [(bytes(k), bytes(v)) for k, v in reference.decode(block, raw=True)]
        events = received(server, 2 * i + 1, block)
        assert [type(e) for e in events] == [http2.RequestReceived], i
        assert [tuple(h) for h in events[0].headers] == want, i
        assert events[0].first[b"grpc-timeout"] == want[-2][1]
        server.streams.pop(2 * i + 1, None)
    # the same table on both sides; only blocks with literal names (the first, and
    # each after the table evicted the entries they name) went through the library
    assert list(server._decoder.header_table.dynamic_entries) == \
        list(reference.header_table.dynamic_entries)
    assert library_calls == literal_names < 20


def test_a_remembered_list_still_checks_each_timeout_value():
    server, _ = raw_server()
    enc = hpack.Encoder()
    calls = go_calls(3)
    for i, headers in enumerate(calls):
        assert [type(e) for e in received(server, 2 * i + 1, enc.encode(headers))] \
            == [http2.RequestReceived]
    for sid, value in ((7, " 5u"), (9, "5u\x00")):
        bad = [*GO_REQUEST, ("grpc-timeout", value), ("client-api-version", "3.4")]
        received(server, sid, enc.encode(bad))
        assert rst_codes(parse_frames(server.data_to_send())) == {sid: f.PROTOCOL_ERROR}
    assert not server.closed


def test_a_malformed_list_is_refused_every_time():
    server, _ = raw_server()
    enc = hpack.Encoder()
    for i, headers in enumerate(go_calls(3)):
        bad = [*headers, ("Upper", "x")]
        sid = 2 * i + 1
        assert received(server, sid, enc.encode(bad)) == []
        assert rst_codes(parse_frames(server.data_to_send())) == {sid: f.PROTOCOL_ERROR}


@pytest.mark.parametrize("tail, code", [
    (b"\x7e\x83\xff\xff\xff", f.COMPRESSION_ERROR),  # a Huffman code of all ones (EOS)
    (b"\xfe", f.COMPRESSION_ERROR),                     # index 126: no such entry
    (b"\x7f\x7f\x01a", f.COMPRESSION_ERROR),            # name index 126: no such entry
])
def test_bad_short_literal_blocks_end_the_connection(tail, code):
    server, _ = raw_server()
    enc = hpack.Encoder()
    received(server, 1, enc.encode(go_calls(1)[0]))
    server.data_to_send()
    block = bytes((0x83, 0x86)) + tail
    assert http2._references_and_short_literals(block)
    events = received(server, 3, block)
    assert [type(e) for e in events] == [http2.ConnectionTerminated]
    assert goaway_code(parse_frames(server.data_to_send())) == code


def test_hpack_bomb_behind_a_short_literal_is_stopped():
    enc = hpack.Encoder()
    server, _ = raw_server()
    received(server, 1, enc.encode([*REQUEST, ("x-bomb", "b" * 4000)]))
    # a literal under x-bomb's name (index 62) enters the table and shifts x-bomb to 63
    literal = b"\x7e\x021u"
    refs = bytes((0x80 | 63,)) * 100  # then 100 x 4 KB
    block = literal + refs
    assert http2._references_and_short_literals(block)
    events = received(server, 3, block)
    assert [type(e) for e in events] == [http2.ConnectionTerminated]
    assert events[0].error_code == f.ENHANCE_YOUR_CALM


@pytest.mark.parametrize("block", [
    b"\x40\x01a\x01b",          # literal name
    b"\x7e\xff\x00",            # value of 127 bytes or more
    b"\x7e\x05ab",              # value cut short
    b"\xff\x80\x01",            # an index in three bytes
    b"\x20",                    # a table size update
    b"\x0f\x01\x01a",           # literal without indexing
])
def test_other_shapes_go_to_the_library(block):
    assert not http2._references_and_short_literals(block)


# ------------------------------------------------------------------ against the library

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
# mostly indices the table has (61 static entries, the primed request's 7), some not
_index = st.one_of(*[st.integers(1, 68)] * 19, st.integers(0, 200))
_value = st.one_of(
    *[st.tuples(st.binary(max_size=40), st.just(False))] * 6,                      # raw
    *[st.tuples(st.binary(max_size=60).map(_HUFFMAN.encode), st.just(True))] * 6,  # Huffman
    st.tuples(st.binary(max_size=20), st.just(True)),  # mostly not a valid code
).filter(lambda v: len(v[0]) < 127)
_field = st.one_of(
    st.tuples(st.just("ref"), _index),
    st.builds(lambda i, v: ("literal", i, *v), _index, _value),
)


def _block(fields) -> bytes:
    """Raw HPACK bytes from (kind, ...) fields: references with any index (one byte,
    or 0xFF plus one more) and literals with incremental indexing of a referenced name
    (any index) whose value may or may not be a valid Huffman code."""
    out = bytearray()
    for field in fields:
        if field[0] == "ref":
            index = field[1]
            out += bytes((0x80 | index,)) if index < 127 else bytes((0xFF, index - 127))
        else:
            _, index, value, huffman = field
            out += bytes((0x40 | index,)) if index < 63 else bytes((0x7F, index - 63))
            out += bytes(((0x80 if huffman else 0) | len(value),)) + value
    return bytes(out)


def _outcome(decode):
    try:
        return [(bytes(k), bytes(v)) for k, v in decode()]
    except http2._ConnectionError as exc:
        return exc.code
    except (hpack.HPACKError, IndexError):
        return f.COMPRESSION_ERROR


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_field, min_size=1, max_size=12), min_size=1, max_size=6))
def test_short_literal_decoding_matches_the_library(blocks):
    """Any sequence of such blocks decodes to the same headers, fails alike, and leaves
    the same dynamic table as hpack's own decoder (primed with a real request)."""
    server, _ = raw_server()
    enc = hpack.Encoder()
    reference = hpack.Decoder(max_header_list_size=limits.MAX_HEADER_LIST_SIZE)
    first = enc.encode(go_calls(1)[0])
    received(server, 1, first)
    reference.decode(first, raw=True)
    for fields in blocks:
        block = _block(fields)
        ours = _outcome(lambda b=block: server._decode(b))
        theirs = _outcome(lambda b=block: reference.decode(b, raw=True))
        assert ours == theirs, block.hex()
        if not isinstance(ours, list):
            return  # a connection error: the connection (and its table) is gone
        assert list(server._decoder.header_table.dynamic_entries) == \
            list(reference.header_table.dynamic_entries)
