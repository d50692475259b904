"""etcd's JSON gateway (/v3/...), kubekv and a real etcd 3.5 side by side: the same
HTTP requests in the same order; status line, headers (but Date and Content-Length)
and body must match once member/cluster ids, raft terms and versions are masked."""

from __future__ import annotations

import http.client
import json
import re

import pytest

from tests.harness import etcd_process, kubekv_process

# (method, path, body, stream lines to read); one sequence, run on both servers
SEQUENCE = [
    ("POST", "/v3/kv/put", '{"key":"Zm9v","value":"YmFy"}', 0),
    ("POST", "/v3beta/kv/range", '{"key":"Zm9v"}', 0),
    ("POST", "/v3alpha/kv/range", '{"key":"Zm9v"}', 0),
    ("POST", "/v3/kv/range", '{"key":"Zm9v","keys_only":true,"sort_order":"DESCEND"}', 0),
    ("POST", "/v3/kv/range", '{"key":"Zm9v","sortOrder":1,"range_end":null}', 0),
    ("POST", "/v3/kv/range", '{"key":"Zm9v","revision":"99"}', 0),
    ("POST", "/v3/kv/range", '{"key":"Zm9v","bogus":1}', 0),  # unknown fields: ignored
    ("POST", "/v3/kv/range", '{"key":"YWJj"}{"key":"Zm9v"}', 0),  # the first value only
    ("POST", "/v3/kv/range", "", 0),
    ("POST", "/v3/kv/range", '{"limit":"12","key":"YQ=="}', 0),
    # malformed bodies: Go's wording
    ("POST", "/v3/kv/range", '{"key":"not base64!"}', 0),
    ("POST", "/v3/kv/range", '{"key":"YWJ"}', 0),
    ("POST", "/v3/kv/range", '{"key":1}', 0),
    ("POST", "/v3/kv/range", '{"limit":"x"}', 0),
    ("POST", "/v3/kv/range", '{"limit":1.5}', 0),
    ("POST", "/v3/kv/range", '{"sort_order":"NOPE"}', 0),
    ("POST", "/v3/kv/range", '{"key":"YQ==","serializable":"true"}', 0),
    ("POST", "/v3/kv/range", "[1]", 0),
    ("POST", "/v3/kv/range", "not json", 0),
    ("POST", "/v3/kv/range", '{"key":"YQ==",}', 0),
    ("POST", "/v3/kv/range", '{"key" "YQ=="}', 0),
    ("POST", "/v3/kv/range", '{"key":"YQ=="', 0),
    # nesting past Go's 10,000 levels: "exceeded max depth", not a server error
    ("POST", "/v3/kv/range", "[" * 20000, 0),
    ("POST", "/v3/kv/range", '{"key":"YQ==","x":' + "{\"a\":" * 20000 + "1" + "}" * 20001, 0),
    # txn, delete, compaction
    ("POST", "/v3/kv/txn", '{"compare":[{"result":0,"target":1,"key":"Zm9v","TargetUnion":null}]'
     ',"success":[{"Request":{"RequestPut":{"key":"Zm9v","value":"YmFy"}}}]}', 0),
    ("POST", "/v3/kv/txn", '{"compare":[{"key":"Zm9v","target":"CREATE","createRevision":"0"}],'
     '"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}],'
     '"failure":[{"request_range":{"key":"Zm9v"}}]}', 0),
    ("POST", "/v3/kv/txn", '{"success":[{"request_put":{"key":"YQ==","value":"Yg=="}},'
     '{"requestDeleteRange":{"key":"YQ=="}}]}', 0),
    ("POST", "/v3/kv/deleterange", '{"key":"eA=="}', 0),
    ("POST", "/v3/kv/compaction", '{"revision":"100"}', 0),
    ("POST", "/v3/kv/put", '{"key":"YQ==","lease":"99"}', 0),
    # leases (explicit ids: generated ones differ)
    ("POST", "/v3/lease/grant", '{"TTL":60,"ID":"7"}', 0),
    ("POST", "/v3/lease/grant", '{"TTL":60,"ID":"7"}', 0),
    ("POST", "/v3/lease/timetolive", '{"ID":"7","keys":true}', 0),
    ("POST", "/v3/kv/lease/leases", "{}", 0),
    ("POST", "/v3/lease/revoke", '{"ID":"8"}', 0),
    ("POST", "/v3/lease/keepalive", '{"ID":"7"}', 1),
    # election and lock errors
    ("POST", "/v3/election/resign", "{}", 0),
    ("POST", "/v3/election/proclaim", '{"value":"djI="}', 0),
    ("POST", "/v3/election/leader", '{"name":"eA=="}', 0),
    # auth, cluster, maintenance
    ("POST", "/v3/auth/status", "{}", 0),
    ("POST", "/v3/auth/enable", "{}", 0),
    ("POST", "/v3/maintenance/alarm", "{}", 0),
    ("POST", "/v3/cluster/member/remove", '{"ID":"1"}', 0),
    # watch streams
    ("POST", "/v3/watch", '{"create_request":{"key":"Zm9v","start_revision":1}}', 2),
    ("POST", "/v3/watch", '{"create_request":{"key":"Zm9v","start_revision":1,'
     '"filters":["NOPUT"]}}', 1),
    # not gateway calls
    ("POST", "/v3/kv/nothing", "{}", 0),
    ("GET", "/v3/kv/put", "", 0),
    ("GET", "/v3/watch", "", 0),
    ("OPTIONS", "/v3/kv/put", "", 0),
    ("POST", "/v3", "{}", 0),
    ("POST", "/v3/", "{}", 0),
    ("POST", "/foo", "{}", 0),
    ("GET", "/version", "", 0),
]

