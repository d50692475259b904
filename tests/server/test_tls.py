"""Client TLS: --auto-tls certificates, and CRL checks of client certificates."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.config import FlagError, parse_args
from kubekv_server.tls import cert_serial, crl_serials, load_crl
from tests.harness import etcd_process, free_port, kubekv_process, running


def test_auto_tls_serves_https_with_a_generated_cert(tmp_path):
    port = free_port()
    url = f"https://localhost:{port}"
    proc = kubekv_process(tmp_path, "--auto-tls", "--listen-client-urls", url,
                          "--advertise-client-urls", url)
    proc.endpoint = f"localhost:{port}"
    cert = proc.data_dir / "fixtures" / "client" / "cert.pem"
    proc.tls_credentials = lambda: (
        grpc.ssl_channel_credentials(cert.read_bytes()) if cert.exists() else None
    )
    proc.start()
    try:
        proc.kv.Put(pb.PutRequest(key=b"k", value=b"v"))
        assert proc.kv.Range(pb.RangeRequest(key=b"k")).kvs[0].value == b"v"
        # A plaintext client cannot talk to the TLS listener.
        with grpc.insecure_channel(proc.endpoint) as ch, pytest.raises(grpc.RpcError):
            ch.unary_unary("/etcdserverpb.KV/Range")(b"", timeout=2)
    finally:
        proc.stop()


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d) -> None:
    """A throwaway CA (ca.pem, ca.key) with an openssl-ca database for revocations."""
    (d / "index.txt").write_text("")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca=ca\n[ca]\ndatabase=index.txt\ndefault_md=sha256\n"
        "crl_extensions=crl_ext\ndefault_crl_days=1\n[crl_ext]\n"
    )
    _openssl("req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-keyout", "ca.key", "-out", "ca.pem",
             "-subj", "/CN=ca", "-days", "2", cwd=d)


def _revoke(d, cert: str) -> None:
    """Revoke ``cert`` and write crl.pem."""
    _openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
             "-revoke", cert, cwd=d)
    _openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
             "-gencrl", "-out", "crl.pem", cwd=d)


@pytest.fixture
def pki(tmp_path):
    """A CA, two client certs (one revoked) and a CRL naming the revoked one."""
    d = tmp_path
    _make_ca(d)
    for name, serial in (("good", "0x1001"), ("revoked", "0x1002")):
        _openssl("req", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", serial, "-out", f"{name}.pem", "-days", "2", cwd=d)
    _revoke(d, "revoked.pem")
    return d


def test_crl_and_cert_serials_are_parsed(pki):
    from kubekv_server.tls import _pem_to_der

    good = _pem_to_der((pki / "good.pem").read_bytes(), b"CERTIFICATE")[0]
    revoked = _pem_to_der((pki / "revoked.pem").read_bytes(), b"CERTIFICATE")[0]
    assert cert_serial(good) == 0x1001
    assert cert_serial(revoked) == 0x1002
    assert load_crl(str(pki / "crl.pem")) == {0x1002}
    assert crl_serials(_pem_to_der((pki / "crl.pem").read_bytes(), b"X509 CRL")[0]) == {0x1002}


@pytest.fixture
def pki_hosts(tmp_path):
    """A CA; a server cert for 127.0.0.1; client certs with different SANs, one revoked."""
    d = tmp_path / "pki"
    d.mkdir()
    _make_ca(d)
    certs = {"server": ("IP:127.0.0.1", "0x2000"), "allowed": ("DNS:client.example.com", "0x2001"),
             "wildcard": ("DNS:*.example.com", "0x2002"), "other": ("DNS:other.test", "0x2003"),
             "revoked": ("DNS:client.example.com", "0x2004")}
    for name, (san, serial) in certs.items():
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", serial, "-extfile", f"{name}.ext", "-out", f"{name}.pem",
                 "-days", "2", cwd=d)
    _revoke(d, "revoked.pem")
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
            deadline = time.monotonic() + 30
            while _handshake(port, "ECDHE-ECDSA-AES128-GCM-SHA256").startswith("unreachable"):
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.05)
            seen[factory.__name__] = [_handshake(port, c) for c in (
                "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384")]
        finally:
            proc.stop()
    assert seen["kubekv_process"] == seen["etcd_process"] == ["ok", "refused"]

def test_unknown_cipher_suite_is_refused():
    with pytest.raises(FlagError, match='unexpected TLS cipher suite "TLS_NOPE"'):
        parse_args(["--cipher-suites", "TLS_NOPE"], environ={})
