"""Leases on a 3-member cluster of real processes: keep-alive and time-to-live through a
follower (forwarded to the leader, as etcd does), and expiry across a kill -9 of the leader.
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing.cluster import ETCD_TIMINGS, Cluster
from tests.watch.client import WatchStream

# the cluster's --election-timeout (etcd's default, ms)
ELECTION_S = 1.0


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, **ETCD_TIMINGS)
    c.start()
    yield c
    c.close()


class KeepAlive:
    """A keep-alive stream that sends one request each time `send` is called, and keeps
    every response with its arrival time."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.responses: list[tuple[float, pb.LeaseKeepAliveResponse]] = []
        self.error: grpc.RpcError | None = None
        self._cond = threading.Condition()
        self._call = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive(self._gen())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _gen(self):
        while True:
            r = self._q.get()
            if r is None:
                return
            yield r

    def _read(self) -> None:
        try:
            for r in self._call:
                with self._cond:
                    self.responses.append((time.monotonic(), r))
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        with self._cond:
            self._cond.notify_all()

    def send(self, lease_id: int) -> None:
        self._q.put(pb.LeaseKeepAliveRequest(ID=lease_id))

    def renew(self, lease_id: int, timeout: float = 15.0) -> pb.LeaseKeepAliveResponse:
        """Send one request and wait for its response."""
        with self._cond:
            n = len(self.responses)
        self.send(lease_id)
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.responses) <= n:
                assert self.error is None, self.error
                left = deadline - time.monotonic()
                assert left > 0, "no keep-alive response"
                self._cond.wait(left)
            return self.responses[n][1]

    def close(self) -> None:
        self._q.put(None)
        self._call.cancel()
        self._thread.join(5)


def test_keepalive_and_time_to_live_through_a_follower(cluster):
    leader = cluster.wait_leader()
    follower = next(m for m in cluster.members if m is not leader)
    f_id = follower.id
    lease_f = rpc_pb2_grpc.LeaseStub(follower.channel)
    lid = lease_f.LeaseGrant(pb.LeaseGrantRequest(TTL=3)).ID
    follower.kv.Put(pb.PutRequest(key=b"lk/a", value=b"1", lease=lid))

    ka = KeepAlive(follower.channel)
    try:
        granted_at = time.monotonic()
        # keep it alive through the follower for well past its TTL
        while time.monotonic() - granted_at < 3 * 3:
            r = ka.renew(lid)
            assert (r.ID, r.TTL) == (lid, 3)
            assert r.header.member_id == f_id  # the follower answers, with the leader's TTL
            ttl = lease_f.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid, keys=True))
            assert ttl.grantedTTL == 3 and 1 <= ttl.TTL <= 3, ttl  # the leader's countdown
            assert list(ttl.keys) == [b"lk/a"]
            assert ttl.header.member_id == f_id
            time.sleep(1.0)  # the client's keep-alive period (a third of the TTL)
        assert follower.kv.Range(pb.RangeRequest(key=b"lk/a")).count == 1
        # unknown leases: TTL 0 on keep-alive, -1 on time-to-live (etcd)
        assert ka.renew(12345).TTL == 0
        assert lease_f.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=12345)).TTL == -1
    finally:
        ka.close()
    # without keep-alives the leader expires it
    ws = WatchStream(follower.channel)
    try:
        ws.create(b"lk/a")
        rs = ws.wait(lambda rs: any(e.type == e.DELETE for r in rs for e in r.events),
                     timeout=3 + 2 * ELECTION_S + 3)
        assert [e.kv.key for r in rs for e in r.events] == [b"lk/a"]
    finally:
        ws.close()
    assert lease_f.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid)).TTL == -1


