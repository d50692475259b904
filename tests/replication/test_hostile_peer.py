"""A real kubekv member's peer port under input our transport never sends.

Every call ends in a gRPC status (no traceback in the member's log), each kind of
violation is logged once however often it is repeated, the member keeps serving, and
it stops cleanly afterwards.
"""

from __future__ import annotations

import re

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import peer_pb2_grpc as peer_grpc
from etcdproto.raftpb import raft_pb2 as rpb
from tests.harness import kubekv_process

PEER_METHODS = [
    ("/raftpb.RaftPeer/Stream", "stream"),
    ("/raftpb.RaftPeer/SendSnapshot", "stream"),
    ("/kubekvpb.MemberDirectory/Members", "unary"),
    ("/kubekvpb.HashPeer/HashKV", "unary"),
    ("/kubekvpb.LeasePeer/LeaseRenew", "unary"),
    ("/kubekvpb.LeasePeer/LeaseTimeToLive", "unary"),
]
GARBAGE = b"\xff\xff\xff\xff\x0f not a protobuf"
BAD = re.compile(r"Traceback|Exception not handled|CancelledError|level=(ERROR|CRITICAL)")


@pytest.fixture
def member(tmp_path):
    proc = kubekv_process(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def peer_target(proc) -> str:
    url = proc.argv[proc.argv.index("--listen-peer-urls") + 1]
    return url.removeprefix("http://")


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_hostile_peer_input_ends_in_statuses_logged_once(member):
    header = member.kv.Range(pb.RangeRequest(key=b"x"), timeout=5).header
    me, cid = header.member_id, header.cluster_id
    with grpc.insecure_channel(peer_target(member)) as ch:
        stub = peer_grpc.RaftPeerStub(ch)
        for _ in range(3):
            for method, kind in PEER_METHODS:
                call = (ch.stream_unary(method) if kind == "stream" else ch.unary_unary(method))
                arg = iter([GARBAGE]) if kind == "stream" else GARBAGE
                assert code_of(lambda c=call, a=arg: c(a, timeout=5)) == \
                    grpc.StatusCode.INVALID_ARGUMENT, method
            # a MsgSnap on the stream, naming a file for the member to install from
            snap = rpb.Message(type=rpb.MsgSnap, from_=7, to=me, term=99)
            snap.snapshot.data = peer_pb.ReceivedSnapshot(path="/etc/passwd").SerializeToString()
            snap.snapshot.metadata.index = 10**9
            batch = peer_pb.MessageBatch(cluster_id=cid, from_=7, to=me, messages=[snap])
            assert code_of(lambda b=batch: stub.Stream(iter([b]), timeout=5)) == \
                grpc.StatusCode.INVALID_ARGUMENT
            # the same as an inline snapshot
            chunks = [peer_pb.SnapshotChunk(cluster_id=cid, message=snap, has_file=False),
                      peer_pb.SnapshotChunk(last=True)]
            assert code_of(lambda c=chunks: stub.SendSnapshot(iter(c), timeout=5)) == \
                grpc.StatusCode.FAILED_PRECONDITION
    # still serving, with the state it had
    member.kv.Put(pb.PutRequest(key=b"after", value=b"ok"), timeout=5)
    assert member.kv.Range(pb.RangeRequest(key=b"after"), timeout=5).kvs[0].value == b"ok"
    assert member.stop() == 0
    log = member.log_path.read_text(errors="replace")
    assert [line for line in log.splitlines() if BAD.search(line)] == []
    for event in ("peer_malformed_request", "peer_bad_message_type",
                  "peer_snapshot_without_file"):
        assert len(re.findall(rf"event={event} peer=127\.0\.0\.1\b", log)) == 1, event
    assert "/etc/passwd" not in log
