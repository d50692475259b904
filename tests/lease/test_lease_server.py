"""Leases on a kubekv process: differential against etcd 3.5, expiry, restart, etcdctl, aetcd."""

from __future__ import annotations

import asyncio
import time

import aetcd
import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from tests.harness import etcd_process, etcdctl, kubekv_process
from tests.watch.client import WatchStream


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leasediff")
    procs = [etcd_process(tmp), kubekv_process(tmp)]
    for p in procs:
        p.start()
    yield procs
    for p in procs:
        p.stop()


def _show(msg) -> str:
    msg.header.ClearField("cluster_id")
    msg.header.ClearField("member_id")
    msg.header.ClearField("raft_term")
    return str(msg)


def _call(fn, req) -> str:
    try:
        return _show(fn(req))
    except grpc.RpcError as exc:
        return f"{exc.code()} {exc.details()}"


def test_lease_responses_match_etcd(servers):
    def scenario(proc):
        lease = rpc_pb2_grpc.LeaseStub(proc.channel)
        kv = proc.kv
        out = [
            _call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=1, ID=100)),  # raised to 2 s
            _call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=60, ID=100)),
            _call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=9_000_000_001, ID=5)),
            _call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=600, ID=200)),
            _call(kv.Put, pb.PutRequest(key=b"l/a", value=b"1", lease=100)),
            _call(kv.Put, pb.PutRequest(key=b"l/b", value=b"1", lease=100)),
            _call(kv.Put, pb.PutRequest(key=b"l/c", value=b"1", lease=101)),
            _call(kv.Put, pb.PutRequest(key=b"l/b", value=b"2", lease=200)),
            _call(kv.Put, pb.PutRequest(key=b"l/a", value=b"3", ignore_lease=True)),
            _call(kv.Put, pb.PutRequest(key=b"l/z", ignore_lease=True)),
            _call(kv.Txn, pb.TxnRequest(success=[pb.RequestOp(
                request_put=pb.PutRequest(key=b"l/t", lease=999))])),
        ]
        ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=200, keys=True))
        out.append((ttl.grantedTTL, ttl.TTL >= 598, list(ttl.keys)))
        out.append(_call(lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=101, keys=True)))
        out.append(_call(lease.LeaseLeases, pb.LeaseLeasesRequest()))
        out.append([_show(r) for r in lease.LeaseKeepAlive(iter(
            [pb.LeaseKeepAliveRequest(ID=200), pb.LeaseKeepAliveRequest(ID=7)]))])
        out.append(_call(lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=100)))
        out.append(_call(lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=100)))
        out.append(_call(kv.Range, pb.RangeRequest(key=b"l/", range_end=b"l0")))
        return out

    a, b = (scenario(p) for p in servers)
    assert b == a


def test_long_keys_on_a_lease_match_etcd(servers):
    """Keys past LMDB's key limit attach to a lease, are listed by TimeToLive and
    deleted by the revoke, as in etcd."""
    head = b"ll/" + b"h" * 500

    def scenario(proc):
        lease = rpc_pb2_grpc.LeaseStub(proc.channel)
        kv = proc.kv
        lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600, ID=300))
        for tail in (b"b", b"a", b"c" * 3000):
            kv.Put(pb.PutRequest(key=head + tail, value=b"1", lease=300))
        kv.Put(pb.PutRequest(key=head + b"c" * 3000, value=b"2"))  # detached
        ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=300, keys=True))
        out = [sorted(ttl.keys)]
        out.append(_call(lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=300)))
        rng = kv.Range(pb.RangeRequest(key=b"ll/", range_end=b"ll0", keys_only=True))
        out.append([k.key for k in rng.kvs])
        return out

    a, b = (scenario(p) for p in servers)
    assert b == a
    assert a[0] == [head + b"a", head + b"b"]


