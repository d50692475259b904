"""Client TLS: --auto-tls certificates, and CRL checks of client certificates."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.config.flags import FlagError, parse_args
from kubekv_server.tls.client import cert_serial, crl_serials, load_crl, pem_revoked
from kubekv_server.tls.peer import self_signed_cert
from kubekv_testing.pki import CA
from kubekv_testing.polling import wait_for
from tests.harness import etcd_process, etcdctl, free_port, kubekv_process, running


def test_auto_tls_serves_https_with_a_generated_cert(tmp_path):
    port = free_port()
    url = f"https://localhost:{port}"
    proc = kubekv_process(tmp_path, "--auto-tls", "--listen-client-urls", url,
                          "--advertise-client-urls", url, "--self-signed-cert-validity", "2")
    proc.endpoint = f"localhost:{port}"
    cert = proc.data_dir / "fixtures" / "client" / "cert.pem"
    proc.tls_credentials = lambda: (
        grpc.ssl_channel_credentials(cert.read_bytes()) if cert.exists() else None
    )
    proc.start()
    try:
        proc.kv.Put(pb.PutRequest(key=b"k", value=b"v"))
        assert proc.kv.Range(pb.RangeRequest(key=b"k")).kvs[0].value == b"v"
        # etcd's e2e suite talks to auto-TLS members this way
        assert etcdctl(url, "--insecure-transport=false", "--insecure-skip-tls-verify",
                       "get", "k", "--print-value-only").stdout == "v\n"
        made = x509.load_pem_x509_certificate(cert.read_bytes())
        assert made.not_valid_after_utc - made.not_valid_before_utc == \
            datetime.timedelta(days=2 * 365)  # --self-signed-cert-validity years
        # A plaintext client cannot talk to the TLS listener.
        with grpc.insecure_channel(proc.endpoint) as ch, pytest.raises(grpc.RpcError):
            ch.unary_unary("/etcdserverpb.KV/Range")(b"", timeout=2)
    finally:
        proc.stop()


def test_self_signed_cert_is_shaped_like_etcds(tmp_path):
    """etcd's transport.SelfCert: O=etcd, 365 days a year of validity, not a CA, key
    usage digitalSignature+keyEncipherment, SANs for the hosts, an "EC PRIVATE KEY"
    readable only by its owner; made once. kubekv's differences, for gRPC: P-256, also
    clientAuth, also localhost and 127.0.0.1 (see self_signed_cert)."""
    directory = str(tmp_path / "fixtures" / "client")
    cert_path, key_path = self_signed_cert(directory, ["node1.example", "10.0.0.7", ""], 3)
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    key = open(key_path, "rb").read()
    assert key.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    assert cert.subject.rfc4514_string() == cert.issuer.rfc4514_string() == "O=etcd"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(days=1095)
    assert 0 < cert.serial_number < 1 << 128
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["node1.example", "localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7",
                                                                          "127.0.0.1"]
    # made once: an existing pair is kept, whatever the validity asked for now
    assert self_signed_cert(directory, ["other"], 0) == (cert_path, key_path)
    assert open(key_path, "rb").read() == key
    with pytest.raises(ValueError, match="selfSignedCertValidity is invalid"):
        self_signed_cert(str(tmp_path / "elsewhere"), ["localhost"], 0)


@pytest.fixture
def pki(tmp_path):
    """A CA, two client certs (one revoked) and a CRL naming the revoked one."""
    ca = CA(tmp_path)
    ca.issue("good", serial=0x1001)
    ca.crl([ca.issue("revoked", serial=0x1002)])
    return tmp_path


def test_crl_and_cert_serials_are_parsed(pki):
    good = x509.load_pem_x509_certificate((pki / "good.pem").read_bytes())
    revoked = (pki / "revoked.pem").read_bytes()
    assert cert_serial(good.public_bytes(serialization.Encoding.DER)) == 0x1001
    assert not pem_revoked((pki / "good.pem").read_bytes(), {0x1002})
    assert pem_revoked(revoked, {0x1002})
    assert pem_revoked(b"not a certificate", {0x1002})  # unreadable: refused
    assert load_crl(str(pki / "crl.pem")) == {0x1002}
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert crl_serials(crl.public_bytes(serialization.Encoding.DER)) == {0x1002}  # DER too


def test_an_expired_crl_still_revokes_by_serial(tmp_path):
    """etcd reads only the serials of --client-crl-file (its e2e fixture's CRL expired
    long ago): a CRL past its nextUpdate still refuses the serials it lists."""
    ca = CA(tmp_path)
    revoked = ca.issue("revoked", serial=0x77)
    path = ca.crl([revoked], next_update=-datetime.timedelta(days=30), name="old.crl")
    assert load_crl(str(path)) == {0x77}
    with pytest.raises(SystemExit, match="not a certificate revocation list"):
        load_crl(str(tmp_path / "revoked.pem"))


@pytest.fixture
def pki_hosts(tmp_path):
    """A CA; a server cert for 127.0.0.1; client certs with different SANs, one revoked."""
    d = tmp_path / "pki"
    d.mkdir()
    ca = CA(d)
    certs = {"server": ("127.0.0.1", 0x2000), "allowed": ("client.example.com", 0x2001),
             "wildcard": ("*.example.com", 0x2002), "other": ("other.test", 0x2003),
             "revoked": ("client.example.com", 0x2004)}
    issued = {name: ca.issue(name, sans=[host], serial=serial)
              for name, (host, serial) in certs.items()}
    ca.crl([issued["revoked"]])
    return d


def _client_creds(pki, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes(),
                                        (pki / f"{name}.key").read_bytes(),
                                        (pki / f"{name}.pem").read_bytes())


def test_client_cert_allowed_hostname_and_crl_like_etcd(tmp_path, pki_hosts):
    """--client-cert-allowed-hostname and --client-crl-file: the same clients get in
    (a SAN names the host, wildcards included; not revoked) as with etcd."""
    pki = pki_hosts
    seen = {}
    for factory in (etcd_process, kubekv_process):
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        proc = factory(tmp_path, "--listen-client-urls", url, "--advertise-client-urls", url,
                       "--cert-file", str(pki / "server.pem"),
                       "--key-file", str(pki / "server.key"),
                       "--trusted-ca-file", str(pki / "ca.pem"), "--client-cert-auth",
                       "--client-cert-allowed-hostname", "client.example.com",
                       "--client-crl-file", str(pki / "crl.pem"))
        proc.port, proc.endpoint = port, f"127.0.0.1:{port}"
        proc.tls_credentials = lambda: _client_creds(pki, "allowed")
        with running(proc):
            outcome = {}
            for name in ("allowed", "wildcard", "other", "revoked"):
                with grpc.secure_channel(proc.endpoint, _client_creds(pki, name)) as ch:
                    try:
                        ch.unary_unary("/etcdserverpb.KV/Range")(
                            pb.RangeRequest(key=b"k").SerializeToString(), timeout=3)
                        outcome[name] = "ok"
                    except grpc.RpcError as exc:
                        outcome[name] = exc.code().name
            seen[factory.__name__] = outcome
        if factory is kubekv_process:
            assert "client certificate authentication failed" in proc.log_path.read_text()
    assert seen["kubekv_process"] == seen["etcd_process"]
    assert seen["etcd_process"] == {"allowed": "ok", "wildcard": "ok",
                                    "other": "UNAVAILABLE", "revoked": "UNAVAILABLE"}


def _handshake(port: int, cipher: str) -> str:
    """A TLS 1.2 client offering one cipher: "ok", "refused" or what went wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            return "ok" if tls.cipher()[0] == cipher else tls.cipher()[0]
    except ssl.SSLError as exc:
        return "refused" if "HANDSHAKE_FAILURE" in str(exc).upper() else str(exc)
    except OSError as exc:
        return f"unreachable: {exc}"


def test_cipher_suites_like_etcd(tmp_path):
    """--cipher-suites restricts TLS 1.2 to the named suites (Go names), as in etcd."""
    seen = {}
    for factory in (etcd_process, kubekv_process):
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        proc = factory(tmp_path, "--auto-tls", "--listen-client-urls", url,
                       "--advertise-client-urls", url, "--cipher-suites",
                       "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256")
        with open(proc.log_path, "ab") as log:  # started by hand: its cert is made at start
            proc.proc = subprocess.Popen(proc.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=proc.env, cwd=str(proc.data_dir.parent))
        try:
            wait_for(lambda p=port: not _handshake(p, "ECDHE-ECDSA-AES128-GCM-SHA256")
                     .startswith("unreachable"), 30, f"a TLS listener ({proc.log_path})")
            seen[factory.__name__] = [_handshake(port, c) for c in (
                "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384")]
        finally:
            proc.stop()
    assert seen["kubekv_process"] == seen["etcd_process"] == ["ok", "refused"]

def test_unknown_cipher_suite_is_refused():
    with pytest.raises(FlagError, match='unexpected TLS cipher suite "TLS_NOPE"'):
        parse_args(["--cipher-suites", "TLS_NOPE"], environ={})
