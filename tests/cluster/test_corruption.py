"""Corruption checks (--experimental-initial-corrupt-check, --experimental-corrupt-check-time):
etcd's decisions as pure functions, and a cluster with one member's history altered."""

from __future__ import annotations

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import hashpeer_pb2 as hp
from etcdproto.mvccpb import kv_pb2
from kubekv_server.backend.state_db import Backend
from kubekv_server.member.corruption import LocalHash, PeerHash, initial_mismatches, leader_findings
from kubekv_testing.polling import wait_for


def _peer(pid: int, h: int, rev: int, crev: int) -> PeerHash:
    return PeerHash(pid, ["http://p"], hp.PeerHashKVResponse(member_id=pid, hash=h,
                                                             revision=rev, compact_revision=crev))


def test_initial_check_counts_hash_mismatches_at_the_same_compact_revision():
    local = LocalHash(hash=7, revision=10, compact_revision=3)
    peers = [_peer(1, 7, 12, 3), _peer(2, 8, 12, 3), _peer(3, 9, 12, 4),
             PeerHash(4, ["http://q"], error="etcdserver: mvcc: required revision is a "
                                              "future revision")]
    assert initial_mismatches(9, local, peers) == 1  # peer 3 compacted differently: skipped


def test_leader_findings():
    first = second = LocalHash(hash=7, revision=10, compact_revision=3)
    assert leader_findings(first, second, [_peer(1, 7, 10, 3), _peer(2, 5, 9, 2)]) == []
    found = leader_findings(first, second, [_peer(1, 8, 10, 3), _peer(2, 7, 11, 4)])
    assert [f.split('"')[1] for f in found] == [
        "same compact revision then hashes must match",
        "revision from follower must be less than or equal to leader's",
        "compact revision from follower must be less than or equal to leader's"]
    # the leader's own hash changed at the same revision
    assert leader_findings(first, LocalHash(8, 10, 3), []) != []


def _alter_newest_value(m) -> None:
    """Change the value of the newest history row in a stopped member's state db."""
    backend = Backend(str(m.data_dir / "member" / "state"))
    try:
        history = backend.open_db(b"key")
        with backend.env.begin(write=True) as txn:
            cur = txn.cursor(db=history)
            assert cur.last()
            kv = kv_pb2.KeyValue.FromString(cur.value())
            kv.value = b"bit rot"
            txn.put(cur.key(), kv.SerializeToString(), db=history)
    finally:
        backend.close()


def test_a_member_with_altered_history_is_found(make_cluster):
    c = make_cluster(3, flags=["--experimental-corrupt-check-time", "1s"])
    lead = c.wait_leader()
    for i in range(10):
        lead.kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v"), timeout=5)
    c.wait_converged()
    bad = next(m for m in c.members if m is not lead)
    bad.stop()
    _alter_newest_value(bad)

    # restarting with the initial check, it refuses to serve
    bad.flags.append("--experimental-initial-corrupt-check")
    bad.launch()
    assert bad.proc.wait(60) != 0
    assert "found data inconsistency with peers" in bad.log_path.read_text()

    # without it, it rejoins; the leader's periodic check raises the CORRUPT alarm
    bad.flags.pop()
    bad.restart()

    def alarmed():
        alarms = lead.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET),
                                        timeout=5).alarms
        return [(a.memberID, a.alarm) for a in alarms] == [(0, pb.CORRUPT)]

    wait_for(alarmed, 30, "the CORRUPT alarm")
    def refused():  # every member applies the alarm, then refuses writes
        try:
            lead.kv.Put(pb.PutRequest(key=b"after", value=b"v"), timeout=5)
            return None
        except grpc.RpcError as exc:
            return exc.code(), exc.details()

    assert wait_for(refused, 10, "writes refused", interval=0) == (
        grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
    assert lead.kv.Range(pb.RangeRequest(key=b"k1"), timeout=5).count == 1  # reads go on
