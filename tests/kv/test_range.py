"""execute_range answers from the stored bytes when it may (no filter, key order, values
kept): the response must be exactly the one built from parsed KeyValues."""

from __future__ import annotations

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb.kv_pb2 import KeyValue
from kubekv_server.kv.range import encoded_range, execute_range
from kubekv_server.mvcc import MVCCStore
from tests.mvcc.conftest import open_env

# values whose KeyValue lengths need one, two and three varint bytes
SIZES = [0, 5, 100, 127, 128, 300, 16_300, 16_400, 70_000]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    env = open_env(str(tmp_path_factory.mktemp("range") / "db"))
    s = MVCCStore(env)
    with env.begin(write=True) as txn:
        for i, n in enumerate(SIZES):
            with s.write(txn) as w:
                w.put(b"k%02d" % i, b"v" * n, lease=i)
        with s.write(txn) as w:  # a second version of one key
            w.put(b"k03", b"newer")
    yield s
    env.close()


def _parsed(store: MVCCStore, r: pb.RangeRequest) -> pb.RangeResponse:
    """The same answer through KeyValue objects (what the other requests take)."""
    with store.read() as txn:
        res = txn.range(r.key, r.range_end or None, rev=r.revision)
    kvs = [KeyValue.FromString(b) for b in res.raw_kvs]
    resp = pb.RangeResponse(count=res.count)
    resp.header.revision = res.rev
    if r.limit and len(kvs) > r.limit:
        kvs, resp.more = kvs[: r.limit], True
    resp.kvs.extend([] if r.count_only else kvs)
    return resp


REQUESTS = [
    pb.RangeRequest(key=b"k", range_end=b"l"),
    pb.RangeRequest(key=b"k", range_end=b"l", limit=4),
    pb.RangeRequest(key=b"k", range_end=b"l", limit=len(SIZES)),
    pb.RangeRequest(key=b"k", range_end=b"l", count_only=True),
    pb.RangeRequest(key=b"k03"),
    pb.RangeRequest(key=b"k03", revision=4),
    pb.RangeRequest(key=b"k", range_end=b"l", revision=5, limit=2),
    pb.RangeRequest(key=b"k", range_end=b"l", sort_order=pb.RangeRequest.ASCEND),
    pb.RangeRequest(key=b"nothing", range_end=b"nothinh"),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: str(r).replace("\n", " "))
def test_answer_from_stored_bytes_equals_the_parsed_one(store, req):
    with store.read() as txn:
        got = execute_range(txn, req)
    want = _parsed(store, req)
    assert got == want
    assert got.SerializeToString() == want.SerializeToString()


def _fill(h: pb.ResponseHeader) -> None:
    h.cluster_id, h.member_id, h.raft_term = 0x1234567890ABCDEF, 42, 3


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: str(r).replace("\n", " "))
def test_the_encoded_answer_is_the_message_serialized(store, req):
    """What the KV service sends without building a message: the same bytes."""
    with store.read() as txn:
        encoded = encoded_range(txn, req, _fill)
        want = execute_range(txn, req)
    _fill(want.header)
    assert encoded is not None
    assert encoded.SerializeToString() == want.SerializeToString()


def test_requests_that_need_the_values_parsed_still_get_them(store):
    with store.read() as txn:
        desc = execute_range(txn, pb.RangeRequest(
            key=b"k", range_end=b"l", sort_order=pb.RangeRequest.DESCEND, limit=2))
        keys = execute_range(txn, pb.RangeRequest(key=b"k", range_end=b"l", keys_only=True))
    assert [kv.key for kv in desc.kvs] == [b"k08", b"k07"] and desc.more
    assert [kv.value for kv in keys.kvs] == [b""] * len(SIZES)
    with store.read() as txn:
        for r in (pb.RangeRequest(key=b"k", range_end=b"l", keys_only=True),
                  pb.RangeRequest(key=b"k", range_end=b"l", min_mod_revision=3),
                  pb.RangeRequest(key=b"k", range_end=b"l", sort_target=pb.RangeRequest.MOD)):
            assert encoded_range(txn, r, _fill) is None
