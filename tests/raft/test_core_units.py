"""Unit tests of the core's pieces: quorum, progress, log, conf changes, reads, RawNode."""

from __future__ import annotations

import pytest

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.conf_change import Changer, ConfChangeError, enter_joint, leave_joint, restore
from kubekv_raft.core.errors import (
    CompactedError,
    ProposalDroppedError,
    StepLocalMsgError,
    StepPeerNotFoundError,
)
from kubekv_raft.core.log import RaftLog, limit_size
from kubekv_raft.core.log_unstable import Unstable
from kubekv_raft.core.progress import Inflights, Progress, ProgressState
from kubekv_raft.core.quorum import NO_LIMIT, JointConfig, MajorityConfig, VoteResult
from kubekv_raft.core.raft import NONE, Config, SplitMix64, StateType
from kubekv_raft.core.raw_node import RawNode
from kubekv_raft.core.read_only import ReadOnlyOption
from kubekv_raft.core.storage import MemoryStorage
from kubekv_raft.core.tracker import ProgressTracker

from .fakenet import Net, new_raft, persist, read_messages


def single(t: int, i: int) -> pb.ConfChangeSingle:
    return pb.ConfChangeSingle(type=t, node_id=i)


ADD, REMOVE, LEARNER, UPDATE = (
    pb.ConfChangeAddNode,
    pb.ConfChangeRemoveNode,
    pb.ConfChangeAddLearnerNode,
    pb.ConfChangeUpdateNode,
)


# -- quorum -----------------------------------------------------------------------------------
def test_majority_and_joint_arithmetic():
    acked = {1: 5, 2: 3, 3: 9}.get
    assert MajorityConfig().committed_index(lambda i: 0) == NO_LIMIT
    assert MajorityConfig({1}).committed_index(lambda i: 7) == 7
    assert MajorityConfig({1, 2, 3}).committed_index(lambda i: acked(i, 0)) == 5
    j = JointConfig({1, 2, 3}, {3})
    assert j.committed_index(lambda i: acked(i, 0)) == 5
    assert j.ids() == {1, 2, 3}
    m = MajorityConfig({1, 2, 3})
    assert m.vote_result({1: True, 2: True}) == VoteResult.WON
    assert m.vote_result({1: True}) == VoteResult.PENDING
    assert m.vote_result({1: False, 2: False}) == VoteResult.LOST
    assert JointConfig({1, 2, 3}, {4, 5, 6}).vote_result({1: True, 2: True}) == VoteResult.PENDING
    assert JointConfig({1, 2, 3}, {4, 5, 6}).vote_result({4: False, 5: False}) == VoteResult.LOST
    assert JointConfig({1}, {1}).vote_result({1: True}) == VoteResult.WON


# -- progress ---------------------------------------------------------------------------------
def test_inflights_and_progress_transitions():
    inf = Inflights(2)
    inf.add(3)
    inf.add(5)
    assert inf.full() and inf.count() == 2
    with pytest.raises(RuntimeError):
        inf.add(6)
    inf.free_le(3)
    assert inf.count() == 1
    inf.free_first_one()
    inf.free_first_one()
    assert inf.count() == 0
    p = Progress(5, Inflights(4), match=4)
    assert not p.is_paused()
    assert not p.maybe_decr_to(3, 3)  # stale reject in probe
    assert p.maybe_decr_to(4, 2) and p.next == 3
    p.become_snapshot(10)
    assert p.is_paused() and "pending_snap=10" in repr(p)
    p.become_probe()
    assert p.next == 11
    p.become_replicate()
    assert not p.maybe_decr_to(2, 1)  # rejected <= match in replicate
    assert p.maybe_decr_to(6, 5) and p.next == 5
    assert not p.maybe_update(3) and p.maybe_update(8)
    q = p.copy()
    assert (q.match, q.next, q.state) == (8, 9, ProgressState.REPLICATE)


