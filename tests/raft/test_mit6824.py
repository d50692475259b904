"""MIT 6.5840 (6.824) Raft lab scenarios, ported to the deterministic simulator.

Each test keeps the lab's name and intent; time is virtual and every run is one seed.
Safety invariants are checked after every event by the simulator itself.
"""

from __future__ import annotations

import random

import pytest

from kubekv_raft.sim import SimCluster

SEED = 6824


def cmd(x: object) -> bytes:
    return str(x).encode()


def test_InitialElection():
    c = SimCluster(3, SEED)
    c.check_one_leader()
    c.run_for(50)
    term1 = c.check_terms()
    assert term1 >= 1
    # No failures: leader and term stay the same.
    c.run_for(2000)
    assert c.check_terms() == term1
    c.check_one_leader()


def test_ReElection():
    c = SimCluster(3, SEED)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    c.check_one_leader()
    # The old leader rejoining must not disturb the new one.
    c.connect(leader1)
    leader2 = c.check_one_leader()
    # No quorum: no leader.
    c.disconnect(leader2)
    c.disconnect(leader2 % 3 + 1)
    c.run_for(2000)
    c.check_no_leader()
    c.connect(leader2 % 3 + 1)
    c.check_one_leader()
    c.connect(leader2)
    c.check_one_leader()


def test_ManyElections():
    c = SimCluster(7, SEED)
    c.check_one_leader()
    rng = random.Random(SEED)
    for _ in range(10):
        a, b, d = rng.sample(range(1, 8), 3)
        for i in (a, b, d):
            c.disconnect(i)
        c.check_one_leader()  # a quorum of 4 remains
        for i in (a, b, d):
            c.connect(i)
    c.check_one_leader()


def test_BasicAgree():
    c = SimCluster(3, SEED)
    for index in range(1, 4):
        n, _ = c.n_committed(index + 1)
        assert n == 0, "some have committed before Start()"
        xindex = c.one(cmd(index * 100), 3, retry=False)
        assert xindex > index  # index 1.. holds the leader's empty entry
    c.check_one_leader()


def test_RPCBytes():
    c = SimCluster(3, SEED)
    c.one(cmd(99), 3)
    bytes0 = c.app_bytes_sent
    sent = 0
    for index in range(10):
        payload = bytes(random.Random(index).getrandbits(8) for _ in range(5000))
        c.one(payload, 3)
        sent += len(payload)
    # Each command goes to each of the 2 followers about once.
    assert c.app_bytes_sent - bytes0 <= sent * 2 + 50_000


def test_FollowerFailure():
    c = SimCluster(3, SEED)
    c.one(cmd(101), 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1 % 3 + 1)
    c.one(cmd(102), 2)
    c.run_for(500)
    c.one(cmd(103), 2)
    leader2 = c.check_one_leader()
    c.disconnect(leader2 % 3 + 1)
    c.disconnect((leader2 + 1) % 3 + 1)
    index, _, ok = c.start(leader2, cmd(104))
    assert ok
    c.run_for(2000)
    n, _ = c.n_committed(index)
    assert n == 0, f"{n} committed but no majority"


