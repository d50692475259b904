"""The lessor and the durable lease records as pure units: injected clock, temporary LMDB."""

from __future__ import annotations

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb.kv_pb2 import Event
from kubekv_server import errors
from kubekv_server.backend.state_db import Backend
from kubekv_server.lease import LeaseStore, Lessor, min_lease_ttl
from kubekv_server.lease.lessor import EXPIRED_RETRY_INTERVAL, LEASE_REVOKE_RATE
from kubekv_server.mvcc import MVCCStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_min_ttl_is_etcds():
    assert min_lease_ttl(1000, 100) == 2  # 15 ticks of 100 ms = 1.5 s -> 2
    assert min_lease_ttl(5000, 500) == 8  # 15 ticks of 500 ms = 7.5 s -> 8
    assert min_lease_ttl(300, 100) == 1  # 4 ticks of 100 ms = 0.4 s -> 1


def test_only_the_primary_runs_deadlines(clock):
    le = Lessor(clock)
    le.granted(1, 5)
    clock.now += 100
    assert le.expired() == []  # a follower keeps leases forever
    assert le.lookup(1)[1] == float("inf")
    with pytest.raises(errors.EtcdError) as exc:
        le.renew(1)
    assert exc.value is errors.NOT_LEADER
    le.promote(1.0)
    assert le.lookup(1) == (5, 6.0)  # full TTL + one election timeout
    clock.now += 5.9
    assert le.expired() == []
    clock.now += 0.2
    assert le.expired() == [1]
    assert le.expired() == []  # proposed; not again before the retry interval
    clock.now += EXPIRED_RETRY_INTERVAL
    assert le.expired() == [1]
    le.revoked(1)
    assert le.expired() == [] and not le.exists(1)
    le.demote()
    le.granted(2, 5)
    clock.now += 100
    assert le.expired() == []


def test_renew_resets_to_the_granted_ttl(clock):
    le = Lessor(clock)
    le.promote(1.0)
    le.granted(7, 10)
    clock.now += 8
    assert le.renew(7) == 10
    assert le.lookup(7) == (10, 10.0)
    clock.now += 10
    with pytest.raises(errors.EtcdError) as exc:
        le.renew(7)  # expired: waits (here: not at all) for the revoke, then not found
    assert exc.value is errors.LEASE_NOT_FOUND
    with pytest.raises(errors.EtcdError):
        le.renew(8)


def test_checkpoints_carry_the_remaining_ttl_to_a_new_leader(clock):
    """etcd's lease checkpoints: the leader records remaining TTLs every interval; a
    member promoted later gives that remaining TTL, not the full one."""
    leader, follower = Lessor(clock, checkpoint_interval=10), Lessor(clock, 10)
    leader.promote(0.0)
    for le in (leader, follower):
        le.granted(1, 100)
        le.granted(2, 5)  # not longer than the interval: never checkpointed
    clock.now += 9
    assert leader.due_checkpoints() == []
    clock.now += 1
    assert leader.due_checkpoints() == [(1, 90)]
    assert leader.due_checkpoints() == []  # once per interval
    for le in (leader, follower):
        le.checkpointed(1, 90)
    assert follower.due_checkpoints() == []  # only the leader checkpoints
    clock.now += 10
    assert leader.due_checkpoints() == [(1, 80)]
    follower.promote(2.0)  # the follower saw the checkpoint of 90 s
    assert follower.lookup(1) == (100, 92.0)
    assert follower.lookup(2) == (5, 7.0)
    # a renewal gives the full TTL, and its checkpoint must be cleared through the log
    assert follower.renew(1) == 100 and follower.clears_checkpoint(1)
    follower.checkpointed(1, 0)
    assert not follower.clears_checkpoint(1)
    assert Lessor(clock).due_checkpoints() == []  # checkpoints off by default


def test_promote_spreads_leases_that_would_pile_up(clock):
    le = Lessor(clock)
    n = 2 * LEASE_REVOKE_RATE
    le.restore([(i, 10) for i in range(1, n + 1)])
    le.promote(1.0)
    expiries = sorted(le.lookup(i)[1] for i in range(1, n + 1))
    per_second: dict[int, int] = {}
    for e in expiries:
        per_second[int(e)] = per_second.get(int(e), 0) + 1
    assert max(per_second.values()) <= (3 * LEASE_REVOKE_RATE) // 4 + 1
    assert expiries[0] == 11.0


@pytest.fixture
def db(tmp_path):
    backend = Backend(str(tmp_path / "state"))
    yield backend, MVCCStore(backend.env), LeaseStore(backend, min_ttl=2)
    backend.close()


def test_grant_rules_and_attachments(db):
    backend, mvcc, leases = db
    with backend.env.begin(write=True) as txn:
        assert leases.grant(txn, pb.LeaseGrantRequest(ID=5, TTL=1)) == 2  # minimum TTL
        assert leases.grant(txn, pb.LeaseGrantRequest(ID=6, TTL=60)) == 60
        with pytest.raises(errors.EtcdError) as exc:
            leases.grant(txn, pb.LeaseGrantRequest(ID=5, TTL=9))
        assert exc.value is errors.LEASE_EXIST
        w = mvcc.write(txn)
        w.put(b"a", b"1", 5)
        w.put(b"b", b"1", 5)
        w.put(b"c", b"1", 6)
        w.end()
        leases.track(txn, w.changes)
        w = mvcc.write(txn)
        w.put(b"b", b"2", 6)  # moves from lease 5 to lease 6
        w.delete_range(b"c", None)  # detaches from lease 6
        w.end()
        leases.track(txn, w.changes)
        assert leases.keys(txn, 5) == [b"a"]
        assert leases.keys(txn, 6) == [b"b"]
        # the write txn says whether a change moved a key between leases (the applier
        # follows its changes only then): exactly when track finds one to follow
        for ops in ([(b"a", 5)], [(b"a", 0)], [(b"new", 0)], [(b"new", 0), (b"x", 5)],
                    [(b"b", None)], [(b"new", None)]):
            w = mvcc.write(txn)
            for key, lease in ops:
                w.put(key, b"3", lease) if lease is not None else w.delete_range(key, None)
            w.end()
            assert w.leases_moved == leases.track(txn, w.changes), ops
        assert leases.keys(txn, 5) == [b"x"]
        w = mvcc.write(txn)
        w.put(b"b", b"4", 6)
        w.end()
        leases.track(txn, w.changes)
        w = mvcc.write(txn)
        leases.revoke(txn, w, 6)
        rev = w.end()
        assert [(e.type, e.kv.key, e.kv.mod_revision) for e in w.changes] == [
            (Event.DELETE, b"b", rev)]
        assert leases.all(txn) == [(5, 2)]
        with pytest.raises(errors.EtcdError) as exc:
            leases.revoke(txn, mvcc.write(txn), 6)
        assert exc.value is errors.LEASE_NOT_FOUND