def test_tracker_str_and_quorum_active():
    t = ProgressTracker(4)
    c = Changer(t, 10)
    t.config, t.progress = c.simple([single(ADD, 1), single(LEARNER, 4)])
    t.config, t.progress = Changer(t, 10).simple([single(ADD, 2)])
    t.config, t.progress = Changer(t, 10).enter_joint(True, [single(ADD, 3), single(LEARNER, 2)])
    s = str(t.config)
    assert "&&" in s and "learners=[4]" in s and "learners_next=[2]" in s and "autoleave" in s
    assert t.voter_nodes() == [1, 2, 3] and t.learner_nodes() == [4]
    assert t.quorum_active()  # new progresses start recently active
    for pr in t.progress.values():
        pr.recent_active = False
    assert not t.quorum_active()
    t.record_vote(1, True)
    t.record_vote(1, False)  # first answer wins
    t.record_vote(4, True)  # learner: not counted
    t.record_vote(3, False)
    assert t.tally_votes()[:2] == (1, 1)


# -- conf changes -----------------------------------------------------------------------------
def changer(*voters: int, learners=()) -> Changer:
    t = ProgressTracker(4)
    restore(Changer(t, 1), pb.ConfState(voters=voters, learners=learners))
    return Changer(t, 1)


def test_conf_change_errors():
    with pytest.raises(ConfChangeError, match="more than one voter"):
        changer(1).simple([single(ADD, 2), single(ADD, 3)])
    with pytest.raises(ConfChangeError, match="removed all voters"):
        changer(1).simple([single(REMOVE, 1)])
    with pytest.raises(ConfChangeError, match="zero-voter"):
        Changer(ProgressTracker(4), 1).enter_joint(False, [])
    c = changer(1, 2, 3)
    c.tracker.config, c.tracker.progress = c.enter_joint(False, [single(ADD, 4)])
    with pytest.raises(ConfChangeError, match="already joint"):
        c.enter_joint(False, [])
    with pytest.raises(ConfChangeError, match="simple config change in joint"):
        c.simple([single(ADD, 5)])
    with pytest.raises(ConfChangeError, match="non-joint"):
        changer(1).leave_joint()
    with pytest.raises(ConfChangeError, match="unexpected conf type"):
        changer(1).simple([single(99, 2)])


def test_conf_change_learner_paths():
    c = changer(1, 2, 3)
    cfg, prs = c.simple([single(UPDATE, 2), single(ADD, 0), single(LEARNER, 4)])
    c.tracker.config, c.tracker.progress = cfg, prs
    cfg, prs = c.simple([single(LEARNER, 4)])  # already a learner: no-op
    c.tracker.config, c.tracker.progress = cfg, prs
    c.tracker.config, c.tracker.progress = c.simple([single(ADD, 4)])
    cfg, prs = c.simple([single(REMOVE, 3)])
    assert cfg.voters.incoming == {1, 2, 4} and 3 not in prs
    c.tracker.config, c.tracker.progress = cfg, prs
    cfg, prs = c.simple([single(REMOVE, 9)])  # unknown: no-op
    cfg, prs = c.simple([single(LEARNER, 2)])  # demote outside joint
    assert 2 in cfg.learners and prs[2].is_learner
    # Demote through joint: learners_next until leaving.
    cfg, prs = c.enter_joint(False, [single(LEARNER, 1)])
    assert 1 in cfg.learners_next
    c.tracker.config, c.tracker.progress = cfg, prs
    cfg, prs = c.leave_joint()
    assert 1 in cfg.learners and not cfg.voters.outgoing
    cs = pb.ConfState(voters=[1, 2], voters_outgoing=[1, 3], learners_next=[3], auto_leave=True)
    t = ProgressTracker(4)
    cfg, _ = restore(Changer(t, 1), cs)
    assert cfg.voters.outgoing == {1, 3} and cfg.learners_next == {3} and cfg.auto_leave


def test_enter_and_leave_joint_detection():
    assert enter_joint(pb.ConfChangeV2(changes=[single(ADD, 1)])) == (False, False)
    assert enter_joint(pb.ConfChangeV2(changes=[single(ADD, 1), single(ADD, 2)])) == (True, True)
    explicit = pb.ConfChangeV2(transition=pb.ConfChangeTransitionJointExplicit)
    assert enter_joint(explicit) == (False, True)
    assert leave_joint(pb.ConfChangeV2(context=b"x"))
    assert not leave_joint(explicit)


