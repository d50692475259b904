"""The simulator models the Runner's pipeline: writes take time, a leader replicates
while it writes, and a crash loses a write under way (kubekv_raft/sim/cluster.py)."""

from __future__ import annotations

from kubekv_raft.sim.cluster import SimCluster


def test_a_leader_crash_during_its_write_loses_nothing_committed():
    """The leader's entry reaches f1 while the leader's own write hangs; f2 never gets it.
    The leader then crashes (its write lost) and f1 goes down: the leader and f2 elect a
    leader without the entry. That is safe only if the entry never committed, which is
    what counting the leader's own copy only once written (Raft.persisted) guarantees;
    counting it at append commits it on one disk, and the checker catches the loss."""
    c = SimCluster(3, seed=7, disk_ms=0)
    c.one(b"a", 3)
    lead = c.check_one_leader()
    f1, f2 = (i for i in sorted(c.nodes) if i != lead)
    c.net.block(lead, f2)
    c.disk_ms_of[lead] = 10_000  # the leader's writes hang
    assert c.propose(lead, b"x")
    c.run_for(100)  # f1 has written x and acknowledged it long ago
    assert any(e.data == b"x" for e in c.nodes[f1].storage.entries(
        c.nodes[f1].storage.first_index(), c.nodes[f1].storage.last_index() + 1))
    x_index = c.nodes[f1].storage.last_index()
    committed_on_one_disk = c.nodes[lead].raw.raft.raft_log.committed >= x_index
    c.crash(lead)
    c.crash(f1)
    del c.disk_ms_of[lead]
    c.heal()
    c.restart(lead)
    c.run_for(3_000)  # the leader and f2 elect one of them, without x
    new = c.check_one_leader()
    assert new in (lead, f2)
    c.restart(f1)
    c.converge()  # the checker saw every step: no committed entry was lost
    assert not committed_on_one_disk