def test_LeaderFailure():
    c = SimCluster(3, SEED)
    c.one(cmd(101), 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    c.one(cmd(102), 2)
    c.run_for(500)
    c.one(cmd(103), 2)
    leader2 = c.check_one_leader()
    c.disconnect(leader2)
    for i in range(1, 4):
        c.start(i, cmd(104))
    c.run_for(2000)
    assert not any(cmd(104) in n.values.values() for n in c.nodes.values())


def test_FailAgree():
    c = SimCluster(3, SEED)
    c.one(cmd(101), 3)
    leader = c.check_one_leader()
    c.disconnect(leader % 3 + 1)
    for x in (102, 103, 104, 105):
        c.one(cmd(x), 2)
    c.connect(leader % 3 + 1)
    c.one(cmd(106), 3)
    c.run_for(500)
    c.one(cmd(107), 3)


def test_FailNoAgree():
    c = SimCluster(5, SEED)
    c.one(cmd(10), 5)
    leader = c.check_one_leader()
    for k in (1, 2, 3):
        c.disconnect((leader + k - 1) % 5 + 1)
    index, _, ok = c.start(leader, cmd(20))
    assert ok
    c.run_for(2000)
    n, _ = c.n_committed(index)
    assert n == 0
    for k in (1, 2, 3):
        c.connect((leader + k - 1) % 5 + 1)
    leader2 = c.check_one_leader()
    index2, _, ok2 = c.start(leader2, cmd(30))
    assert ok2
    assert index <= index2 <= index + 2
    c.one(cmd(1000), 5)


def test_ConcurrentStarts():
    c = SimCluster(3, SEED)
    for _attempt in range(5):
        leader = c.check_one_leader()
        _, term, ok = c.start(leader, cmd(1))
        if not ok:
            continue
        idxs = []
        for k in range(5):
            i, t, ok = c.start(leader, cmd(100 + k))
            if t != term or not ok:
                break
            idxs.append(i)
        else:
            cmds = {c.wait(i, 3, term) for i in idxs}
            if None in cmds:
                continue
            assert cmds == {cmd(100 + k) for k in range(5)}
            return
    pytest.fail("term changed too often")


def test_Rejoin():
    c = SimCluster(3, SEED)
    c.one(cmd(101), 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    # The old leader takes commands that cannot commit.
    for x in (102, 103, 104):
        c.start(leader1, cmd(x))
    c.one(cmd(103), 2)
    leader2 = c.check_one_leader()
    c.disconnect(leader2)
    c.connect(leader1)
    c.one(cmd(104), 2)
    c.connect(leader2)
    c.one(cmd(105), 3)


def test_Backup():
    rng = random.Random(SEED)
    c = SimCluster(5, SEED)
    c.one(cmd(rng.random()), 5)
    leader1 = c.check_one_leader()
    others = [(leader1 + k - 1) % 5 + 1 for k in range(5)]
    # Leader and one follower in a minority: lots of uncommitted entries.
    for i in others[2:]:
        c.disconnect(i)
    for _ in range(50):
        c.start(leader1, cmd(rng.random()))
    c.run_for(500)
    c.disconnect(others[0])
    c.disconnect(others[1])
    for i in others[2:]:
        c.connect(i)
    for _ in range(50):
        c.one(cmd(rng.random()), 3)
    leader2 = c.check_one_leader()
    other = others[2] if leader2 != others[2] else others[3]
    c.disconnect(other)
    for _ in range(50):
        c.start(leader2, cmd(rng.random()))
    c.run_for(500)
    for i in range(1, 6):
        c.disconnect(i)
    c.connect(others[0])
    c.connect(others[1])
    c.connect(other)
    for _ in range(50):
        c.one(cmd(rng.random()), 3)
    for i in range(1, 6):
        c.connect(i)
    c.one(cmd(rng.random()), 5)


def test_Count():
    c = SimCluster(3, SEED)
    c.check_one_leader()
    total0 = c.msgs_sent
    assert total0 < 200, f"too many messages for an election: {total0}"
    for _attempt in range(3):
        leader = c.check_one_leader()
        total1 = c.msgs_sent
        _, term, ok = c.start(leader, cmd(1))
        if not ok:
            continue
        for k in range(10):
            _, t, ok = c.start(leader, cmd(k + 2))
            assert ok and t == term
        c.run_for(1000)
        total2 = c.msgs_sent
        break
    # 1 election + 11 proposals in batches; heartbeats every 20ms for 1s dominate.
    assert total2 - total1 < 12 * 4 + 2 * 2 * 1000 // 20 + 50
    total3 = c.msgs_sent
    c.run_for(1000)
    idle = c.msgs_sent - total3
    assert idle <= 2 * 2 * 1000 // 20 + 20, f"too many messages while idle: {idle}"


@pytest.mark.parametrize("name", ["Persist1"])
def test_Persist1(name):
    c = SimCluster(3, SEED)
    c.one(cmd(11), 3)
    for i in range(1, 4):
        c.crash(i)
    for i in range(1, 4):
        c.restart(i)
    c.one(cmd(12), 3)
    leader1 = c.check_one_leader()
    c.crash(leader1)
    c.restart(leader1)
    c.one(cmd(13), 3)
    leader2 = c.check_one_leader()
    c.crash(leader2)
    c.one(cmd(14), 2)
    c.restart(leader2)
    c.wait(4, 3, -1)
    i3 = c.check_one_leader() % 3 + 1
    c.crash(i3)
    c.one(cmd(15), 2)
    c.restart(i3)
    c.one(cmd(16), 3)


def test_Persist2():
    c = SimCluster(5, SEED)
    index = 1
    for _ in range(5):
        c.one(cmd(10 + index), 5)
        index += 1
        leader1 = c.check_one_leader()
        c.crash((leader1 + 1) % 5 + 1)
        c.crash((leader1 + 2) % 5 + 1)
        c.one(cmd(10 + index), 3)
        index += 1
        for k in (0, 3, 4):
            c.crash((leader1 + k) % 5 + 1)
        c.restart((leader1 + 1) % 5 + 1)
        c.restart((leader1 + 2) % 5 + 1)
        c.run_for(1000)
        c.restart((leader1 + 3) % 5 + 1)
        c.one(cmd(10 + index), 3)
        index += 1
        c.restart((leader1 + 4) % 5 + 1)
        c.restart((leader1 + 0) % 5 + 1)
    c.one(cmd(1000), 5)


def test_Persist3():
    c = SimCluster(3, SEED)
    c.one(cmd(101), 3)
    leader = c.check_one_leader()
    c.disconnect(leader % 3 + 1)
    c.one(cmd(102), 2)
    c.crash(leader % 3 + 1 - 1 or 3)
    c.crash(leader)
    c.connect(leader % 3 + 1)
    c.restart(leader)
    c.one(cmd(103), 2)
    c.restart(leader % 3 + 1 - 1 or 3)
    c.one(cmd(104), 3)


def _figure8(c: SimCluster, rng: random.Random, iters: int, unreliable: bool) -> None:
    n = len(c.nodes)
    c.one(cmd(rng.random()), 1)
    nup = n
    for it in range(iters):
        if unreliable and it == 200:
            c.net.long_reordering = True
        leader = None
        for i in range(1, n + 1):
            if c.nodes[i].up and i in c.net.connected:
                _, _, ok = c.start(i, cmd(rng.random()))
                if ok:
                    leader = i
        if rng.randrange(1000) < 100:
            c.run_for(rng.randrange(500))
        else:
            c.run_for(rng.randrange(13))
        if leader is not None and (not unreliable or rng.randrange(1000) < 500):
            if unreliable:
                c.disconnect(leader)
            else:
                c.crash(leader)
            nup -= 1
        if nup < 3:
            s = rng.randrange(n) + 1
            node = c.nodes[s]
            if unreliable and s not in c.net.connected:
                c.connect(s)
                nup += 1
            elif not unreliable and not node.up:
                c.restart(s)
                nup += 1
    for i in range(1, n + 1):
        if not c.nodes[i].up:
            c.restart(i)
        c.connect(i)
    c.set_unreliable(False)
    c.net.long_reordering = False
    c.one(cmd(rng.random()), n)


def test_Figure8():
    _figure8(SimCluster(5, SEED), random.Random(SEED), 300, unreliable=False)


def test_UnreliableAgree():
    c = SimCluster(5, SEED, reliable=False)
    for it in range(1, 30):
        for j in range(4):
            c.propose(random.Random(it * 10 + j).randint(1, 5), cmd(100 * it + j))
        c.one(cmd(it), 1)
    c.set_unreliable(False)
    c.one(cmd(100), 5)


def test_Figure8Unreliable():
    c = SimCluster(5, SEED, reliable=False)
    _figure8(c, random.Random(SEED), 600, unreliable=True)


def _churn(unreliable: bool) -> None:
    c = SimCluster(5, SEED, reliable=not unreliable)
    rng = random.Random(SEED)
    values: list[bytes] = []
    t_end = c.now + 8000
    k = 0
    while c.now < t_end:
        # clients
        for i in range(1, 6):
            k += 1
            x = cmd(f"v{k}")
            _, _, ok = c.start(i, x)
            if ok:
                values.append(x)
        if rng.randrange(1000) < 200:
            c.disconnect(rng.randrange(5) + 1)
        if rng.randrange(1000) < 500:
            i = rng.randrange(5) + 1
            if not c.nodes[i].up:
                c.restart(i)
            c.connect(i)
        if rng.randrange(1000) < 200:
            i = rng.randrange(5) + 1
            if c.nodes[i].up:
                c.crash(i)
        c.run_for(rng.randrange(70))
    c.run_for(100)
    c.set_unreliable(False)
    for i in range(1, 6):
        if not c.nodes[i].up:
            c.restart(i)
        c.connect(i)
    last = c.one(cmd("final"), 5)
    really = {c.n_committed(i)[1] for i in range(1, last + 1)}
    # Some of the proposed values made it; every committed one was proposed by a client.
    assert really - {None, cmd("final")} <= set(values)
    assert len(really) > 10


def test_ReliableChurn():
    _churn(unreliable=False)


def test_UnreliableChurn():
    _churn(unreliable=True)


# -- snapshots (6.5840 3D: SnapShotInterval = 10) --------------------------------------------


def _snap_common(disconnect: bool, reliable: bool, crash: bool) -> None:
    iters = 20
    c = SimCluster(3, SEED, reliable=reliable, snapshot_interval=10)
    rng = random.Random(SEED)
    c.one(cmd(rng.random()), 3)
    leader1 = c.check_one_leader()
    for _ in range(iters):
        victim = (leader1 + 1) % 3 + 1
        sender = leader1
        if rng.randrange(3) == 1:
            sender = leader1 % 3 + 1
            victim = leader1
        if disconnect:
            c.disconnect(victim)
            c.one(cmd(rng.random()), 2)
        if crash:
            c.crash(victim)
            c.one(cmd(rng.random()), 2)
        # Enough entries that the victim must catch up by snapshot.
        nn = 11
        for _ in range(nn):
            c.start(sender, cmd(rng.random()))
        if not disconnect and not crash:
            c.one(cmd(rng.random()), 3)
        else:
            c.one(cmd(rng.random()), 2)
        if disconnect:
            c.connect(victim)
            c.one(cmd(rng.random()), 3)
            leader1 = c.check_one_leader()
        if crash:
            c.restart(victim)
            c.one(cmd(rng.random()), 3)
            leader1 = c.check_one_leader()
    snaps = sum(1 for n in c.nodes.values() if n.storage.snapshot().metadata.index)
    assert snaps == 3


def test_SnapshotBasic():
    _snap_common(False, True, False)


def test_SnapshotInstall():
    _snap_common(True, True, False)


def test_SnapshotInstallUnreliable():
    _snap_common(True, False, False)


def test_SnapshotInstallCrash():
    _snap_common(False, True, True)


def test_SnapshotInstallUnCrash():
    _snap_common(False, False, True)


def test_SnapshotAllCrash():
    c = SimCluster(3, SEED, snapshot_interval=10)
    rng = random.Random(SEED)
    c.one(cmd(rng.random()), 3)
    for _ in range(5):
        for _ in range(11):
            c.one(cmd(rng.random()), 3)
        index1 = c.one(cmd(rng.random()), 3)
        for i in range(1, 4):
            c.crash(i)
        for i in range(1, 4):
            c.restart(i)
        index2 = c.one(cmd(rng.random()), 3)
        assert index2 >= index1 + 1


def test_SnapshotInit():
    c = SimCluster(3, SEED, snapshot_interval=10)
    rng = random.Random(SEED)
    c.one(cmd(rng.random()), 3)
    for _ in range(11):
        c.one(cmd(rng.random()), 3)
    for i in range(1, 4):
        c.crash(i)
    for i in range(1, 4):
        c.restart(i)
    c.one(cmd(rng.random()), 3)  # a snapshot on disk and a log after it must boot
    for i in range(1, 4):
        c.crash(i)
    for i in range(1, 4):
        c.restart(i)
    c.one(cmd(rng.random()), 3)
    assert all(n.storage.snapshot().metadata.index for n in c.nodes.values())