def test_expiry_deletes_keys_in_one_revision(shared_kubekv):
    lease = rpc_pb2_grpc.LeaseStub(shared_kubekv.channel)
    kv = shared_kubekv.kv
    lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2)).ID
    for k in (b"exp/a", b"exp/b", b"exp/c"):
        kv.Put(pb.PutRequest(key=k, value=b"v", lease=lid))
    ws = WatchStream(shared_kubekv.channel)
    try:
        ws.create(b"exp/", range_end=b"exp0")
        ws.wait_count(1)
        # TTL 2 s + 1 s of Promote extension at most: the deletes arrive as one revision
        rs = ws.wait(lambda rs: len(rs) > 1, timeout=10)
        assert [(e.type, e.kv.key) for e in rs[1].events] == [
            (1, b"exp/a"), (1, b"exp/b"), (1, b"exp/c")]
        assert len({e.kv.mod_revision for e in rs[1].events}) == 1
    finally:
        ws.close()
    ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid))
    assert ttl.TTL == -1


def test_keepalive_keeps_a_lease_past_its_ttl(shared_kubekv):
    lease = rpc_pb2_grpc.LeaseStub(shared_kubekv.channel)
    lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2)).ID
    deadline = time.monotonic() + 4
    reqs = []
    while time.monotonic() < deadline:
        reqs = list(lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lid)])))
        assert reqs[0].TTL == 2
        time.sleep(0.5)  # the client's keep-alive period, not a synchronisation
    assert lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid)).TTL >= 1


def test_leases_survive_restart_and_get_their_full_ttl(tmp_path):
    proc = kubekv_process(tmp_path)
    proc.start()
    try:
        lease = rpc_pb2_grpc.LeaseStub(proc.channel)
        lease.LeaseGrant(pb.LeaseGrantRequest(ID=42, TTL=30))
        proc.kv.Put(pb.PutRequest(key=b"r/a", value=b"1", lease=42))
        proc.kill()  # crash: the lease and its key must come back from the state db
        proc.start()
        lease = rpc_pb2_grpc.LeaseStub(proc.channel)
        ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=42, keys=True))
        assert (ttl.grantedTTL, list(ttl.keys)) == (30, [b"r/a"])
        assert 30 <= ttl.TTL <= 31  # etcd's Promote: full TTL + one election timeout
        lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=42))
        assert not proc.kv.Range(pb.RangeRequest(key=b"r/a")).kvs
    finally:
        proc.stop()


def test_etcdctl_lease_commands(shared_kubekv):
    ep = shared_kubekv.endpoint
    out = etcdctl(ep, "lease", "grant", "10").stdout
    lid = out.split()[1]
    assert out.strip() == f"lease {lid} granted with TTL(10s)"
    etcdctl(ep, "put", "--lease", lid, "ctl-lease/k", "v")
    out = etcdctl(ep, "lease", "timetolive", "--keys", lid).stdout
    assert f"lease {lid} granted with TTL(10s), remaining(" in out
    assert "attached keys([ctl-lease/k])" in out
    assert lid in etcdctl(ep, "lease", "list").stdout
    out = etcdctl(ep, "lease", "keep-alive", "--once", lid).stdout
    assert out.strip() == f"lease {lid} keepalived with TTL(10)"
    assert etcdctl(ep, "lease", "revoke", lid).stdout.strip() == f"lease {lid} revoked"
    assert etcdctl(ep, "get", "ctl-lease/k").stdout == ""
    out = etcdctl(ep, "lease", "timetolive", lid).stdout
    assert out.strip() == f"lease {lid} already expired"
    res = etcdctl(ep, "lease", "revoke", lid, check=False)
    assert "etcdserver: requested lease not found" in res.stderr


def test_aetcd_lease_api(shared_kubekv):
    host, port = shared_kubekv.endpoint.split(":")

    async def main():
        async with aetcd.Client(host=host, port=int(port)) as client:
            lease = await client.lease(20)
            await client.put(b"ae-lease/k", b"v", lease=lease)
            info = await client.get_lease_info(lease.id)
            refreshed = await client.refresh_lease(lease.id)
            await client.revoke_lease(lease.id)
            gone = await client.get(b"ae-lease/k")
            return info, refreshed, gone

    info, refreshed, gone = asyncio.run(asyncio.wait_for(main(), 20))
    assert info.grantedTTL == 20 and list(info.keys) == [b"ae-lease/k"]
    assert (refreshed.ID, refreshed.TTL) == (info.ID, 20)
    assert gone is None
