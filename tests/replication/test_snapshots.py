"""Raft snapshots on real processes: --snapshot-count compacts the log, and a member
that fell behind the compacted log catches up from the leader's snapshot."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from tests.harness import ROOT, ServerProcess, free_port


def _cluster(tmp_path, n: int, *flags: str) -> list[ServerProcess]:
    peers = [free_port() for _ in range(n)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
    procs = []
    for i in range(n):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "kubekv_server", "--name", f"m{i}",
                "--data-dir", str(tmp_path / f"m{i}"),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", f"http://127.0.0.1:{peers[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peers[i]}",
                "--initial-cluster", initial, *flags]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
        procs.append(ServerProcess(argv, tmp_path / f"m{i}", port, tmp_path / f"m{i}.log", env))
    # start all before waiting for any: a member is ready only once there is a leader
    for p in procs:
        log = open(p.log_path, "ab")
        p.proc = subprocess.Popen(p.argv, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=p.env)
        log.close()
    for p in procs:
        p.wait_ready(60)
    return procs


def _leader(procs: list[ServerProcess]) -> ServerProcess:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc is None or p.proc.poll() is not None:
                continue
            try:
                st = p.maintenance.Status(pb.StatusRequest(), timeout=2)
            except grpc.RpcError:
                continue
            if st.leader == st.header.member_id:
                return p
        time.sleep(0.05)
    raise AssertionError("no leader")


def _wait(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def cluster(tmp_path):
    procs = _cluster(tmp_path, 3, "--snapshot-count", "20")
    yield procs
    for p in procs:
        p.stop()


def test_lagging_member_catches_up_from_a_snapshot(cluster):
    leader = _leader(cluster)
    follower = next(p for p in cluster if p is not leader)
    follower_id = follower.maintenance.Status(pb.StatusRequest()).header.member_id
    follower.kill()
    for i in range(120):
        leader.kv.Put(pb.PutRequest(key=b"k%03d" % i, value=b"v%d" % i))
    snaps = glob.glob(str(leader.data_dir / "member" / "snap" / "state-*.mdb"))
    assert snaps, "the leader took no snapshot"

    follower.start(60)
    last = leader.kv.Range(pb.RangeRequest(key=b"k119")).header.revision
    _wait(lambda: follower.kv.Range(
        pb.RangeRequest(key=b"k", range_end=b"l", serializable=True, count_only=True)
    ).count == 120)
    assert "snapshot_installed" in follower.log_path.read_text()
    # every member holds the same history up to the same revision
    hashes = {p.maintenance.HashKV(pb.HashKVRequest(revision=last)).hash for p in cluster}
    assert len(hashes) == 1
    # ... and, once every member applied the same entries, the same whole state db
    _wait(lambda: len({p.maintenance.Status(pb.StatusRequest()).raftAppliedIndex
                       for p in cluster}) == 1)
    assert len({p.maintenance.Hash(pb.HashRequest()).hash for p in cluster}) == 1

    # the installed snapshot did not change who the follower is, across a crash too
    follower.kill()
    follower.start(60)
    st = follower.maintenance.Status(pb.StatusRequest())
    assert st.header.member_id == follower_id
    follower.kv.Put(pb.PutRequest(key=b"after", value=b"restart"))
    _wait(lambda: leader.kv.Range(pb.RangeRequest(key=b"after")).kvs[0].value == b"restart")
