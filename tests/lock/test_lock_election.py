"""Lock and Election services (server-side recipes) and etcdctl's client-side lock/elect."""

from __future__ import annotations

import subprocess
import threading

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.v3electionpb import v3election_pb2 as epb
from etcdproto.v3electionpb import v3election_pb2_grpc
from etcdproto.v3lockpb import v3lock_pb2, v3lock_pb2_grpc
from tests.harness import etcd_binary, etcdctl
from tests.watch.test_watch_clients import LineReader


def test_lock_service_mutual_exclusion(shared_kubekv):
    lock = v3lock_pb2_grpc.LockStub(shared_kubekv.channel)
    first = lock.Lock(v3lock_pb2.LockRequest(name=b"mtx"))
    assert first.key.startswith(b"mtx/")
    got = {}

    def second():
        got["resp"] = lock.Lock(v3lock_pb2.LockRequest(name=b"mtx"), timeout=20)

    t = threading.Thread(target=second)
    t.start()
    t.join(0.5)  # bounded check that it is still waiting (it must be)
    assert t.is_alive()
    lock.Unlock(v3lock_pb2.UnlockRequest(key=first.key))
    t.join(20)
    assert got["resp"].key != first.key
    assert got["resp"].header.revision > first.header.revision
    lock.Unlock(v3lock_pb2.UnlockRequest(key=got["resp"].key))


def test_lock_with_unknown_lease_fails(shared_kubekv):
    lock = v3lock_pb2_grpc.LockStub(shared_kubekv.channel)
    with pytest.raises(grpc.RpcError) as exc:
        lock.Lock(v3lock_pb2.LockRequest(name=b"mtx2", lease=12345))
    assert exc.value.details() == "etcdserver: requested lease not found"


def test_election_service(shared_kubekv):
    el = v3election_pb2_grpc.ElectionStub(shared_kubekv.channel)
    with pytest.raises(grpc.RpcError) as exc:
        el.Leader(epb.LeaderRequest(name=b"el"))
    assert (exc.value.code(), exc.value.details()) == (grpc.StatusCode.UNKNOWN,
                                                        "election: no leader")
    observed = []
    obs = el.Observe(epb.LeaderRequest(name=b"el"))
    def read():
        try:
            for r in obs:
                observed.append(r.kv.value)
        except grpc.RpcError:
            pass  # canceled by the test

    reader = threading.Thread(target=read)
    reader.start()
    c1 = el.Campaign(epb.CampaignRequest(name=b"el", value=b"one"))
    assert c1.leader.key.startswith(b"el/") and c1.leader.rev == c1.header.revision
    assert el.Leader(epb.LeaderRequest(name=b"el")).kv.value == b"one"
    el.Proclaim(epb.ProclaimRequest(leader=c1.leader, value=b"uno"))
    got = {}
    t = threading.Thread(target=lambda: got.setdefault(
        "c2", el.Campaign(epb.CampaignRequest(name=b"el", value=b"two"), timeout=20)))
    t.start()
    t.join(0.5)
    assert t.is_alive()  # waits for the first leader
    el.Resign(epb.ResignRequest(leader=c1.leader))
    t.join(20)
    assert el.Leader(epb.LeaderRequest(name=b"el")).kv.value == b"two"
    with pytest.raises(grpc.RpcError) as exc:
        el.Proclaim(epb.ProclaimRequest(leader=c1.leader, value=b"x"))
    assert exc.value.details() == "election: not leader"
    with pytest.raises(grpc.RpcError) as exc:
        el.Proclaim(epb.ProclaimRequest(value=b"x"))
    assert exc.value.details() == '"leader" field must be provided'
    obs.cancel()
    reader.join(10)
    assert observed[:3] == [b"one", b"uno", b"two"]


def _popen(ep, *args):
    return subprocess.Popen(
        [etcd_binary("etcdctl"), f"--endpoints={ep}", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


def test_etcdctl_lock_waits_for_the_holder(shared_kubekv):
    ep = shared_kubekv.endpoint
    holder = _popen(ep, "lock", "ctl-mtx")
    try:
        h = LineReader(holder)
        key = h.wait(lambda ls: len(ls) >= 1)[0]
        assert key.startswith("ctl-mtx/")
        # a command run under the lock once the holder lets go
        waiter = _popen(ep, "lock", "ctl-mtx", "echo", "got-it")
        w = LineReader(waiter)
        assert etcdctl(ep, "get", key).stdout.split()[0] == key
        holder.terminate()  # etcdctl releases the lock on SIGTERM
        holder.wait(10)
        assert w.wait(lambda ls: "got-it" in ls)
        waiter.wait(10)
    finally:
        for p in (holder,):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_etcdctl_elect(shared_kubekv):
    ep = shared_kubekv.endpoint
    leader = _popen(ep, "elect", "ctl-el", "p1")
    observer = _popen(ep, "elect", "-l", "ctl-el")
    try:
        lines = LineReader(leader).wait(lambda ls: len(ls) >= 2)
        assert lines[0].startswith("ctl-el/") and lines[1] == "p1"
        seen = LineReader(observer).wait(lambda ls: "p1" in ls)
        assert seen[0].startswith("ctl-el/")
    finally:
        for p in (leader, observer):
            p.kill()
            p.wait()


def test_session_lease_is_granted_when_none_given(shared_kubekv):
    lock = v3lock_pb2_grpc.LockStub(shared_kubekv.channel)
    resp = lock.Lock(v3lock_pb2.LockRequest(name=b"sess"))
    lease_id = int(resp.key.split(b"/")[1], 16)
    from etcdproto.etcdserverpb import rpc_pb2_grpc
    ttl = rpc_pb2_grpc.LeaseStub(shared_kubekv.channel).LeaseTimeToLive(
        pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True))
    assert ttl.grantedTTL == 60 and list(ttl.keys) == [resp.key]
