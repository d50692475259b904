"""--peer-cert-allowed-cn / --peer-cert-allowed-hostname: the check as pure logic, and
three members where one presents a certificate the others do not allow (etcd's
TestEtcdPeerCNAuth): the two form the cluster, the third is refused and says so in
Go's words."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
from cryptography import x509

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.tls.peer import peer_allowed
from kubekv_testing.cluster import Cluster
from kubekv_testing.pki import CA
from kubekv_testing.polling import wait_for
from tests.harness import ROOT, free_port


def test_common_name_and_hostname_checks():
    ctx = {"x509_common_name": [b"example.com"],
           "x509_subject_alternative_name": [b"node1.example.com", b"127.0.0.1"]}
    assert peer_allowed(ctx, "", "")
    assert peer_allowed(ctx, "example.com", "")
    assert not peer_allowed(ctx, "example2.com", "")
    assert not peer_allowed({}, "example.com", "")  # no client certificate at all
    assert peer_allowed(ctx, "", "node1.example.com")
    assert peer_allowed(ctx, "example.com", "127.0.0.1")
    assert not peer_allowed(ctx, "", "node2.example.com")
    wild = {"x509_subject_alternative_name": [b"*.example.com"]}
    assert peer_allowed(wild, "", "node9.example.com")
    assert not peer_allowed(wild, "", "a.b.example.com")
    assert not peer_allowed(wild, "", "example.com")


def _pki(d) -> None:
    """A CA, certificates for example.com and example2.com, and a CRL revoking the latter."""
    ca = CA(d)
    ca.issue("example.com", sans=["127.0.0.1"])
    ca.crl([ca.issue("example2.com", sans=["127.0.0.1"])])


@pytest.mark.parametrize("check", ["allowed-cn", "crl"])
def test_a_member_whose_certificate_is_not_allowed_is_refused(tmp_path, check):
    """m2 presents example2.com's certificate: not the allowed common name, or (with
    --peer-crl-file) revoked."""
    _pki(tmp_path)
    peers = [free_port() for _ in range(3)]
    clients = [free_port() for _ in range(3)]
    cluster = ",".join(f"m{i}=https://127.0.0.1:{p}" for i, p in enumerate(peers))
    procs, logs = [], []
    try:
        for i in range(3):
            cn = "example.com" if i < 2 else "example2.com"
            log = tmp_path / f"m{i}.log"
            logs.append(log)
            argv = [
                sys.executable, "-m", "kubekv_server", "--name", f"m{i}",
                "--data-dir", str(tmp_path / f"m{i}.kubekv"),
                "--listen-client-urls", f"http://127.0.0.1:{clients[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{clients[i]}",
                "--listen-peer-urls", f"https://127.0.0.1:{peers[i]}",
                "--initial-advertise-peer-urls", f"https://127.0.0.1:{peers[i]}",
                "--initial-cluster", cluster,
                "--peer-cert-file", str(tmp_path / f"{cn}.pem"),
                "--peer-key-file", str(tmp_path / f"{cn}.key"),
                "--peer-trusted-ca-file", str(tmp_path / "ca.pem"),
                "--peer-client-cert-auth",
                *(["--peer-cert-allowed-cn", cn] if check == "allowed-cn"
                  else ["--peer-crl-file", str(tmp_path / "crl.pem")]),
            ]
            with open(log, "ab") as out:
                procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                              cwd=tmp_path, env={"PYTHONPATH": str(ROOT),
                                                                 "PATH": "/usr/bin:/bin"}))
        deadline = time.monotonic() + 40
        wait_for(lambda: "remote error: tls: bad certificate"
                 in logs[2].read_text(errors="replace"), 40,
                 f"the refused member's TLS error in {logs[2]}", interval=0.2)
        # the two allowed members have a leader and serve writes
        with grpc.insecure_channel(f"127.0.0.1:{clients[0]}") as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            wait_for(lambda: kv.Put(pb.PutRequest(key=b"a", value=b"b"), timeout=2),
                     max(0.0, deadline - time.monotonic()),
                     f"a write through m0 (log: {logs[0]})", interval=0.2)
        # with allowed names, the refused one also refuses the others (theirs is not its
        # allowed one); with a CRL, the others refuse it
        refusers = [logs[2]] if check == "allowed-cn" else logs[:2]
        assert any("client certificate authentication failed" in log.read_text(errors="replace")
                   for log in refusers)
        # the refused one never joins: still waiting, never ready (as etcd's e2e expects)
        assert procs[2].poll() is None
        assert "published {Name:m2" not in logs[2].read_text(errors="replace")
        assert "published {Name:m0" in logs[0].read_text(errors="replace")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_members_with_peer_auto_tls_replicate(tmp_path):
    """--peer-auto-tls on https peer URLs: each member makes its own certificate in
    <data-dir>/fixtures/peer, as etcd does, and the three form a cluster over TLS."""
    c = Cluster(tmp_path, peer_tls=True,
                flags=["--peer-auto-tls", "--self-signed-cert-validity", "2"])
    with c:
        c.start()
        c.members[0].kv.Put(pb.PutRequest(key=b"k", value=b"over tls"), timeout=10)
        # a linearizable read on another member sees the write
        got = c.members[2].kv.Range(pb.RangeRequest(key=b"k"), timeout=10)
        assert got.kvs[0].value == b"over tls"
        serials = set()
        for m in c.members:
            cert = x509.load_pem_x509_certificate(
                (m.data_dir / "fixtures" / "peer" / "cert.pem").read_bytes())
            assert cert.subject.rfc4514_string() == "O=etcd"
            serials.add(cert.serial_number)
        assert len(serials) == 3  # one certificate per member
