"""--force-new-cluster: the disaster-recovery path for a cluster whose quorum is lost."""

from __future__ import annotations

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.raftpb import raft_pb2
from kubekv_raft.core.storage import MemoryStorage
from kubekv_server.member.force_new_cluster import force_standalone, member_ids
from kubekv_testing.polling import wait_for


def _cc(kind: int, node: int, index: int) -> raft_pb2.Entry:
    return raft_pb2.Entry(term=2, index=index, type=raft_pb2.EntryConfChange,
                          data=raft_pb2.ConfChange(type=kind, node_id=node).SerializeToString())


def test_member_ids_follow_committed_conf_changes():
    cs = raft_pb2.ConfState(voters=[1, 2, 3], learners=[4])
    ents = [_cc(raft_pb2.ConfChangeRemoveNode, 3, 5), _cc(raft_pb2.ConfChangeAddNode, 5, 6),
            raft_pb2.Entry(term=2, index=7, data=b"x")]
    assert member_ids(cs, ents) == {1, 2, 4, 5}


@pytest.mark.parametrize("self_id", [1, 9])
def test_log_is_rewritten_for_a_lone_member(self_id):
    st = MemoryStorage()
    st.set_conf_state(raft_pb2.ConfState(voters=[1, 2, 3]))
    st.append([raft_pb2.Entry(term=2, index=i, data=b"%d" % i) for i in range(1, 8)],
              raft_pb2.HardState(term=3, vote=2, commit=5))
    force_standalone(st, raft_pb2.ConfState(voters=[1, 2, 3]), 4, self_id, 7, {"id": self_id})
    hs, _ = st.initial_state()
    tail = st.entries(6, st.last_index() + 1)
    changes = [raft_pb2.ConfChange.FromString(e.data) for e in tail]
    want = [] if self_id == 1 else [(raft_pb2.ConfChangeAddNode, 9)]
    want += [(raft_pb2.ConfChangeRemoveNode, i) for i in (1, 2, 3) if i != self_id]
    assert [(c.type, c.node_id) for c in changes] == want  # entries 6 and 7 were uncommitted
    assert all(e.term == 3 for e in tail) and (hs.term, hs.vote) == (3, 2)
    assert hs.commit == st.last_index() == 5 + len(want)


def test_survivor_of_a_lost_quorum_restarts_alone_with_its_data(make_cluster):
    c = make_cluster(3)
    lead = c.wait_leader()
    for i in range(30):
        lead.kv.Put(pb.PutRequest(key=b"k%02d" % i, value=b"v%d" % i), timeout=5)
    c.wait_converged()
    survivor = next(m for m in c.members if m is not lead)
    want = survivor.kv.Range(pb.RangeRequest(key=b"k", range_end=b"l"), timeout=5)
    for m in list(c.members):  # the quorum is gone for good
        m.kill()
        if m is not survivor:
            c.forget(m)

    survivor.extra_env["ETCD_FORCE_NEW_CLUSTER"] = "true"
    survivor.restart()
    assert [m.ID for m in survivor.cluster.MemberList(pb.MemberListRequest()).members] == \
        [survivor.id]
    got = survivor.kv.Range(pb.RangeRequest(key=b"k", range_end=b"l"), timeout=5)
    assert list(got.kvs) == list(want.kvs)
    assert "forcing restart member" in survivor.log_path.read_text()
    survivor.kv.Put(pb.PutRequest(key=b"after", value=b"1"), timeout=5)

    # an ordinary restart afterwards keeps the one-member cluster; then it grows again
    del survivor.extra_env["ETCD_FORCE_NEW_CLUSTER"]
    survivor.restart()
    new = c.add_member(name="m4", wait=False, learner=False, via=survivor)
    c.wait_ready([new])
    wait_for(lambda: new.kv.Range(pb.RangeRequest(key=b"after", serializable=True),
                                  timeout=5).count == 1, 20, "the new member to catch up")
    lst = survivor.cluster.MemberList(pb.MemberListRequest()).members
    assert sorted(m.ID for m in lst) == sorted([survivor.id, new.id])