def test_explicit_joint_needs_manual_leave():
    n = Net.of(3)
    n.hup(1)
    r = n.peers[1]
    cc = pb.ConfChangeV2(transition=pb.ConfChangeTransitionJointExplicit, changes=[single(ADD, 4)])
    cs = r.apply_conf_change(cc)
    assert list(cs.voters_outgoing) == [1, 2, 3] and not cs.auto_leave
    cs = r.apply_conf_change(pb.ConfChangeV2())
    assert list(cs.voters) == [1, 2, 3, 4] and not cs.voters_outgoing


# -- log --------------------------------------------------------------------------------------
def test_log_edges():
    st = MemoryStorage()
    st.append([pb.Entry(index=i, term=1, data=b"x" * 10) for i in range(1, 6)])
    st.compact(2)
    rl = RaftLog(st)
    assert "committed=2" in repr(rl)
    assert rl.term(1) == 0  # below the dummy: 0
    with pytest.raises(CompactedError):
        rl.slice(1, 3)
    with pytest.raises(AssertionError):
        rl.slice(3, 9)
    assert rl.zero_term(99) == 0 and rl.find_conflict_by_term(5, 0) == 1
    assert len(rl.slice(3, 6, max_size=15)) == 1
    rl.append([pb.Entry(index=6, term=2), pb.Entry(index=7, term=2)])
    assert [e.index for e in rl.slice(4, 8)] == [4, 5, 6, 7]
    assert len(rl.slice(4, 8, max_size=1)) == 1
    with pytest.raises(AssertionError):
        rl.append([pb.Entry(index=2, term=3)])  # below commit
    with pytest.raises(AssertionError,  # etcd's words
                       match=r"^tocommit\(99\) is out of range \[lastIndex\(7\)\]\. "
                             r"Was the raft log corrupted, truncated, or lost\?$"):
        rl.commit_to(99)
    with pytest.raises(AssertionError):
        rl.applied_to(99)
    rl.applied_to(0)
    with pytest.raises(AssertionError):
        rl.maybe_append(5, 1, 7, [pb.Entry(index=6, term=3)]) if rl.commit_to(7) is None else None
    assert rl.entries(99) == []
    assert limit_size([pb.Entry(data=b"a")], 0) == [pb.Entry(data=b"a")]


def test_unstable_edges():
    u = Unstable(5)
    assert u.maybe_first_index() is None and u.maybe_last_index() is None
    u.truncate_and_append([pb.Entry(index=5, term=1), pb.Entry(index=6, term=1)])
    u.truncate_and_append([pb.Entry(index=6, term=2)])
    assert [e.term for e in u.entries] == [1, 2]
    u.truncate_and_append([pb.Entry(index=4, term=3)])
    assert u.offset == 4 and len(u.entries) == 1
    with pytest.raises(IndexError):
        u.slice(1, 9)
    u.stable_to(4, 9)  # wrong term: ignored
    assert u.entries
    u.stable_to(99, 1)  # unknown: ignored
    s = pb.Snapshot()
    s.metadata.index, s.metadata.term = 10, 4
    u.restore(s)
    assert u.maybe_first_index() == 11 and u.maybe_last_index() == 10 and u.maybe_term(10) == 4
    assert u.maybe_term(3) is None
    u.stable_snap_to(10)
    assert u.snapshot is None


# -- config and RawNode -----------------------------------------------------------------------
def test_config_validation():
    st = MemoryStorage()
    for bad in (
        dict(id=0),
        dict(id=1, heartbeat_tick=0),
        dict(id=1, election_tick=1, heartbeat_tick=1),
        dict(id=1, max_inflight_msgs=0),
        dict(id=1, read_only_option=ReadOnlyOption.LEASE_BASED),
    ):
        with pytest.raises(ValueError):
            Config(storage=st, **bad).validate()
    assert 0 <= SplitMix64(7).randrange(10) < 10


