"""Real kubekv clusters under crashes, restarts and pauses, with checked client histories.

Every test runs a random KV workload from several clients over all members while
the fault happens, then heals and asserts (tests/cluster/checks.py): a linearizable
history, no revision going backwards for any client, no acknowledged write lost, and
equal state (HashKV and full range at one revision) on every member.
"""

from __future__ import annotations

import time

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.backend.state_db import Backend
from kubekv_server.member.bootstrap import open_log
from kubekv_testing.polling import wait_for
from kubekv_testing.recorder import Recorder

from .checks import Prober, run_with_faults, verify, workload


def progress(w, n: int = 30, timeout: float = 30.0) -> None:
    ok = w.recorder.counts["ok"]
    wait_for(lambda: w.recorder.counts["ok"] >= ok + n, timeout, f"{n} more successful ops")


def test_basic_replication(make_cluster):
    """A write on each member is readable from every member, linearizably and (once
    applied) serializably; then a concurrent workload over all members checks out."""
    c = make_cluster(3)
    for i, m in enumerate(c.members):
        resp = m.kv.Put(pb.PutRequest(key=b"/basic/%d" % i, value=m.name.encode()), timeout=5)
        for other in c.members:
            got = other.kv.Range(pb.RangeRequest(key=b"/basic/%d" % i), timeout=5)
            assert [(kv.value, kv.mod_revision) for kv in got.kvs] == [
                (m.name.encode(), resp.header.revision)], other.name
    c.wait_converged()
    for other in c.members:
        got = other.kv.Range(pb.RangeRequest(key=b"/basic/", range_end=b"/basic0",
                                             serializable=True), timeout=5)
        assert [kv.value for kv in got.kvs] == [m.name.encode() for m in c.members]
    w = workload(c, max_ops=300)
    history = w.run()
    report = verify(c, history, w.recorder)
    assert report.unknown == 0, w.recorder.errors[:5]
    print(report)


@pytest.mark.parametrize("size", [3, 5])
def test_leader_kill9_failover_and_restart(make_cluster, size):
    """kill -9 of the leader under load: a new leader is elected among the others, the
    clients carry on, the old leader restarts from its data dir and catches up."""
    c = make_cluster(size)
    w = workload(c, clients=4)
    state = {}

    def faults():
        old = state["old"] = c.wait_leader()
        old.kill()
        new = c.wait_leader(20, exclude=old)
        state["new"] = new
        ok = w.recorder.counts["ok"]
        wait_for(lambda: w.recorder.counts["ok"] >= ok + 30, 30, "progress under the new leader")
        old.restart()

    history = run_with_faults(w, faults)
    assert state["new"] is not state["old"]
    print(verify(c, history, w.recorder))


def test_follower_restart(make_cluster):
    """A follower stopped gracefully and one killed -9, each restarted under load."""
    c = make_cluster(3)
    w = workload(c)

    def faults():
        f1, f2 = c.followers()
        f1.restart()  # SIGTERM, then start again
        ok = w.recorder.counts["ok"]
        wait_for(lambda: w.recorder.counts["ok"] >= ok + 20, 30, "progress")
        f2.kill()
        ok = w.recorder.counts["ok"]
        wait_for(lambda: w.recorder.counts["ok"] >= ok + 40, 30, "progress without f2")
        f2.restart()

    history = run_with_faults(w, faults)
    print(verify(c, history, w.recorder))


def test_quorum_kill9_then_restart(make_cluster):
    """kill -9 of 2 of 3 members (the leader among them): the survivor cannot make
    progress; both restart, a leader is elected, and nothing acknowledged is lost."""
    c = make_cluster(3)
    w = workload(c, clients=3)
    state = {}

    def faults():
        lead = c.wait_leader()
        other = next(m for m in c.members if m is not lead)
        lead.kill()
        other.kill()
        survivor = next(m for m in c.members if m.running)
        assert survivor.status().member_id == survivor.id
        # Without a quorum nothing may be acknowledged: stall for a few election timeouts.
        ok = w.recorder.counts["ok"]
        time.sleep(3 * c.election_ms / 1000)
        state["ok_without_quorum"] = w.recorder.counts["ok"] - ok
        lead.launch()
        other.launch()
        c.wait_ready([lead, other, survivor])

    history = run_with_faults(w, faults)
    # Calls in flight when the quorum died may still have been acknowledged just after.
    assert state["ok_without_quorum"] <= w.clients, state
    print(verify(c, history, w.recorder))


def test_leader_sigstop_longer_than_election_timeout(make_cluster):
    """SIGSTOP of the leader for several election timeouts: the others elect a new leader;
    after SIGCONT the old one steps down and catches up. A client bound to the old leader
    keeps calling it throughout: right after SIGCONT, while it may still believe it leads,
    it must neither acknowledge a write nor serve a stale linearizable read (the checker
    sees that client's calls with everyone else's)."""
    c = make_cluster(3)
    rec = Recorder()
    w = workload(c, recorder=rec)
    state = {}

    def faults():
        old = state["old"] = c.wait_leader()
        prober = state["prober"] = Prober(old, rec, "prober", b"/linz/k2", rpc_timeout=1.0)
        prober.start()
        wait_for(lambda: any(o[3] is not None for o in prober.outcomes), 10, "prober works")
        old.pause()
        time.sleep(4 * c.election_ms / 1000)  # the scenario: paused past the election timeout
        others = [m for m in c.members if m is not old]
        state["new"] = c.wait_leader(20, members=others)
        progress(w, 30)
        old.resume()
        wait_for(lambda: old.status().leader == state["new"].id or c.leader() is not None,
                 20, "the old leader to follow")
        progress(w, 30)
        prober.stop()

    history = run_with_faults(w, faults)
    assert state["new"] is not state["old"]
    assert state["prober"].outcomes
    print(verify(c, history, rec))


def test_follower_killed_comes_back_knowing_the_commit_of_what_it_applied(make_cluster):
    """A commit index alone is not fsynced (etcd's MustSync) but it is written before
    the entries it commits are applied (etcd saves every HardState): a follower killed
    -9 right after applying comes back with its log's commit at or past its state db's
    applied index, and serves everything it had. Without that record the log's commit
    lagged what was applied, and --force-new-cluster discarded those entries. The state
    db commits every batch here (--backend-batch-limit=-1), so it holds all that was
    applied when the kill comes."""
    c = make_cluster(3, flags=["--backend-batch-limit=-1"])
    lead = c.wait_leader()
    f = c.followers()[0]
    for rnd in range(3):
        for i in range(10):
            lead.kv.Put(pb.PutRequest(key=b"mustsync/%d/%d" % (rnd, i), value=b"v"), timeout=10)
        index = lead.status().raft_index
        wait_for(lambda n=index: f.status().raft_applied_index >= n, 10, "the follower applied all")
        f.kill()
        storage = open_log(str(f.data_dir / "member" / "log"), fsync=True)
        backend = Backend(str(f.data_dir / "member" / "state"), readonly=True)
        try:
            commit, applied = storage.hard_state().commit, backend.applied_index()
        finally:
            storage.close()
            backend.close()
        assert commit >= applied >= index, (commit, applied, index)
        f.launch()
        c.wait_ready([f])
        got = f.kv.Range(pb.RangeRequest(key=b"mustsync/", range_end=b"mustsync0",
                                         serializable=True), timeout=10)
        assert len(got.kvs) == 10 * (rnd + 1)
    lead.kv.Put(pb.PutRequest(key=b"mustsync/after", value=b"x"), timeout=10)
    index = lead.status().raft_index
    wait_for(lambda: f.status().raft_applied_index >= index, 10, "the follower applies on")
