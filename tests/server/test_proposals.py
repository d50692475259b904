"""Proposals: the InternalRequest encoding and the request timeouts (member/proposals.py)."""

from __future__ import annotations

import asyncio

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import internal_pb2
from kubekv_server import errors
from kubekv_server.member.proposals import _Deadlines, _varint, encode_internal


def _by_protobuf(rid: int, field: str, request, caller) -> bytes:
    internal = internal_pb2.InternalRequest(id=rid)
    getattr(internal, field).CopyFrom(request)
    if caller is not None:
        internal.auth.SetInParent()
        internal.auth.username, internal.auth.revision = caller
    return internal.SerializeToString()


REQUESTS = [
    ("put", pb.PutRequest(key=b"k" * 300, value=b"v" * 20000, lease=7, prev_kv=True)),
    ("put", pb.PutRequest()),
    ("auth_status", pb.AuthStatusRequest()),
    ("txn", pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"a"))])),
    ("delete_range", pb.DeleteRangeRequest(key=b"a", range_end=b"b")),
    ("lease_checkpoint",
     pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=1, remaining_TTL=4)])),
    ("member_attributes", internal_pb2.MemberAttributes(member_id=3, name="x", client_urls=["a"])),
]


@pytest.mark.parametrize("rid", [0, 1, 127, 128, 2**63 - 1, 2**64 - 1, (0x1234 << 48) | 12345])
@pytest.mark.parametrize("caller", [None, ("", 0), ("root", 0), ("", 5), ("üser" * 50, 2**40)])
def test_encoding_is_protobufs(rid, caller):
    for field, request in REQUESTS:
        assert encode_internal(rid, field, request.SerializeToString(), caller) == \
            _by_protobuf(rid, field, request, caller)


def test_varint_is_protobufs_across_cached_high_bits():
    """_varint keeps the last id's bits above the lowest 7: ids counting across 2^7 and
    2^28 boundaries, and others between them, still encode as protobuf does."""
    base = (0x1234 << 48) | ((1 << 28) - 3)
    values = [base + i for i in range(6)] + [5, 300, 2**28 - 1, 2**28, base, 2**64 - 1, base + 9]
    values += [base + i for i in range(120, 400)] + [127, 128, 16383, 16384, 2**63, base + 3]
    for n in values:
        assert _varint(n) == internal_pb2.InternalRequest(id=n).SerializeToString()[1:], n


def test_deadlines_fail_only_what_is_not_done_in_time():
    async def main():
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines(loop)
        slow, answered, short = (loop.create_future() for _ in range(3))
        deadlines.add(slow, 0.2)
        deadlines.add(answered, 0.2)
        deadlines.add(short, 0.05)  # a shorter timeout after longer ones still fires first
        answered.set_result("ok")
        await asyncio.sleep(0.1)
        assert short.exception() is errors.TIMEOUT
        assert not slow.done()
        await asyncio.sleep(0.15)
        assert slow.exception() is errors.TIMEOUT
        assert answered.result() == "ok"
        assert deadlines._timer is None  # nothing left to watch

    asyncio.run(main())


def test_deadlines_drop_answered_proposals_behind_an_unanswered_one():
    async def main():
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines(loop)
        stalled = loop.create_future()
        deadlines.add(stalled, 60.0)
        for _ in range(5000):
            fut = loop.create_future()
            deadlines.add(fut, 60.0)
            fut.set_result(None)
        assert len(deadlines._queues[60.0]) <= 2 * 1024  # not 5001
        assert deadlines._queues[60.0][0][1] is stalled
        deadlines._timer.cancel()

    asyncio.run(main())