def test_raw_node_single_member_lifecycle():
    st = MemoryStorage()
    st.set_conf_state(pb.ConfState(voters=[1]))
    rn = RawNode(Config(id=1, storage=st))
    with pytest.raises(AssertionError):
        rn.advance()
    rn.campaign()
    assert rn.is_leader and rn.leader == 1
    rd = rn.ready()
    with pytest.raises(AssertionError):
        rn.ready()
    assert rd.soft_state.raft_state == StateType.LEADER and rd.must_sync
    st.append(rd.entries, rd.hard_state)
    rn.advance()
    rn.propose(b"a")
    rn.read_index(b"ctx")
    rd = rn.ready()
    st.append(rd.entries, rd.hard_state)
    # the leader's empty entry commits once persisted; "a" is not yet durable, so not committed
    assert [e.data for e in rd.entries] == [b"a"]
    assert [e.data for e in rd.committed_entries] == [b""]
    assert rd.read_states and rd.read_states[0].request_ctx == b"ctx"
    rn.advance()
    rd = rn.ready()
    assert not rd.entries and [e.data for e in rd.committed_entries] == [b"a"]
    assert rd.hard_state is not None and not rd.must_sync  # only the commit index moved
    st.append(rd.entries, rd.hard_state)
    rn.advance()
    assert not rn.has_ready()
    s = rn.status()
    assert s.soft_state.raft_state == StateType.LEADER and 1 in s.progress
    with pytest.raises(StepLocalMsgError):
        rn.step(pb.Message(type=pb.MsgHup))
    with pytest.raises(StepPeerNotFoundError):
        rn.step(pb.Message(type=pb.MsgAppResp, from_=9, term=1))
    rn.report_unreachable(9)
    rn.report_snapshot(9, False)


def test_uncommitted_size_bound_drops_proposals():
    r = new_raft(1, [1, 2, 3], max_uncommitted_entries_size=10)
    r.become_candidate()
    r.become_leader()
    r.step(pb.Message(type=pb.MsgProp, from_=1, entries=[pb.Entry(data=b"12345678")]))
    with pytest.raises(ProposalDroppedError):
        r.step(pb.Message(type=pb.MsgProp, from_=1, entries=[pb.Entry(data=b"12345678")]))
    r.reduce_uncommitted_size([pb.Entry(data=b"12345678")])
    r.step(pb.Message(type=pb.MsgProp, from_=1, entries=[pb.Entry(data=b"12345678")]))


def test_proposals_dropped_without_leader_or_during_transfer():
    r = new_raft(1, [1, 2, 3])
    with pytest.raises(ProposalDroppedError):
        r.step(pb.Message(type=pb.MsgProp, from_=1, entries=[pb.Entry(data=b"x")]))
    r.step(pb.Message(from_=1, type=pb.MsgHup))
    with pytest.raises(ProposalDroppedError):
        r.step(pb.Message(type=pb.MsgProp, from_=1, entries=[pb.Entry(data=b"x")]))
    f = new_raft(2, [1, 2, 3], disable_proposal_forwarding=True)
    f.become_follower(1, 1)
    with pytest.raises(ProposalDroppedError):
        f.step(pb.Message(type=pb.MsgProp, from_=2, entries=[pb.Entry(data=b"x")]))


def test_read_index_forwarded_and_lease_based():
    n = Net.of(3, check_quorum=True, read_only_option=ReadOnlyOption.LEASE_BASED)
    n.hup(1)
    n.send(pb.Message(from_=2, to=2, type=pb.MsgReadIndex, entries=[pb.Entry(data=b"r")]))
    assert n.peers[2].read_states[0].index == n.peers[1].raft_log.committed
    n.send(pb.Message(from_=1, to=1, type=pb.MsgReadIndex, entries=[pb.Entry(data=b"s")]))
    assert n.peers[1].read_states[-1].request_ctx == b"s"


def test_safe_reads_share_one_heartbeat_round():
    n = Net.of(3)
    n.hup(1)
    r = n.peers[1]
    for k in range(5):
        r.step(pb.Message(from_=1, to=1, type=pb.MsgReadIndex, entries=[pb.Entry(data=b"%d" % k)]))
    msgs = read_messages(r)
    assert sum(m.type == pb.MsgHeartbeat for m in msgs) == 2  # one round for five reads
    n.send(*msgs)
    assert [rs.request_ctx for rs in r.read_states] == [b"%d" % k for k in range(5)]


def test_read_index_waits_for_commit_in_term():
    n = Net.of(3)
    n.ignored = {pb.MsgAppResp}
    n.hup(1)
    r = n.peers[1]
    r.step(pb.Message(from_=1, to=1, type=pb.MsgReadIndex, entries=[pb.Entry(data=b"early")]))
    assert r.pending_read_index_messages and not r.read_states
    n.recover()
    n.send(pb.Message(from_=1, to=1, type=pb.MsgBeat))
    n.send(*read_messages(r))
    assert r.read_states and r.read_states[0].request_ctx == b"early"


