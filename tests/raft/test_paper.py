"""One test per rule of the Raft paper (Ongaro & Ousterhout, §5), as etcd raft's paper tests."""

from __future__ import annotations

import pytest

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.raft import NONE, StateType
from kubekv_raft.core.storage import MemoryStorage

from .fakenet import Net, new_raft, persist, read_messages


def ents(*terms: int) -> list[pb.Entry]:
    return [pb.Entry(index=i + 1, term=t) for i, t in enumerate(terms)]


def storage_with(*terms: int) -> MemoryStorage:
    st = MemoryStorage()
    st.append(ents(*terms))
    return st


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_update_term_from_message(role):
    """§5.1: a server seeing a larger term adopts it; a candidate or leader reverts to follower."""
    r = new_raft(1, [1, 2, 3])
    if role == "candidate":
        r.become_candidate()
    elif role == "leader":
        r.become_candidate()
        r.become_leader()
    r.step(pb.Message(type=pb.MsgApp, term=2, from_=2, to=1))
    assert (r.term, r.state, r.lead) == (2, StateType.FOLLOWER, 2)


def test_reject_stale_term_message():
    """§5.1: a request with a stale term is rejected (ignored)."""
    r = new_raft(1, [1, 2, 3])
    r.load = r._load_state(pb.HardState(term=2))
    r.step(pb.Message(type=pb.MsgApp, term=1, from_=2, to=1, commit=0))
    assert r.lead == NONE and r.term == 2


def test_start_as_follower():
    """§5.2: servers start as followers."""
    assert new_raft(1, [1, 2, 3]).state == StateType.FOLLOWER


def test_leader_bcast_beat():
    """§5.2: a leader sends periodic heartbeats to all followers."""
    r = new_raft(1, [1, 2, 3], election=10, heartbeat=1)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    r.tick()
    msgs = read_messages(r)
    assert sorted((m.to, m.type) for m in msgs) == [(2, pb.MsgHeartbeat), (3, pb.MsgHeartbeat)]


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_start_election_on_timeout(role):
    """§5.2: silence for an election timeout: new term, candidate, self-vote, RequestVote."""
    r = new_raft(1, [1, 2, 3])
    if role == "candidate":
        r.become_candidate()
    for _ in range(2 * 10):
        r.tick()
    assert r.state == StateType.CANDIDATE and r.vote == 1
    assert r.term == (2 if role == "candidate" else 1)
    msgs = read_messages(r)
    assert sorted(m.to for m in msgs if m.type == pb.MsgVote) == [2, 3]


@pytest.mark.parametrize(
    "size,votes,state",
    [
        (1, {}, StateType.LEADER),
        (3, {2: True, 3: True}, StateType.LEADER),
        (3, {2: True}, StateType.LEADER),
        (5, {2: True, 3: True}, StateType.LEADER),
        (3, {}, StateType.CANDIDATE),
        (5, {2: True}, StateType.CANDIDATE),
        (5, {2: False, 3: False}, StateType.CANDIDATE),
        (3, {2: False, 3: False}, StateType.FOLLOWER),
    ],
)
def test_leader_election_in_one_round(size, votes, state):
    """§5.2: a candidate wins with a majority, loses when a majority refuses, waits otherwise."""
    r = new_raft(1, list(range(1, size + 1)))
    r.step(pb.Message(from_=1, to=1, type=pb.MsgHup))
    for peer, granted in votes.items():
        r.step(pb.Message(from_=peer, to=1, term=r.term, type=pb.MsgVoteResp, reject=not granted))
    assert r.state == state


@pytest.mark.parametrize(
    "vote,nvote,reject",
    [(NONE, 2, False), (NONE, 3, False), (2, 2, False), (3, 3, False), (2, 3, True), (3, 2, True)],
)
def test_follower_vote(vote, nvote, reject):
    """§5.2: at most one vote per term, first come first served."""
    r = new_raft(1, [1, 2, 3])
    r._load_state(pb.HardState(term=1, vote=vote))
    r.step(pb.Message(from_=nvote, to=1, term=1, type=pb.MsgVote))
    msgs = read_messages(r)
    assert [(m.to, m.type, m.reject) for m in msgs] == [(nvote, pb.MsgVoteResp, reject)]