def test_lease_expiry_across_a_leader_kill(cluster):
    """Leases granted before a kill -9 of the leader: none expires before its TTL has run
    on the new leader (etcd's Promote gives each its full TTL plus an election timeout),
    none outlives that by more than a little, and one kept alive through a follower
    stays alive throughout."""
    leader = cluster.wait_leader()
    follower, other = [m for m in cluster.members if m is not leader]
    lease_l = rpc_pb2_grpc.LeaseStub(leader.channel)
    ttls = [3, 5, 7]
    leases = {}
    for ttl in ttls:
        lid = lease_l.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl)).ID
        leader.kv.Put(pb.PutRequest(key=b"fo/%d" % ttl, value=b"v", lease=lid))
        leases[ttl] = lid
    kept = lease_l.LeaseGrant(pb.LeaseGrantRequest(TTL=3)).ID
    leader.kv.Put(pb.PutRequest(key=b"fo/kept", value=b"v", lease=kept))
    rev = leader.kv.Range(pb.RangeRequest(key=b"fo/")).header.revision

    # the expiry events, timed on a follower that survives
    ws = WatchStream(follower.channel)
    ka = KeepAlive(other.channel)
    try:
        ws.create(b"fo/", range_end=b"fo0", start_revision=rev + 1)
        ws.wait_count(1)  # created
        assert ka.renew(kept).TTL == 3
        killed_at = time.monotonic()
        leader.kill()
        cluster.wait_leader(exclude=leader)
        elected_at = time.monotonic()
        expired: dict[bytes, float] = {}
        deadline = elected_at + max(ttls) + ELECTION_S + 5
        while len(expired) < len(ttls):
            # keep `kept` alive through the surviving follower meanwhile (a third of its TTL)
            assert ka.renew(kept).TTL == 3
            try:
                ws.wait(lambda rs: sum(len(r.events) for r in rs) > len(expired), timeout=1.0)
            except AssertionError:
                pass
            now = time.monotonic()
            for e in ws.events():
                expired.setdefault(e.kv.key, now)
            assert now < deadline, f"leases outlived their TTL: {expired}"
        assert set(expired) == {b"fo/%d" % t for t in ttls}, expired
        slack = 1.5  # the lessor's 500 ms rounds, the revoke's commit, the watch, polling
        for ttl in ttls:
            at = expired[b"fo/%d" % ttl]
            assert at >= killed_at + ttl, f"TTL {ttl} expired early: {at - killed_at:.2f}s"
            assert at <= elected_at + ttl + ELECTION_S + slack, \
                f"TTL {ttl} expired late: {at - elected_at:.2f}s after the election"
        # expired one by one, in TTL order, not all at once
        order = sorted(expired, key=expired.get)
        assert order == [b"fo/%d" % t for t in ttls]
        assert other.kv.Range(pb.RangeRequest(key=b"fo/kept")).count == 1
        ttl = rpc_pb2_grpc.LeaseStub(other.channel).LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=kept))
        assert ttl.grantedTTL == 3 and ttl.TTL >= 1
    finally:
        ka.close()
        ws.close()


def test_checkpointed_lease_keeps_its_remaining_ttl_across_a_leader_kill(tmp_path):
    """--experimental-enable-lease-checkpoint (interval shortened to 1 s): after the
    leader dies, the new leader gives a lease what remained of its TTL at the last
    checkpoint (plus an election timeout), not its full TTL as without checkpoints."""
    c = Cluster(tmp_path, **ETCD_TIMINGS, flags=("--experimental-enable-lease-checkpoint",),
                env={"KUBEKV_LEASE_CHECKPOINT_INTERVAL": "1"})
    c.start()
    try:
        leader = c.wait_leader()
        lid = rpc_pb2_grpc.LeaseStub(leader.channel).LeaseGrant(
            pb.LeaseGrantRequest(TTL=60)).ID
        time.sleep(5)  # several checkpoints: the last one says about 55-56 s remain
        leader.kill()
        new = c.wait_leader(exclude=leader)
        ttl = rpc_pb2_grpc.LeaseStub(new.channel).LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=lid)).TTL
        assert 50 <= ttl <= 57 + ELECTION_S, ttl  # without checkpoints: 60 + ELECTION_S
    finally:
        c.close()