def test_check_quorum_steps_down_and_lease_blocks_votes():
    n = Net.of(3, check_quorum=True)
    n.hup(1)
    n.isolate(1)
    for _ in range(25):
        n.peers[1].tick()
    assert n.peers[1].state == StateType.FOLLOWER
    # Node 3 still in lease with leader 1: ignores node 2's vote request at a higher term.
    n2 = Net.of(3, check_quorum=True)
    n2.hup(1)
    t = n2.peers[3].term
    n2.peers[3].step(pb.Message(from_=2, to=3, type=pb.MsgVote, term=t + 1, index=9, log_term=9))
    assert n2.peers[3].term == t


def test_prevote_rejected_on_stale_term_and_does_not_bump_terms():
    n = Net.of(3, pre_vote=True)
    n.hup(1)
    n.isolate(3)
    for _ in range(40):
        n.peers[3].tick()
        read_messages(n.peers[3])
    assert n.peers[3].term == n.peers[1].term  # pre-votes fail, the term stays put
    r = n.peers[1]
    r.step(pb.Message(from_=3, to=1, type=pb.MsgPreVote, term=0 + 1, index=0, log_term=0))
    msgs = read_messages(r)
    assert any(m.type == pb.MsgPreVoteResp for m in msgs)


def test_transfer_leadership_cases():
    n = Net.of(3)
    n.hup(1)
    n.send(pb.Message(from_=3, to=1, type=pb.MsgTransferLeader))
    assert n.peers[3].state == StateType.LEADER
    r3 = n.peers[3]
    # Transfer to self, repeated transfer and a forwarded request from a follower.
    n.send(pb.Message(from_=3, to=3, type=pb.MsgTransferLeader))
    n.dropped.add((3, 2))  # 2 cannot catch up: the transfer stays pending
    n.send(pb.Message(from_=2, to=3, type=pb.MsgTransferLeader))
    assert r3.lead_transferee == 2
    n.send(pb.Message(from_=2, to=3, type=pb.MsgTransferLeader))
    n.send(pb.Message(from_=1, to=3, type=pb.MsgTransferLeader))  # replaces transferee
    n.recover()
    for _ in range(25):
        r3.tick()
        n.send(*read_messages(r3))
    assert r3.lead_transferee == NONE
    # A learner cannot take leadership.
    n3 = Net.of(2)
    n3.peers[3] = new_raft(3, [1, 2], learners=[3])
    for p in (1, 2):
        n3.peers[p].apply_conf_change(pb.ConfChangeV2(changes=[single(LEARNER, 3)]))
    n3.hup(1)
    n3.send(pb.Message(from_=3, to=1, type=pb.MsgTransferLeader))
    assert n3.peers[1].state == StateType.LEADER and not n3.peers[3].promotable()


def test_follower_forwards_transfer_and_ignores_without_leader():
    f = new_raft(2, [1, 2, 3])
    f.step(pb.Message(from_=3, to=2, type=pb.MsgTransferLeader))
    f.step(pb.Message(from_=3, to=2, type=pb.MsgReadIndex, entries=[pb.Entry(data=b"x")]))
    assert read_messages(f) == []
    f.step(pb.Message(from_=1, to=2, type=pb.MsgReadIndexResp, term=0, entries=[]))
    assert f.read_states == []


def test_unreachable_and_snapshot_status():
    n = Net.of(3)
    n.hup(1)
    r = n.peers[1]
    r.prs.progress[2].become_replicate()
    r.step(pb.Message(from_=2, type=pb.MsgUnreachable))
    assert r.prs.progress[2].state == ProgressState.PROBE
    r.prs.progress[2].become_snapshot(5)
    r.step(pb.Message(from_=2, type=pb.MsgSnapStatus, reject=True))
    assert r.prs.progress[2].state == ProgressState.PROBE and r.prs.progress[2].probe_sent
    r.step(pb.Message(from_=2, type=pb.MsgSnapStatus))  # not in snapshot state: ignored
    r.step(pb.Message(from_=9, to=1, type=pb.MsgHeartbeatResp, term=r.term))  # unknown peer