@pytest.mark.parametrize("term", [1, 2])
def test_candidate_fallback(term):
    """§5.2: a candidate receiving AppendEntries from a leader of >= term becomes follower."""
    r = new_raft(1, [1, 2, 3])
    r.step(pb.Message(from_=1, to=1, type=pb.MsgHup))
    assert r.state == StateType.CANDIDATE
    r.step(pb.Message(from_=2, to=1, term=term, type=pb.MsgApp))
    assert (r.state, r.term) == (StateType.FOLLOWER, term)


def test_election_timeout_randomized():
    """§5.2: election timeouts are randomized in [et, 2et)."""
    r = new_raft(1, [1, 2, 3], election=10)
    seen = set()
    for _ in range(200):
        r.become_follower(r.term + 1, NONE)
        seen.add(r.randomized_election_timeout)
    assert seen <= set(range(10, 20)) and len(seen) > 5


def test_leader_start_replication():
    """§5.3: the leader appends the command, then sends AppendEntries to every follower."""
    r = new_raft(1, [1, 2, 3])
    r.become_candidate()
    r.become_leader()
    li = r.raft_log.last_index()
    for p in (2, 3):
        r.prs.progress[p].match = li  # followers already hold the leader's empty entry
        r.prs.progress[p].become_replicate()
    read_messages(r)  # persisting it, the leader's own ack commits it
    r.step(pb.Message(from_=1, to=1, type=pb.MsgProp, entries=[pb.Entry(data=b"some data")]))
    assert r.raft_log.last_index() == li + 1
    msgs = read_messages(r)
    assert sorted(m.to for m in msgs) == [2, 3]
    for m in msgs:
        assert (m.type, m.index, m.log_term, m.entries[0].data) == (pb.MsgApp, li, 1, b"some data")


def test_leader_commit_entry_on_majority():
    """§5.3: an entry replicated on a majority is committed, and followers learn it."""
    n = Net.of(3)
    n.hup(1)
    n.propose(1, b"x")
    r = n.peers[1]
    assert r.raft_log.committed == 2
    for p in (2, 3):
        assert n.peers[p].raft_log.committed == 2
        assert [e.data for e in n.peers[p].raft_log.next_ents()] == [b"", b"x"]


@pytest.mark.parametrize(
    "size,acks,committed",
    [(1, 0, True), (3, 0, False), (3, 1, True), (5, 1, False), (5, 2, True), (5, 4, True)],
)
def test_leader_acknowledge_commit(size, acks, committed):
    """§5.3: committed once the creating leader has it on a majority."""
    r = new_raft(1, list(range(1, size + 1)))
    r.become_candidate()
    r.become_leader()
    persist(r)
    read_messages(r)
    li = r.raft_log.last_index()
    r.step(pb.Message(from_=1, to=1, type=pb.MsgProp, entries=[pb.Entry(data=b"x")]))
    persist(r)
    for m in read_messages(r)[:acks]:
        r.step(pb.Message(from_=m.to, to=1, type=pb.MsgAppResp, term=m.term, index=li + 1))
    assert (r.raft_log.committed > li) == committed


def test_leader_commits_preceding_entries():
    """§5.3: committing an entry commits everything before it, from older leaders too."""
    r = new_raft(1, [1, 2, 3], storage=storage_with(2, 2))
    r._load_state(pb.HardState(term=2))
    r.become_candidate()
    r.become_leader()
    r.step(pb.Message(from_=1, to=1, type=pb.MsgProp, entries=[pb.Entry(data=b"x")]))
    persist(r)
    for m in read_messages(r):
        r.step(pb.Message(from_=m.to, to=1, type=pb.MsgAppResp, term=3, index=4))
    assert r.raft_log.committed == 4