_IDS = re.compile(rb'"(cluster_id|member_id|raft_term)":"\d+"')
_VERSION = re.compile(rb'"etcdserver":"[0-9.]+"')


def request(port: int, method: str, path: str, body: str, lines: int,
            headers: dict | None = None) -> tuple[int, list, bytes]:
    """One request on a new connection: status, headers (Date and Content-Length left
    out), and the body (for a stream: its first `lines` lines)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body.encode() if body else None, headers=headers or {})
        resp = conn.getresponse()
        hdrs = sorted((k.lower(), v) for k, v in resp.getheaders()
                      if k.lower() not in ("date", "content-length"))
        if lines:
            data = _stream_lines(resp, lines)
        else:
            data = resp.read()
    finally:
        conn.close()
    data = _VERSION.sub(b'"etcdserver":"V"', _IDS.sub(rb'"\1":"N"', data))
    return resp.status, hdrs, data


def _stream_lines(resp, n: int) -> bytes:
    """The first n lines of a chunked stream that does not end (read chunk by chunk)."""
    buf = b""
    while buf.count(b"\n") < n:
        size = int(resp.fp.readline().split(b";")[0], 16)
        if size == 0:
            break
        buf += resp.fp.read(size)
        resp.fp.readline()  # the chunk's CRLF
    return b"".join(buf.splitlines(keepends=True)[:n])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    ours, theirs = kubekv_process(tmp), etcd_process(tmp)
    ours.start()
    try:
        theirs.start()
        try:
            yield ours, theirs
        finally:
            theirs.stop()
    finally:
        ours.stop()


def test_gateway_answers_as_etcd_does(pair):
    ours, theirs = pair
    mismatches = []
    for method, path, body, lines in SEQUENCE:
        got = request(ours.port, method, path, body, lines)
        want = request(theirs.port, method, path, body, lines)
        if got != want:
            mismatches.append(f"{method} {path} {body}\n  kubekv: {got}\n  etcd:   {want}")
    assert not mismatches, "\n".join(mismatches)


def test_gateway_auth_token_header_as_etcd(pair):
    """Users, roles and auth through the gateway; the token goes in Authorization."""
    out = {}
    for name, proc in zip(("kubekv", "etcd"), pair, strict=True):
        seen = []
        for path, body in [
            ("/v3/auth/user/add", '{"name":"root","password":"toor"}'),
            ("/v3/auth/role/add", '{"name":"root"}'),
            ("/v3/auth/user/grant", '{"user":"root","role":"root"}'),
            ("/v3/auth/enable", "{}"),
            ("/v3/kv/put", '{"key":"YXV0aA==","value":"eA=="}'),
            ("/v3/auth/authenticate", '{"name":"root","password":"x"}'),
        ]:
            seen.append(request(proc.port, "POST", path, body, 0))
        status, _, data = request(proc.port, "POST", "/v3/auth/authenticate",
                                  '{"name":"root","password":"toor"}', 0)
        token = json.loads(data)["token"]
        for hdr in ({"Authorization": token}, {"Authorization": "bad"}):
            seen.append(request(proc.port, "POST", "/v3/kv/put",
                                '{"key":"YXV0aA==","value":"eA=="}', 0, hdr))
        seen.append(request(proc.port, "POST", "/v3/auth/disable", "{}", 0,
                            {"Authorization": token}))
        out[name] = seen
    assert out["kubekv"] == out["etcd"]
