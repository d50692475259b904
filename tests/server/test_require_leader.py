"""etcd's `hasleader` metadata: a call carrying it fails at once while there is no leader."""

from types import SimpleNamespace

from kubekv_server.server import ClientServer

_HEADERS = [(b":method", b"POST"), (b":path", b"/etcdserverpb.KV/Put"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def _refusal(leader_id: int, headers: list) -> tuple[int, str] | None:
    server = SimpleNamespace(member=SimpleNamespace(node=SimpleNamespace(leader_id=leader_id)))
    return ClientServer._require_leader(server, headers)


def test_hasleader_is_refused_only_without_a_leader():
    asking = [*_HEADERS, (b"hasleader", b"true")]
    assert _refusal(0, asking) == (14, "etcdserver: no leader")
    assert _refusal(0, [*_HEADERS, (b"hasleader", b"false"), (b"hasleader", b"true")]) == \
        (14, "etcdserver: no leader")  # any of them, as before
    assert _refusal(7, asking) is None
    assert _refusal(0, _HEADERS) is None
    assert _refusal(0, [*_HEADERS, (b"hasleader", b"false")]) is None
