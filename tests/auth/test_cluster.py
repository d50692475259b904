"""Auth in a 3-member cluster: users, roles and simple tokens reach every member through the log."""

from __future__ import annotations

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing.cluster import ETCD_TIMINGS, Cluster

from .conftest import ok, setup_root


@pytest.fixture
def cluster(tmp_path):
    with Cluster(tmp_path, **ETCD_TIMINGS) as c:
        yield c.start().members


def test_token_from_one_member_works_on_all(cluster):
    a, b, c = cluster
    setup_root(a.endpoint)
    chans = [grpc.insecure_channel(p.endpoint) for p in cluster]
    try:
        for i in range(5):
            # authenticate on one member, use the token at once on the others
            issuer = chans[i % 3]
            token = rpc_pb2_grpc.AuthStub(issuer).Authenticate(
                pb.AuthenticateRequest(name="test-user", password="pass")).token
            for j, ch in enumerate(chans):
                kv = rpc_pb2_grpc.KVStub(ch)
                kv.Put(pb.PutRequest(key=b"foo", value=f"{i}-{j}".encode()),
                       metadata=[("token", token)])
                got = kv.Range(pb.RangeRequest(key=b"foo", serializable=True),
                               metadata=[("token", token)])
                assert got.kvs[0].value == f"{i}-{j}".encode() or j  # followers may lag
                with pytest.raises(grpc.RpcError) as err:
                    kv.Put(pb.PutRequest(key=b"hoo", value=b"x"), metadata=[("token", token)])
                assert err.value.details() == "etcdserver: permission denied"
        # a token from the future (an index no member applied) is simply invalid
        with pytest.raises(grpc.RpcError) as err:
            rpc_pb2_grpc.KVStub(chans[1]).Range(pb.RangeRequest(key=b"foo"),
                                                metadata=[("token", "abcdefghijklmnop.999999")])
        assert err.value.details() == "etcdserver: invalid auth token"
    finally:
        for ch in chans:
            ch.close()
    # every member agrees on the auth state
    for p in cluster:
        assert ok(p.endpoint, "user", "get", "test-user", user="root:root").splitlines() == [
            "User: test-user", "Roles: test-role"]
        assert "Authentication Status: true" in ok(p.endpoint, "auth", "status",
                                                   user="root:root")
