"""Kubernetes' access pattern on a 3-member cluster with the watched member killed mid-run.

kube-apiserver's reflector: a paginated list at one revision R, then a watch from R+1 with
prev_kv and progress notifications; objects with leases (events) expire and arrive as
DELETE. The watch is opened on the leader, which is killed with SIGKILL mid-run; the
reflector re-creates it on another member from its last resource version + 1 (the last
event's revision or the last progress notification's). At every event batch and every
progress notification, the cache built from list + watch must equal a fresh list at that
revision.
"""

from __future__ import annotations

import random
import threading
import time

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing.cluster import ETCD_TIMINGS, Cluster
from kubekv_testing.cluster_clients import FailoverKV, ResumingWatch

PFX, END = b"/registry/pods/", b"/registry/pods0"
PAGE = 25


def paginated_list(kv: FailoverKV, revision: int = 0) -> tuple[int, dict[bytes, pb.KeyValue]]:
    """kube-apiserver's list: pages of PAGE keys, every page at the first page's revision."""
    out: dict[bytes, pb.KeyValue] = {}
    key = PFX
    while True:
        r = kv.call("Range", pb.RangeRequest(key=key, range_end=END, limit=PAGE,
                                             revision=revision))
        revision = revision or r.header.revision
        for x in r.kvs:
            out[x.key] = x
        if not r.more:
            return revision, out
        key = r.kvs[-1].key + b"\x00"


def test_list_watch_cache_across_a_member_kill(tmp_path):
    cluster = Cluster(tmp_path, **ETCD_TIMINGS,
                      flags=("--experimental-watch-progress-notify-interval", "200ms"))
    cluster.start()
    kv = FailoverKV(cluster)
    watch = None
    try:
        leader = cluster.wait_leader()
        lease = rpc_pb2_grpc.LeaseStub(leader.channel)
        lease_keys = [PFX + b"lease-%02d" % i for i in range(8)]
        for i in range(60):
            kv.call("Put", pb.PutRequest(key=PFX + b"p%02d" % i, value=b"init"))
        for k in lease_keys[:4]:  # expiring before and during the run
            lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2)).ID
            kv.call("Put", pb.PutRequest(key=k, value=b"leased", lease=lid))

        rev, listed = paginated_list(kv)
        assert len(listed) == 64
        cache = {k: v.value for k, v in listed.items()}
        watch = ResumingWatch(cluster, leader, pb.WatchCreateRequest(
            key=PFX, range_end=END, start_revision=rev + 1, prev_kv=True, progress_notify=True))

        done = threading.Event()
        ops = [0]

        def writer():
            rnd = random.Random(11)
            for n in range(300):
                k = PFX + b"p%02d" % rnd.randrange(70)
                c = rnd.random()
                if c < 0.25:
                    kv.call("DeleteRange", pb.DeleteRangeRequest(key=k))
                else:
                    kv.call("Put", pb.PutRequest(key=k, value=b"v%d" % n))
                kv.call("Put", pb.PutRequest(key=b"/registry/events/x", value=b"%d" % n))
                if n % 75 == 0:  # more leased objects, left to expire
                    lid = kv.call("LeaseGrant", pb.LeaseGrantRequest(TTL=2),
                                  service="Lease").ID
                    kv.call("Put", pb.PutRequest(key=lease_keys[4 + n // 75], value=b"leased",
                                                 lease=lid))
                ops[0] = n + 1
            done.set()

        t = threading.Thread(target=writer)
        t.start()

        seen = 0
        checks = progress = 0
        lease_deletes = set()
        killed = None
        final_rev = None
        while True:
            rs = watch.wait(lambda rs, n=seen: len(rs) > n, timeout=60)
            if watch.canceled is not None:
                raise AssertionError(f"watch canceled: {watch.canceled}")
            for r in rs[seen:]:
                if r.events:
                    for e in r.events:
                        assert e.kv.mod_revision > rev, "event at or before the cache's revision"
                        rev = e.kv.mod_revision
                        old = cache.get(e.kv.key)
                        if old is None:
                            assert not e.HasField("prev_kv")
                        else:
                            assert e.prev_kv.value == old, f"prev_kv differs at {rev}"
                        if e.type == e.PUT:
                            cache[e.kv.key] = e.kv.value
                        else:
                            cache.pop(e.kv.key, None)
                            if e.kv.key in lease_keys:
                                lease_deletes.add(e.kv.key)
                    at = rev
                else:
                    assert r.header.revision >= rev, "progress notification went back"
                    rev = at = r.header.revision
                    progress += 1
                _, fresh = paginated_list(kv, at)
                assert cache == {k: v.value for k, v in fresh.items()}, f"cache differs at {at}"
                checks += 1
            seen = len(rs)
            if killed is None and ops[0] >= 100:
                killed = cluster.wait_leader()
                assert killed is watch.member
                killed.kill()
            if final_rev is None and done.is_set() and len(lease_deletes) == len(lease_keys):
                final_rev = kv.call("Range", pb.RangeRequest(key=b"x")).header.revision
            if final_rev is not None and progress and rev >= final_rev and not rs[-1].events:
                break  # a progress notification at or after the last write
        t.join()
        assert watch.resumes >= 1  # the watch was on the killed leader and moved
        assert lease_deletes == set(lease_keys)  # every leased object expired as a DELETE
        assert progress >= 2 and checks > 50, (progress, checks)
        _, fresh = paginated_list(kv, rev)
        assert cache == {k: v.value for k, v in fresh.items()}
        assert not any(k in cache for k in lease_keys)
    finally:
        if watch is not None:
            watch.close()
        kv.close()
        cluster.close()


def test_linearizable_list_on_a_follower_answers_across_a_leader_kill(tmp_path):
    """A list (a linearizable Range) sent to a follower just after the leader died must
    not hang: it is answered once a new leader confirms the read index, or fails within
    etcd's request timeout (7 s), never waits for the client's deadline."""
    cluster = Cluster(tmp_path, **ETCD_TIMINGS)
    cluster.start()
    try:
        leader = cluster.wait_leader()
        follower = next(m for m in cluster.members if m is not leader)
        follower.kv.Put(pb.PutRequest(key=PFX + b"a", value=b"1"))
        leader.kill()
        results = []
        for _ in range(5):  # some are sent before the followers notice the leader is gone
            t0 = time.monotonic()
            try:
                r = follower.kv.Range(pb.RangeRequest(key=PFX, range_end=END), timeout=30)
                results.append((time.monotonic() - t0, r.count))
            except grpc.RpcError as exc:
                results.append((time.monotonic() - t0, exc.code()))
        assert all(took < 7 + 2 for took, _ in results), results
        assert results[-1][1] == 1, results
    finally:
        cluster.close()
