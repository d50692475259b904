"""A kubekv member started on a data dir made by `etcdutl snapshot restore` from a
real etcd's backup serves that etcd's keys, revisions and leases, and a member added
afterwards receives them too (the imported state reaches it in a Raft snapshot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from tests.harness import ROOT, ServerProcess, etcd_binary, etcdctl, free_port


def _kubekv(tmp, name, data_dir, peer, initial, *flags) -> ServerProcess:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "kubekv_server", "--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial, *flags]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    return ServerProcess(argv, data_dir, port, tmp / f"{name}.log", env)


def test_kubekv_boots_from_a_real_etcd_backup(real_etcd, tmp_path):
    kv = real_etcd.kv
    for i in range(3):
        kv.Put(pb.PutRequest(key=b"foo%d" % i, value=b"val%d" % i))
    kv.Put(pb.PutRequest(key=b"foo0", value=b"again"))
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"foo2"))
    lease = json.loads(etcdctl(real_etcd.endpoint, "lease", "grant", "300", "-w", "json").stdout)
    etcdctl(real_etcd.endpoint, "put", "leased", "x", "--lease", f"{lease['ID']:x}")
    long = b"long/" + b"k" * 600  # past LMDB's key limit
    for tail in (b"b", b"a"):
        kv.Put(pb.PutRequest(key=long + tail, value=b"v", lease=lease["ID"]))
    want = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
    backup = tmp_path / "etcd.db"
    etcdctl(real_etcd.endpoint, "snapshot", "save", str(backup))

    peer = f"http://127.0.0.1:{free_port()}"
    initial = f"m1={peer}"
    data = tmp_path / "m1.restored"
    subprocess.run([etcd_binary("etcdutl"), "snapshot", "restore", str(backup),
                    "--name", "m1", "--initial-cluster", initial,
                    "--initial-advertise-peer-urls", peer, "--data-dir", str(data)],
                   capture_output=True, check=True, timeout=60)
    m1 = _kubekv(tmp_path, "m1", data, peer, initial).start()
    m2 = None
    try:
        got = m1.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
        assert got.header.revision == want.header.revision
        assert list(got.kvs) == list(want.kvs)
        ttl = rpc_pb2_grpc.LeaseStub(m1.channel).LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=lease["ID"], keys=True))
        assert sorted(ttl.keys) == [b"leased", long + b"a", long + b"b"]

        peer2 = f"http://127.0.0.1:{free_port()}"
        m1.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=[peer2]))
        m2 = _kubekv(tmp_path, "m2", tmp_path / "m2", peer2, f"{initial},m2={peer2}",
                     "--initial-cluster-state", "existing").start()
        assert list(m2.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0")).kvs) == \
            list(want.kvs)
    finally:
        if m2 is not None:
            m2.stop()
        m1.stop()
