"""Client TLS: --auto-tls certificates, and CRL checks of client certificates."""

from __future__ import annotations

import subprocess

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.tls import cert_serial, crl_serials, load_crl
from tests.harness import free_port, kubekv_process


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


@pytest.fixture
def pki(tmp_path):
    """A CA, two client certs (one revoked) and a CRL naming the revoked one."""
    d = tmp_path
    (d / "index.txt").write_text("")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca=ca\n[ca]\ndatabase=index.txt\ndefault_md=sha256\n"
        "crl_extensions=crl_ext\ndefault_crl_days=1\n[crl_ext]\n"
    )
    _openssl("req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-keyout", "ca.key", "-out", "ca.pem",
             "-subj", "/CN=ca", "-days", "2", cwd=d)
    for name, serial in (("good", "0x1001"), ("revoked", "0x1002")):
        _openssl("req", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", serial, "-out", f"{name}.pem", "-days", "2", cwd=d)
    _openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
             "-revoke", "revoked.pem", cwd=d)
    _openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem",
             "-gencrl", "-out", "crl.pem", cwd=d)
    return d


def test_crl_and_cert_serials_are_parsed(pki):
    from kubekv_server.tls import _pem_to_der

    good = _pem_to_der((pki / "good.pem").read_bytes(), b"CERTIFICATE")[0]
    revoked = _pem_to_der((pki / "revoked.pem").read_bytes(), b"CERTIFICATE")[0]
    assert cert_serial(good) == 0x1001
    assert cert_serial(revoked) == 0x1002
    assert load_crl(str(pki / "crl.pem")) == {0x1002}
    assert crl_serials(_pem_to_der((pki / "crl.pem").read_bytes(), b"X509 CRL")[0]) == {0x1002}
