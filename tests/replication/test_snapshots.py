"""Raft snapshots on real processes: --snapshot-count compacts the log, and a member
that fell behind the compacted log catches up from the leader's snapshot."""

from __future__ import annotations

import glob

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_testing.cluster import ETCD_TIMINGS, Cluster
from kubekv_testing.polling import wait_for


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, **ETCD_TIMINGS, flags=["--snapshot-count", "20"])
    with c:
        yield c.start()


def test_lagging_member_catches_up_from_a_snapshot(cluster):
    leader = cluster.wait_leader()
    follower = next(p for p in cluster.members if p is not leader)
    follower_id = follower.maintenance.Status(pb.StatusRequest()).header.member_id
    follower.kill()
    for i in range(120):
        leader.kv.Put(pb.PutRequest(key=b"k%03d" % i, value=b"v%d" % i))
    snaps = glob.glob(str(leader.data_dir / "member" / "snap" / "state-*.mdb"))
    assert snaps, "the leader took no snapshot"

    follower.start(60)
    last = leader.kv.Range(pb.RangeRequest(key=b"k119")).header.revision
    wait_for(lambda: follower.kv.Range(
        pb.RangeRequest(key=b"k", range_end=b"l", serializable=True, count_only=True)
    ).count == 120, 30, "the follower to hold all 120 keys")
    assert "snapshot_installed" in follower.log_path.read_text()
    # every member holds the same history up to the same revision
    hashes = {p.maintenance.HashKV(pb.HashKVRequest(revision=last)).hash
              for p in cluster.members}
    assert len(hashes) == 1
    # ... and, once every member applied the same entries, the same whole state db
    wait_for(lambda: len({p.maintenance.Status(pb.StatusRequest()).raftAppliedIndex
                          for p in cluster.members}) == 1, 30, "one applied index")
    assert len({p.maintenance.Hash(pb.HashRequest()).hash for p in cluster.members}) == 1

    # the installed snapshot did not change who the follower is, across a crash too
    follower.kill()
    follower.start(60)
    st = follower.maintenance.Status(pb.StatusRequest())
    assert st.header.member_id == follower_id
    follower.kv.Put(pb.PutRequest(key=b"after", value=b"restart"))
    wait_for(lambda: leader.kv.Range(pb.RangeRequest(key=b"after")).kvs[0].value == b"restart",
             30, "the write after the restart on the leader")
