"""Membership on the simulator: learners, removing the leader, joint consensus, transfers."""

from __future__ import annotations

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import ProposalDroppedError
from kubekv_raft.core.raft import StateType
from kubekv_raft.sim import SimCluster


def cc(t: int, node: int) -> pb.ConfChange:
    return pb.ConfChange(type=t, node_id=node)


def change(c: SimCluster, change_msg, timeout_ms: int = 10_000) -> None:
    """Propose a conf change at the leader until the leader's config reflects it (a leader
    elected after the change applied, as when the old one removed itself and its hand-off
    was refused, already does: the change is not proposed again)."""
    deadline = c.now + timeout_ms
    before = None
    while c.now < deadline:
        lead = c.leader()
        if lead is not None:
            node = c.nodes[lead]
            now = node.raw.raft.prs.conf_state()
            if before is None:
                before = now
            elif now != before and not now.voters_outgoing:
                return
            try:
                node.raw.propose_conf_change(change_msg)
            except ProposalDroppedError:
                c.run_for(50)
                continue
            c._drain(node)
            for _ in range(100):
                c.run_for(20)
                lead2 = c.leader()
                if lead2 is None:
                    break
                after = c.nodes[lead2].raw.raft.prs.conf_state()
                if after != before and not after.voters_outgoing:
                    return
        c.run_for(50)
    raise AssertionError(f"conf change {change_msg} did not apply")


def conf(c: SimCluster) -> pb.ConfState:
    lead = c.leader()
    assert lead is not None
    return c.nodes[lead].raw.raft.prs.conf_state()


def test_learner_catches_up_by_snapshot_and_is_promoted():
    c = SimCluster(3, 11, snapshot_interval=5)
    for k in range(30):
        c.one(b"v%d" % k, 3)
    c.add_node(4)
    change(c, cc(pb.ConfChangeAddLearnerNode, 4))
    assert list(conf(c).learners) == [4]
    idx = c.one(b"after-learner", 4)
    n4 = c.nodes[4]
    assert n4.storage.snapshot().metadata.index > 0, "learner should catch up by snapshot"
    assert n4.raw.raft.is_learner and not n4.raw.raft.promotable()
    change(c, cc(pb.ConfChangeAddNode, 4))
    assert sorted(conf(c).voters) == [1, 2, 3, 4]
    c.one(b"after-promotion", 4)
    assert c.nodes[4].applied > idx
    # With 4 voters, losing two stalls; losing one does not.
    c.crash(1 if c.leader() != 1 else 2)
    c.one(b"three-of-four", 3)


def test_remove_the_leader():
    c = SimCluster(3, 12)
    c.one(b"x", 3)
    old = c.check_one_leader()
    change(c, cc(pb.ConfChangeRemoveNode, old))
    c.run_for(1000)
    new = c.check_one_leader()
    assert new != old
    assert old not in conf(c).voters
    assert c.nodes[old].raw.raft.state == StateType.FOLLOWER
    assert not c.nodes[old].raw.raft.promotable()
    c.one(b"two-left", 2)


def test_joint_consensus_with_auto_leave():
    c = SimCluster(3, 13)
    c.one(b"x", 3)
    for i in (4, 5):
        c.add_node(i)
    v2 = pb.ConfChangeV2(
        changes=[
            pb.ConfChangeSingle(type=pb.ConfChangeAddNode, node_id=4),
            pb.ConfChangeSingle(type=pb.ConfChangeAddNode, node_id=5),
            pb.ConfChangeSingle(type=pb.ConfChangeRemoveNode, node_id=1),
        ]
    )
    change(c, v2)
    cs = conf(c)
    assert sorted(cs.voters) == [2, 3, 4, 5] and not cs.voters_outgoing and not cs.auto_leave
    c.one(b"in-new-config", 4)


def test_membership_change_during_partition():
    c = SimCluster(5, 14)
    c.one(b"x", 5)
    lead = c.check_one_leader()
    minority = [i for i in range(1, 6) if i != lead][:2]
    majority = [i for i in range(1, 6) if i not in minority]
    c.partition(majority, minority)
    victim = minority[0]
    change(c, cc(pb.ConfChangeRemoveNode, victim))
    assert victim not in conf(c).voters
    c.one(b"during", 3)
    c.heal()
    c.run_for(1000)
    c.one(b"healed", 4)
    # The removed node never leads again.
    c.run_for(3000)
    assert c.nodes[victim].raw.raft.state != StateType.LEADER


def test_transfer_leadership_under_load():
    c = SimCluster(3, 15, reliable=False)
    c.one(b"x", 3)
    lead = c.check_one_leader()
    target = lead % 3 + 1
    done = False
    for k in range(300):
        c.propose(lead, b"load-%d" % k)
        if k == 50:
            c.nodes[lead].raw.transfer_leadership(target)
            c._drain(c.nodes[lead])
        c.run_for(3)
        if c.leader() == target:
            done = True
    assert done, "leadership never moved to the transferee"
    c.set_unreliable(False)
    c.one(b"after-transfer", 3)


def test_conf_change_refused_while_one_pending():
    c = SimCluster(3, 16)
    c.one(b"x", 3)
    lead = c.check_one_leader()
    node = c.nodes[lead]
    for i in (4, 5):
        c.add_node(i)
    node.raw.propose_conf_change(cc(pb.ConfChangeAddLearnerNode, 4))
    node.raw.propose_conf_change(cc(pb.ConfChangeAddLearnerNode, 5))  # becomes a no-op
    c._drain(node)
    c.run_for(500)
    assert list(conf(c).learners) == [4]
