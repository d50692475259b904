"""Malformed HTTP/1.1 requests sent over raw sockets to kubekv and to real etcd 3.5.1 side
by side: the same status lines (Go's detail included), the same bodies where Go's text is
fixed, the same JSON error where etcd's gateway answers a body it could not read, and the
connection closed or kept alike."""

from __future__ import annotations

import json
import re

import pytest

from kubekv_testing.raw_socket import exchange

B = b'{"key":"YQ=="}'
POST = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
# sent after a request both servers should answer and keep the connection for: a second
# answer then proves the connection stayed open, and its close ends the exchange
FOLLOW = b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

# (name, bytes, then half-close, then FOLLOW)
CASES = [
    ("bad request line", b"GARBAGE\r\n\r\n", False, False),
    ("request line without version", b"GET /x\r\n\r\n", False, False),
    ("space in target", b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n", False, False),
    ("NUL in target", b"GET /hea\x00lth HTTP/1.1\r\nHost: x\r\n\r\n", False, False),
    ("HTTP/0.9", b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n", False, False),
    ("HTTP/2.0 as text", b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", False, False),
    ("HTTP/1.2", b"GET /version HTTP/1.2\r\nHost: x\r\n\r\n", False, True),
    ("HTTP/1.0", b"GET /version HTTP/1.0\r\n\r\n", False, False),
    ("HTTP/2.0 in 2nd request", b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
     b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", False, False),
    ("garbage 2nd request", b"GET /version HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n",
     False, False),
    ("lone LF line ends", b"GET /version HTTP/1.1\nHost: x\n\n", False, True),
    ("header without colon", b"GET /health HTTP/1.1\r\nHost: x\r\nfoo\r\n\r\n", False, False),
    ("space before colon", b"GET /health HTTP/1.1\r\nHost: x\r\nfoo : bar\r\n\r\n", False, False),
    ("bad header name", b"GET /health HTTP/1.1\r\nHost: x\r\nf(o: bar\r\n\r\n", False, False),
    ("NUL in header value", b"GET /health HTTP/1.1\r\nHost: x\r\nfoo: a\x00b\r\n\r\n",
     False, False),
    ("CTL in header value", b"GET /health HTTP/1.1\r\nHost: x\r\nfoo: a\x01b\r\n\r\n",
     False, False),
    ("continuation first", b"GET /health HTTP/1.1\r\n Host: x\r\n\r\n", False, False),
    ("missing Host", b"GET /health HTTP/1.1\r\n\r\n", False, False),
    ("two Hosts", b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", False, False),
    ("2 MiB header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * (2 << 20)
     + b"\r\n\r\n", False, False),
    ("100 KiB header", b"GET /version HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100_000
     + b"\r\n\r\n", False, True),
    ("Content-Length zz", POST + b"Content-Length: zz\r\n\r\n", False, False),
    ("Content-Length -1", POST + b"Content-Length: -1\r\n\r\n", False, False),
    ("Content-Length +14", POST + b"Content-Length: +14\r\n\r\n" + B, False, False),
    ("conflicting Content-Length", POST + b"Content-Length: 14\r\nContent-Length: 15\r\n\r\n"
     + B, False, False),
    ("equal Content-Lengths", POST + b"Content-Length: 14\r\nContent-Length: 14\r\n\r\n" + B,
     False, True),
    ("Content-Length + chunked", POST + b"Content-Length: 14\r\nTransfer-Encoding: chunked"
     b"\r\n\r\ne\r\n" + B + b"\r\n0\r\n\r\n", False, True),
    ("Transfer-Encoding gzip", POST + b"Transfer-Encoding: gzip\r\n\r\n", False, False),
    ("Transfer-Encoding xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n", False, False),
    ("Transfer-Encoding gzip, chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
     False, False),
    ("chunked", CHUNKED + b"e\r\n" + B + b"\r\n0\r\n\r\n", False, True),
    ("chunk size -6", CHUNKED + b"-6\r\n", False, False),
    ("chunk size 0x12", CHUNKED + b"0xe\r\n" + B + b"\r\n0\r\n\r\n", False, False),
    ("chunk size 1_2", CHUNKED + b"0_e\r\n" + B + b"\r\n0\r\n\r\n", False, False),
    ("chunk size +5", CHUNKED + b"+e\r\n" + B + b"\r\n0\r\n\r\n", False, False),
    ("chunk size 20 hex digits", CHUNKED + b"f" * 20 + b"\r\n", False, False),
    ("chunk without CRLF after data", CHUNKED + b"e\r\n" + B + b"XX0\r\n\r\n", False, False),
    ("truncated body, half-close", POST + b"Content-Length: 100\r\n\r\n" + B, True, False),
    ("truncated chunk, half-close", CHUNKED + b"5\r\nab", True, False),
    ("truncated head, half-close", POST, True, False),
    ("Expect: 100-continue", POST + b"Expect: 100-continue\r\nContent-Length: 14\r\n\r\n" + B,
     False, True),
]


def summary(out: bytes) -> list[tuple]:
    """Each answer: its status line, and the body where it is fixed text (a Go error, or a
    gateway error's message); 200 bodies differ (cluster ids) and are left out."""
    answers = []
    for part in re.split(rb"(?=HTTP/1\.[01] \d{3} )", out):
        if not part:
            continue
        head, _, body = part.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 200 " in status or " 100 " in status:
            answers.append((status,))
        elif body.startswith(b"{"):
            err = json.loads(body)
            answers.append((status, err.get("error"), err.get("code")))
        else:
            answers.append((status, body.decode("latin-1")))
    return answers


@pytest.mark.parametrize("name, wire, half_close, follow", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_answered_as_etcd_answers_it(etcd_and_kubekv, name, wire, half_close,
                                                      follow):
    etcd, kubekv = etcd_and_kubekv
    wire += FOLLOW if follow else b""
    theirs, _ = exchange(etcd.port, wire, timeout=20, half_close=half_close)
    ours, _ = exchange(kubekv.port, wire, timeout=20, half_close=half_close)
    assert summary(ours) == summary(theirs)


def test_a_body_over_our_limit_is_refused_where_etcd_reads_it_then_refuses(etcd_and_kubekv):
    """Go's server has no body limit: etcd reads 9 MiB and its gRPC limit answers 429;
    we refuse at MAX_BODY (8 MiB) with 413 rather than hold the body."""
    etcd, kubekv = etcd_and_kubekv
    big = b'{"key":"' + b"A" * (9 << 20) + b'"}'
    wire = POST + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(big) + big
    theirs, _ = exchange(etcd.port, wire, timeout=20)
    ours, _ = exchange(kubekv.port, b"".join(wire.split(big)), timeout=20)
    assert summary(theirs)[0][0] == "HTTP/1.1 429 Too Many Requests"
    assert summary(ours)[0][0] == "HTTP/1.1 413 Request Entity Too Large"
