"""HTTP/1.1 on the client port: request bodies (Content-Length or chunked) as pure
logic, and malformed requests answered without harm to the server."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.gateway_json import JSONError, decode_stream
from kubekv_server.rpc.http1 import BadRequest, request_body
from tests.harness import kubekv_process, running

CHUNKED = {"transfer-encoding": "chunked"}


def test_bodies_by_length_and_chunked():
    assert request_body(b"abcdef", 2, {"content-length": "3"}) == (b"cde", 5)
    assert request_body(b"ab", 0, {"content-length": "3"}) is None
    assert request_body(b"ab", 0, {}) == (b"", 0)
    wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT"
    assert request_body(wire, 0, CHUNKED) == (b"hello world", len(wire) - 4)
    for cut in range(len(wire) - 4):
        assert request_body(wire[:cut], 0, CHUNKED) is None  # incomplete: wait for more


@pytest.mark.parametrize("headers, wire, status", [
    ({"content-length": "x"}, b"", 400),
    ({"content-length": "-1"}, b"", 400),
    ({"content-length": str(9 << 20)}, b"", 413),
    (CHUNKED, b"zz\r\n", 400),
    (CHUNKED, b"%x\r\n" % (9 << 20), 413),
])
def test_bad_bodies_are_refused(headers, wire, status):
    with pytest.raises(BadRequest) as err:
        request_body(wire, 0, headers)
    assert err.value.status == status


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
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_malformed_requests_get_answers_and_the_server_keeps_serving(tmp_path):
    with running(kubekv_process(tmp_path)) as proc:
        got = _exchange(proc.port, b"POST /v3/kv/range HTTP/1.1\r\nContent-Length: zz\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 400 ")
        body = b'{"key":"YQ==","value":"Yg=="}'
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                           for i in range(0, len(body), 7)) + b"0\r\n\r\n"
        got = _exchange(proc.port, b"POST /v3/kv/put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                        b"Connection: close\r\n\r\n" + chunked)
        assert got.startswith(b"HTTP/1.1 200 ") and b'"revision":"2"' in got
        got = _exchange(proc.port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert got.endswith(b'{"health":"true"}')