def test_restore_snapshot_paths():
    r = new_raft(2, [1, 2, 3])
    s = pb.Snapshot(data=b"d")
    s.metadata.index, s.metadata.term = 5, 1
    s.metadata.conf_state.CopyFrom(pb.ConfState(voters=[1, 2, 3]))
    r.step(pb.Message(from_=1, to=2, type=pb.MsgSnap, term=1, snapshot=s))
    assert r.raft_log.committed == 5 and r.raft_log.has_pending_snapshot()
    assert not r.promotable()  # never campaign before the snapshot is persisted
    assert not r.restore(s)  # not newer than commit
    read_messages(r)
    r.raft_log.append([pb.Entry(index=6, term=1)])
    s2 = pb.Snapshot()
    s2.metadata.index, s2.metadata.term = 6, 1
    r.raft_log.committed = 5
    assert not r.restore(s2)  # we have the entry: fast-forward commit only
    assert r.raft_log.committed == 6


def test_leader_sends_one_append_per_follower_per_flush():
    """Proposals and a commit stepped between two Readys leave as one MsgApp per
    follower, with every entry it lacks and the commit index as it is at the flush."""
    r = new_raft(1, [1, 2, 3])
    r.become_candidate()
    r.become_leader()
    persist(r)
    empty = r.raft_log.last_index()
    for f in (2, 3):  # both followers hold the leader's empty entry: replicating
        r.step(pb.Message(from_=f, to=1, type=pb.MsgAppResp, term=r.term, index=empty))
    read_messages(r)
    r.step(pb.Message(from_=1, to=1, type=pb.MsgProp, entries=[pb.Entry(data=b"x")]))
    x = r.raft_log.last_index()
    persist(r)  # the leader's copy of x is durable
    r.step(pb.Message(from_=2, to=1, type=pb.MsgAppResp, term=r.term, index=x))
    assert r.raft_log.committed == x
    r.step(pb.Message(from_=1, to=1, type=pb.MsgProp, entries=[pb.Entry(data=b"y")]))
    assert not [m for m in r.msgs if m.type == pb.MsgApp]  # nothing built per step
    r.flush_appends()
    apps = {}
    for m in r.msgs:
        assert m.type == pb.MsgApp and m.to not in apps
        apps[m.to] = m
    assert [e.data for e in apps[3].entries] == [b"x", b"y"]
    assert [e.data for e in apps[2].entries] == [b"y"]  # it acked x already
    assert apps[2].commit == apps[3].commit == x
    r.msgs = []
    r.flush_appends()
    assert r.msgs == []


def test_leader_counts_its_own_entry_only_once_persisted():
    """etcd-io/raft's self-ack: a follower's ack plus the leader's unwritten copy is not a
    quorum of durable copies, so it must not commit (the leader sends before its fsync)."""
    r = new_raft(1, [1, 2, 3])
    r.become_candidate()
    r.become_leader()
    r.step(pb.Message(from_=2, to=1, type=pb.MsgAppResp, term=r.term,
                      index=r.raft_log.last_index()))
    assert r.raft_log.committed == 0  # the empty entry: only f2's copy is durable
    persist(r)  # the leader's copy is now durable too: two of three
    assert r.raft_log.committed == r.raft_log.last_index()
    r.msgs = []
    r.step(pb.Message(from_=1, to=1, type=pb.MsgProp, entries=[pb.Entry(data=b"x")]))
    li = r.raft_log.last_index()
    r.flush_appends()  # what RawNode does before a Ready
    assert 2 in {m.to for m in r.msgs if m.type == pb.MsgApp}  # sent before the write
    r.step(pb.Message(from_=2, to=1, type=pb.MsgAppResp, term=r.term, index=li))
    assert r.raft_log.committed == li - 1
    persist(r)  # storage append, then Raft.persisted: the leader's own ack
    assert r.raft_log.committed == li


