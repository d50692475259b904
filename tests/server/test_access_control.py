"""--host-whitelist and --cors on the client port's plain HTTP, side by side with etcd."""

from __future__ import annotations

import http.client

import pytest

from kubekv_server.http.access_control import hostname
from tests.harness import etcd_process, kubekv_process, running

FLAGS = ("--host-whitelist", "good.example,127.0.0.1", "--cors", "http://app.example:8080")


def _ask(port: int, method: str, path: str, headers: dict) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        body = b'{"key":"Zm9v"}' if method == "POST" else None
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        cors = sorted((k, v) for k, v in r.getheaders() if k.startswith("Access-Control"))
        return r.status, data if r.status == 421 else b"", cors
    finally:
        conn.close()


REQUESTS = [
    ("GET", "/health", {"Host": "evil.example"}),
    ("GET", "/health", {"Host": "good.example:2379"}),
    ("POST", "/v3/kv/range", {"Host": "evil.example:80", "Origin": "http://app.example:8080"}),
    ("POST", "/v3/kv/range", {"Host": "127.0.0.1", "Origin": "http://app.example:8080"}),
    ("POST", "/v3/kv/range", {"Host": "127.0.0.1", "Origin": "http://other.example"}),
    ("OPTIONS", "/v3/kv/range", {"Host": "good.example", "Origin": "http://app.example:8080"}),
]


def test_host_whitelist_and_cors_like_etcd(tmp_path):
    seen = []
    for factory in (etcd_process, kubekv_process):
        with running(factory(tmp_path, *FLAGS)) as proc:
            seen.append([_ask(proc.port, *r) for r in REQUESTS])
    for request, theirs, ours in zip(REQUESTS, seen[0], seen[1], strict=True):
        assert ours == theirs, request
    assert [s[0] for s in seen[0]] == [421, 200, 421, 200, 200, 200]


@pytest.mark.parametrize("headers, host", [
    ({"host": "a.example:2379"}, "a.example"), ({"host": "a.example"}, "a.example"),
    ({"host": "[::1]:2379"}, "::1"), ({":authority": "127.0.0.1:1"}, "127.0.0.1"),
    ({}, ""),
])
def test_hostname(headers, host):
    assert hostname(headers) == host


def test_cors_origins_must_be_urls_with_ports():
    from kubekv_server.config.flags import FlagError, parse_args

    with pytest.raises(FlagError, match='invalid value "http://a" for flag -cors: URL address '
                       'does not have the form "host:port": http://a'):
        parse_args(["--cors", "http://a"], environ={})
