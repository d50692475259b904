"""How members start, as etcd's do (timings are bench/startup_bench.py's, not tests'):
a fresh cluster fast-forwards its election clock once its peers answer (etcd's
adjustTicks), and a restarted follower rejoins its leader's term without disturbing it
(the fast-forward never costs an election: pre-votes need a quorum that has no leader)."""

from __future__ import annotations

FAST_FORWARD = "initialized peer connections; fast-forwarding election ticks"


def test_fresh_cluster_fast_forwards_and_restarted_follower_keeps_the_term(make_cluster):
    c = make_cluster(3)
    leader = c.wait_leader()
    logs = [m.log_path.read_text(errors="replace") for m in c.members]
    assert any(FAST_FORWARD in text for text in logs), "no member fast-forwarded its ticks"
    term = leader.status().raft_term
    for _ in range(2):
        follower = c.followers()[0]
        follower.restart()  # SIGTERM, start again, wait until it serves linearizable reads
        assert c.wait_leader() is leader
        assert [m.status().raft_term for m in c.members] == [term] * 3