def test_accept_handed_spares_the_commit_only_ready_and_nothing_else():
    """A lone voter's driver writes the commit its write reaches with the entries and
    hands them over itself: after accept_handed the next Ready repeats neither, and what
    moves later (a commit further on, a new term) still comes in a Ready."""
    st = MemoryStorage()
    st.set_conf_state(pb.ConfState(voters=[1]))
    rn = RawNode(Config(id=1, storage=st))
    rn.campaign()
    rd = rn.ready()
    st.append(rd.entries, rd.hard_state)
    rn.advance()
    while rn.has_ready():  # the election's empty entry, committed and applied
        rd = rn.ready()
        st.append(rd.entries, rd.hard_state)
        rn.advance()
    r = rn.raft
    for _ in range(3):
        rn.propose_batch([b"a", b"b"])
        rd = rn.ready()
        commit = rn.commit_on_persist(rd)
        hs = pb.HardState(term=r.term, vote=r.vote, commit=commit)
        st.append(rd.entries, hs)
        rn.advance()
        rn.accept_handed(hs, rd.entries)
        assert r.raft_log.committed == r.raft_log.applied == commit
        assert r.uncommitted_size == 0
        assert not rn.has_ready()  # no commit-only Ready, no committed entries again

    # without accept_handed the same write is followed by that Ready
    rn.propose(b"c")
    rd = rn.ready()
    st.append(rd.entries, rd.hard_state)
    rn.advance()
    again = rn.ready()
    assert not again.entries and again.hard_state.commit == rd.entries[-1].index
    assert [e.index for e in again.committed_entries] == [rd.entries[-1].index]
    rn.advance()

    # a hard state that no longer matches (a newer term since) is not taken as written
    rn.propose(b"d")
    rd = rn.ready()
    hs = pb.HardState(term=r.term, vote=r.vote, commit=rn.commit_on_persist(rd))
    st.append(rd.entries, hs)
    rn.advance()
    r.term += 1
    rn.accept_handed(hs, rd.entries)
    assert r.raft_log.applied == rd.entries[-1].index  # the entries were handed over
    rd2 = rn.ready()
    assert rd2.hard_state is not None and rd2.hard_state.term == r.term
    assert not rd2.committed_entries
    rn.advance()

    # entries not following what was applied, or a membership change, come in a Ready
    rn.propose_conf_change(pb.ConfChange(type=pb.ConfChangeAddLearnerNode, node_id=2))
    rd = rn.ready()
    hs = pb.HardState(term=r.term, vote=r.vote, commit=rn.commit_on_persist(rd))
    st.append(rd.entries, hs)
    rn.advance()
    rn.accept_handed(hs, rd.entries)
    assert r.raft_log.applied < rd.entries[-1].index
    assert rn.ready().committed_entries[-1].index == rd.entries[-1].index


def test_commit_on_persist_is_what_advance_commits_and_changes_nothing():
    """A lone voter's write commits its own entries (its copy is the quorum); with peers,
    or for a follower, the write alone commits nothing new. Asking changes no state."""
    st = MemoryStorage()
    st.set_conf_state(pb.ConfState(voters=[1]))
    rn = RawNode(Config(id=1, storage=st))
    rn.campaign()
    rd = rn.ready()
    committed = rn.raft.raft_log.committed
    assert rn.commit_on_persist(rd) == rd.entries[-1].index > committed
    assert rn.raft.raft_log.committed == committed and rn.raft.prs.progress[1].match < \
        rd.entries[-1].index  # only asked
    st.append(rd.entries, rd.hard_state)
    rn.advance()
    assert rn.raft.raft_log.committed == rd.entries[-1].index  # what advance did commit
    rn.propose(b"a")
    rd = rn.ready()
    promised = rn.commit_on_persist(rd)
    st.append(rd.entries, rd.hard_state)
    rn.advance()
    assert promised == rn.raft.raft_log.committed == rd.entries[-1].index

    st3 = MemoryStorage()  # three voters: the leader's own copy is one of three
    st3.set_conf_state(pb.ConfState(voters=[1, 2, 3]))
    rn3 = RawNode(Config(id=1, storage=st3))
    r = rn3.raft
    r.become_candidate()
    r.become_leader()
    rd = rn3.ready()
    assert rn3.commit_on_persist(rd) == r.raft_log.committed < rd.entries[-1].index
    r.step(pb.Message(from_=2, to=1, type=pb.MsgAppResp, term=r.term,
                      index=rd.entries[-1].index))
    # f2's durable copy plus the leader's, once written: a quorum
    assert rn3.commit_on_persist(rd) == rd.entries[-1].index
    r.become_follower(r.term + 1, 2)
    assert rn3.commit_on_persist(rd) == r.raft_log.committed