def test_follower_check_msg_app():
    """§5.3: a follower refuses AppendEntries whose (prevIndex, prevTerm) it does not have."""
    r = new_raft(1, [1, 2, 3], storage=storage_with(1, 2))
    r._load_state(pb.HardState(term=2, commit=1))
    r.become_follower(2, 2)
    r.step(pb.Message(from_=2, to=1, type=pb.MsgApp, term=2, index=2, log_term=1))
    (m,) = read_messages(r)
    assert m.reject and m.reject_hint == 1 and m.log_term == 1
    r.step(pb.Message(from_=2, to=1, type=pb.MsgApp, term=2, index=2, log_term=2))
    (m,) = read_messages(r)
    assert not m.reject and m.index == 2


def test_follower_append_entries_deletes_conflicts():
    """§5.3: a conflicting entry and everything after it are replaced by the leader's."""
    r = new_raft(1, [1, 2, 3], storage=storage_with(1, 2, 2))
    r.become_follower(3, 2)
    m = pb.Message(from_=2, to=1, type=pb.MsgApp, term=3, index=1, log_term=1)
    m.entries.extend([pb.Entry(index=2, term=3)])
    r.step(m)
    assert [e.term for e in r.raft_log.all_entries()] == [1, 3]


def test_leader_sync_follower_log():
    """§5.3: the leader forces divergent followers' logs to match its own (fast backtracking)."""
    n = Net.of(3)
    leader_terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    follower_terms = [1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5]  # longer, divergent
    for i, terms in ((1, leader_terms), (2, follower_terms), (3, leader_terms)):
        st = MemoryStorage()
        st.set_conf_state(pb.ConfState(voters=[1, 2, 3]))
        st.append(ents(*terms), pb.HardState(term=7))
        n.peers[i] = new_raft(i, [1, 2, 3], storage=st)
    n.hup(1)
    n.propose(1, b"x")
    want = [(e.index, e.term) for e in n.peers[1].raft_log.all_entries()]
    got = [(e.index, e.term) for e in n.peers[2].raft_log.all_entries()]
    assert got == want


def test_vote_request_carries_last_log_position():
    """§5.4.1: RequestVote carries the candidate's last log index and term."""
    r = new_raft(1, [1, 2, 3], storage=storage_with(1, 2))
    r._load_state(pb.HardState(term=2))
    for _ in range(2 * 10):
        r.tick()
    msgs = [m for m in read_messages(r) if m.type == pb.MsgVote]
    assert {(m.index, m.log_term, m.term) for m in msgs} == {(2, 2, 3)}


@pytest.mark.parametrize(
    "terms,lindex,lterm,reject",
    [
        ((1, 1), 2, 1, False),
        ((1, 1), 1, 1, True),
        ((1, 1), 3, 1, False),
        ((1, 2), 2, 1, True),
        ((1, 2), 3, 3, False),
        ((2, 2), 1, 3, False),
    ],
)
def test_voter_denies_less_up_to_date(terms, lindex, lterm, reject):
    """§5.4.1: the voter denies its vote if its own log is more up to date."""
    r = new_raft(1, [1, 2], storage=storage_with(*terms))
    r.step(pb.Message(from_=2, to=1, type=pb.MsgVote, term=3, index=lindex, log_term=lterm))
    (m,) = read_messages(r)
    assert m.type == pb.MsgVoteResp and m.reject == reject


def test_leader_only_commits_current_term_by_counting():
    """§5.4.2: entries of earlier terms are never committed by counting replicas."""
    r = new_raft(1, [1, 2], storage=storage_with(1, 2))
    r._load_state(pb.HardState(term=2))
    r.become_candidate()
    r.become_leader()  # appends an empty entry at index 3, term 3
    persist(r)
    read_messages(r)
    r.step(pb.Message(from_=2, to=1, type=pb.MsgAppResp, term=3, index=2))
    assert r.raft_log.committed == 0, "entry 2 of term 2 must not commit by counting"
    r.step(pb.Message(from_=2, to=1, type=pb.MsgAppResp, term=3, index=3))
    assert r.raft_log.committed == 3
