"""Membership changes while part of the cluster is partitioned, under a checked workload."""

from __future__ import annotations

import time

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_testing.polling import wait_for

from .checks import run_with_faults, verify, workload


def progress(w, n: int = 30, timeout: float = 30.0) -> None:
    ok = w.recorder.counts["ok"]
    wait_for(lambda: w.recorder.counts["ok"] >= ok + n, timeout, f"{n} more successful ops")


def test_remove_isolated_member(make_cluster):
    """A follower is cut off; the majority removes it from the cluster and carries on.
    After the heal the removed member must not disturb the remaining two."""
    c = make_cluster(3, faults=True)
    w = workload(c)
    state = {}

    def faults():
        lead = c.wait_leader()
        gone = state["gone"] = next(m for m in c.members if m is not lead)
        c.net.isolate(gone.name)
        progress(w, 20)
        lead.cluster.MemberRemove(pb.MemberRemoveRequest(ID=gone.id), timeout=10)
        c.forget(gone)
        ids = {x.ID for x in lead.cluster.MemberList(pb.MemberListRequest(), timeout=5).members}
        assert ids == {m.id for m in c.members}
        progress(w, 30)
        c.net.heal_all()
        progress(w, 30)
        c.wait_leader(timeout=20)

    history = run_with_faults(w, faults)
    # verify() first waits for every member to apply the same index; before that, a
    # follower may not have applied the removal yet.
    print(verify(c, history, w.recorder))
    for m in c.members:
        lst = m.cluster.MemberList(pb.MemberListRequest(), timeout=5).members
        assert state["gone"].id not in {x.ID for x in lst}, m.name


def test_add_learner_and_promote_during_partition(make_cluster):
    """With one follower cut off, a learner joins (catching up from the log), is
    promoted to a voter, and the 4-member cluster converges once healed."""
    c = make_cluster(3, faults=True)
    w = workload(c)
    state = {}

    def faults():
        lead = c.wait_leader()
        cut = next(m for m in c.members if m is not lead)
        c.net.isolate(cut.name)
        progress(w, 20)
        # The new member first asks the cut-off member, which has not seen the MemberAdd
        # (regression: it used to take that stale list and exit, "not added").
        new = state["new"] = c.add_member(name="m4", wait=False, learner=True, via=lead,
                                          ask_first=cut)
        c.wait_ready([new])

        def promoted():
            try:
                lead.cluster.MemberPromote(pb.MemberPromoteRequest(ID=new.id), timeout=10)
                return True
            except grpc.RpcError as exc:
                if "learner member which is in sync with leader" in (exc.details() or ""):
                    return False
                raise

        wait_for(promoted, 30, "the learner to be promotable")
        progress(w, 30)
        c.net.heal_all()
        progress(w, 30)
        c.wait_leader(timeout=20)

    history = run_with_faults(w, faults)
    # verify() first waits for every member to apply the same index: the member that was
    # cut off may still be catching up on the MemberAdd and MemberPromote entries.
    print(verify(c, history, w.recorder))
    new = state["new"]
    for m in c.members:
        lst = m.cluster.MemberList(pb.MemberListRequest(), timeout=5).members
        assert {x.ID: x.isLearner for x in lst}.get(new.id) is False, m.name


def test_removed_member_shuts_down_after_heal(make_cluster):
    """A member removed while partitioned hears of its removal once healed and stops
    (etcd: "the member has been permanently removed from the cluster")."""
    c = make_cluster(3, faults=True)
    lead = c.wait_leader()
    gone = next(m for m in c.members if m is not lead)
    c.net.isolate(gone.name)
    lead.cluster.MemberRemove(pb.MemberRemoveRequest(ID=gone.id), timeout=10)
    c.forget(gone)
    c.net.heal_all()
    wait_for(lambda: not gone.alive, 10 * c.election_ms / 1000,
             "the removed member to stop")


def test_removing_a_reachable_member_while_another_is_cut_off_is_refused(make_cluster):
    """etcd's strict reconfiguration check: with one follower cut off, removing the other
    would leave the leader alone among the members it hears from, so the leader refuses
    ("unhealthy cluster"); removing the cut-off one leaves a reachable quorum and goes
    through. The leader counts whom it heard from within an election timeout
    (RaftNode.recently_active)."""
    c = make_cluster(3, faults=True)
    lead = c.wait_leader()
    cut, other = [m for m in c.members if m is not lead]
    c.net.isolate(cut.name)

    # Raft clears a follower's recent activity at every election timeout it stayed
    # silent through (check quorum); nothing outside the leader shows when, so wait four
    time.sleep(4 * c.election_ms / 1000)
    with pytest.raises(grpc.RpcError) as refused:
        lead.cluster.MemberRemove(pb.MemberRemoveRequest(ID=other.id), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    assert refused.value.details() == "etcdserver: unhealthy cluster"
    lead.cluster.MemberRemove(pb.MemberRemoveRequest(ID=cut.id), timeout=10)
    c.forget(cut)
    ids = {x.ID for x in lead.cluster.MemberList(pb.MemberListRequest(), timeout=5).members}
    assert ids == {lead.id, other.id}
