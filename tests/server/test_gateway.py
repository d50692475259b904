"""The JSON gateway beyond the side-by-side test: Go-compatible JSON decoding as pure
logic, the gateway over TLS with HTTP/2 (how curl reaches it on an https port), server
streams, and --max-concurrent-streams."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time

import grpc
import h2.connection
import h2.events
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.http.gateway_json import JSONError, decode_stream, go_base64
from tests.harness import ServerProcess, kubekv_process, running

# ------------------------------------------------------------------ JSON decoding


@pytest.mark.parametrize("text, want", [
    ("", b""), ("Zm9v", b"foo"), ("Zm8=", b"fo"), ("Zg==", b"f"), ("Zm9v\nYmFy", b"foobar"),
])
def test_go_base64_decodes(text, want):
    assert go_base64(text) == want


@pytest.mark.parametrize("text, pos", [
    ("not base64!", 3), ("YWJ", 0), ("YW-_", 2), ("Zg=", 3), ("Zg==x", 4), ("=", 0),
])
def test_go_base64_errors_name_the_byte_go_names(text, pos):
    with pytest.raises(JSONError, match=f"^illegal base64 data at input byte {pos}$"):
        go_base64(text)


def test_decode_accepts_proto_and_camel_names_strings_for_int64_and_enum_names():
    (r,) = decode_stream(b'{"key":"YQ==","rangeEnd":"Yg==","limit":"5","sort_order":"DESCEND",'
                         b'"sortTarget":2,"keys_only":true,"bogus":[1],"revision":null}',
                         pb.RangeRequest, 1)
    assert (r.key, r.range_end, r.limit, r.sort_order, r.sort_target, r.keys_only) == (
        b"a", b"b", 5, pb.RangeRequest.DESCEND, pb.RangeRequest.CREATE, True)


def test_decode_nested_oneofs_and_repeated():
    (t,) = decode_stream(b'{"compare":[{"key":"YQ==","target":"MOD","mod_revision":"3"}],'
                         b'"success":[{"requestPut":{"key":"YQ==","value":"Yg=="}},null]}',
                         pb.TxnRequest, 1)
    assert t.compare[0].mod_revision == 3 and t.compare[0].target == pb.Compare.MOD
    assert t.success[0].request_put.value == b"b"
    assert t.success[1].WhichOneof("request") is None  # null: an empty op, as Go


def test_decode_streams_every_value_and_an_empty_body_is_one_empty_request():
    reqs = decode_stream(b' {"progress_request":{}}\n{"cancel_request":{"watch_id":"3"}} ',
                         pb.WatchRequest)
    assert [r.WhichOneof("request_union") for r in reqs] == ["progress_request",
                                                              "cancel_request"]
    assert decode_stream(b"", pb.RangeRequest, 1) == [pb.RangeRequest()]


@pytest.mark.parametrize("body, message", [
    (b'{"limit":"x"}', "invalid character 'x' looking for beginning of value"),
    (b'{"limit":1.5}', "json: cannot unmarshal number 1.5 into Go value of type int64"),
    (b'{"limit":"99999999999999999999"}',
     "json: cannot unmarshal number 99999999999999999999 into Go value of type int64"),
    (b'{"key":1}', "json: cannot unmarshal number into Go value of type []uint8"),
    (b'{"serializable":"true"}', "json: cannot unmarshal string into Go value of type bool"),
    (b'{"sort_order":"NOPE"}',
     'unknown value "\\"NOPE\\"" for enum etcdserverpb.RangeRequest.SortOrder'),
    (b"[1]", "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"),
    (b"nope", "invalid character 'o' in literal null (expecting 'u')"),
    (b'{"key":"YQ==",}', "invalid character '}' looking for beginning of object key string"),
    (b'{"key" "YQ=="}', "invalid character '\"' after object key"),
    (b'{"key":"YQ=="', "unexpected EOF"),
])
def test_decode_errors_in_go_words(body, message):
    with pytest.raises(JSONError) as err:
        decode_stream(body, pb.RangeRequest, 1)
    assert str(err.value) == message


# ------------------------------------------------------------------ over HTTP/2 + TLS


def _h2_post(port: int, path: str, body: bytes, lines: int = 0, timeout: float = 10.0,
             method: str = "POST"):
    """POST (or GET, without a body) over TLS with ALPN h2 (what curl does); status,
    headers and the body (or the first `lines` lines of a stream)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout))
    try:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", method), (":path", path), (":scheme", "https"),
                                (":authority", f"127.0.0.1:{port}"),
                                ("content-type", "application/json")],
                          end_stream=method == "GET")
        if method != "GET":
            conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, headers, data, ended = 0, {}, b"", False
        deadline = time.monotonic() + timeout
        while not ended and time.monotonic() < deadline:
            if lines and data.count(b"\n") >= lines:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = {k.decode(): v.decode() for k, v in ev.headers}
                    status = int(headers[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
        return status, headers, data
    finally:
        sock.close()


def test_gateway_and_health_over_tls_with_http2(tmp_path):
    proc = auto_tls_process(tmp_path)
    with running(proc):
        status, headers, body = _h2_post(proc.port, "/v3/kv/put", b'{"key":"YQ==","value":"Yg=="}')
        assert status == 200 and headers["grpc-metadata-content-type"] == "application/grpc"
        assert json.loads(body)["header"]["revision"] == "2"
        status, _, body = _h2_post(proc.port, "/v3/kv/range", b'{"key":"YQ=="}')
        assert json.loads(body)["kvs"][0]["value"] == "Yg=="
        status, _, body = _h2_post(proc.port, "/v3/kv/range", b'{"key":"YQ==","revision":"9"}')
        assert status == 400 and json.loads(body)["code"] == 11
        status, _, body = _h2_post(
            proc.port, "/v3/watch", b'{"create_request":{"key":"YQ==","start_revision":1}}',
            lines=2)
        first, second = (json.loads(line)["result"] for line in body.splitlines()[:2])
        assert first["created"] and second["events"][0]["kv"]["value"] == "Yg=="


def _server_credentials(proc):
    cert = proc.data_dir / "fixtures" / "client" / "cert.pem"
    if not cert.exists():
        return None
    return grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())


def auto_tls_process(tmp_path) -> ServerProcess:
    """A kubekv (not started) on an https client URL with --auto-tls; its gRPC channel
    trusts the certificate the server makes at start."""
    proc = kubekv_process(tmp_path, "--auto-tls")
    url = f"https://127.0.0.1:{proc.port}"
    for flag in ("--listen-client-urls", "--advertise-client-urls"):
        proc.argv[proc.argv.index(flag) + 1] = url
    proc.tls_credentials = lambda: _server_credentials(proc)
    return proc


# -------------------------------------------------------------------- server streams


def test_observe_streams_leaders_as_result_lines(tmp_path):
    with running(kubekv_process(tmp_path)) as proc:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
        conn.request("POST", "/v3/election/campaign", body=b'{"name":"ZWw=","value":"djE="}')
        leader = json.loads(conn.getresponse().read())["leader"]
        conn.request("POST", "/v3/election/observe", body=b'{"name":"ZWw="}')
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        line = resp.fp.readline() and resp.fp.readline()  # chunk size, then the line
        observed = json.loads(line)["result"]
        assert observed["kv"]["key"] == leader["key"]
        assert observed["kv"]["value"] == "djE="
        conn.close()


# ------------------------------------------------------------ --max-concurrent-streams


def test_max_concurrent_streams_is_advertised_and_kept(tmp_path):
    """A client connection may have that many streams open; the next waits for one."""
    with running(kubekv_process(tmp_path, "--max-concurrent-streams", "2")) as proc:
        ch = grpc.insecure_channel(proc.endpoint)
        try:
            kv = rpc_pb2_grpc.KVStub(ch)
            watch = rpc_pb2_grpc.WatchStub(ch)
            streams = []
            for _ in range(2):
                s = watch.Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=b"w"))]))
                next(s)  # created: the stream is open
                streams.append(s)
            with pytest.raises(grpc.RpcError) as err:
                kv.Range(pb.RangeRequest(key=b"w"), timeout=1.0)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            streams.pop().cancel()
            assert kv.Range(pb.RangeRequest(key=b"w"), timeout=5.0).header.revision == 1
            for s in streams:
                s.cancel()
        finally:
            ch.close()


def test_a_watch_whose_http_client_left_frees_its_stream(tmp_path):
    """The gateway's gRPC streams end with their HTTP clients (here: the next gateway
    call would wait forever behind two leaked streams)."""
    with running(kubekv_process(tmp_path, "--max-concurrent-streams", "2")) as proc:
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
            conn.request("POST", "/v3/watch", body=b'{"create_request":{"key":"YQ=="}}')
            resp = conn.getresponse()
            assert b'"created":true' in (resp.fp.readline() and resp.fp.readline())
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
        conn.request("POST", "/v3/kv/range", body=b'{"key":"YQ=="}')
        assert conn.getresponse().status == 200
        conn.close()
