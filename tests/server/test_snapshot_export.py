"""Maintenance.Snapshot: kubekv's state as an etcd backend file that etcd's own tools
(and real etcd) read: `snapshot save`, `snapshot status`, `snapshot restore`, then a real
etcd 3.5 booted from the restored data dir serves the same keys, revision and leases."""

from __future__ import annotations

import json
import subprocess

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from tests.harness import ServerProcess, etcd_binary, etcdctl, free_port


def test_snapshot_is_an_etcd_backend_that_real_etcd_boots_from(kubekv, tmp_path):
    kv = kubekv.kv
    for i in range(5):
        kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v%d" % i))
    kv.Put(pb.PutRequest(key=b"k0", value=b"again"))
    kv.DeleteRange(pb.DeleteRangeRequest(key=b"k4"))
    kv.Compact(pb.CompactionRequest(revision=3, physical=True))
    lease = json.loads(etcdctl(kubekv.endpoint, "lease", "grant", "300", "-w", "json").stdout)
    etcdctl(kubekv.endpoint, "put", "leased", "x", "--lease", f"{lease['ID']:x}")
    want = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))

    snap = tmp_path / "backup.db"
    saved = etcdctl(kubekv.endpoint, "snapshot", "save", str(snap))
    assert "Snapshot saved at" in saved.stdout + saved.stderr
    assert snap.stat().st_size % 512 == 32  # whole pages, then the sha256

    status = json.loads(subprocess.run(
        [etcd_binary("etcdutl"), "snapshot", "status", str(snap), "-w", "json"],
        capture_output=True, text=True, check=True, timeout=60).stdout)
    assert status["revision"] == want.header.revision

    restored = tmp_path / "restored.etcd"
    subprocess.run([etcd_binary("etcdutl"), "snapshot", "restore", str(snap),
                    "--data-dir", str(restored)], capture_output=True, check=True, timeout=60)
    port, peer = free_port(), free_port()
    real = ServerProcess(
        [etcd_binary("etcd"), "--data-dir", str(restored),
         "--listen-client-urls", f"http://127.0.0.1:{port}",
         "--advertise-client-urls", f"http://127.0.0.1:{port}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--log-level", "warn"],
        restored, port, tmp_path / "real-etcd.log")
    real.start()
    try:
        got = real.kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
        assert got.header.revision == want.header.revision
        assert list(got.kvs) == list(want.kvs)  # values, versions, revisions, leases
        ttl = rpc_pb2_grpc.LeaseStub(real.channel).LeaseTimeToLive(
            pb.LeaseTimeToLiveRequest(ID=lease["ID"], keys=True))
        assert ttl.keys == [b"leased"] and ttl.grantedTTL == 300
    finally:
        real.stop()


def test_large_snapshot_passes_bbolts_integrity_check(kubekv, tmp_path):
    """Thousands of rows (branch pages) and a value larger than a page (overflow pages)."""
    kv = kubekv.kv
    for i in range(3000):
        kv.Put(pb.PutRequest(key=b"key/%05d" % i, value=b"x" * (i % 300)))
    kv.Put(pb.PutRequest(key=b"big", value=b"y" * 200_000))
    snap = tmp_path / "big.db"
    etcdctl(kubekv.endpoint, "snapshot", "save", str(snap))
    res = subprocess.run([etcd_binary("etcdutl"), "snapshot", "status", str(snap), "-w", "json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["revision"] == 3002
    assert status["totalKey"] >= 3001
