"""Client TLS: certificates from flags or generated (--auto-tls), and CRL checks of client certs.

Revocation is checked by serial number against --client-crl-file, as etcd does,
rather than by OpenSSL's CRL machinery, which also refuses every client once the
CRL's nextUpdate has passed.
"""

from __future__ import annotations

import logging
import os
import ssl
import urllib.parse

from kubekv_raft.peer_tls import hostname_allowed, self_signed_cert

from .cipher_suites import openssl_cipher_list
from .config import Config
from .der import DERError, children, pem_to_der, tlv

log = logging.getLogger("kubekv.tls")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def client_ssl_context(cfg: Config, data_dir: str) -> ssl.SSLContext | None:
    """TLS for https client URLs: --cert-file/--key-file, else a generated cert with --auto-tls;
    with --client-cert-auth, clients must present a cert signed by --trusted-ca-file."""
    cert, key = cfg.cert_file, cfg.key_file
    if not (cert and key) and cfg.auto_tls:
        hosts = [urllib.parse.urlsplit(u).hostname or "" for u in cfg.listen_client_urls]
        cert, key = self_signed_cert(os.path.join(data_dir, "fixtures", "client"), hosts)
    if not (cert and key):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ciphers = openssl_cipher_list(cfg.flag("cipher-suites"))
    if ciphers:
        ctx.set_ciphers(ciphers)  # TLS 1.2 only, as Go's CipherSuites
    if cfg.trusted_ca_file:
        ctx.load_verify_locations(cfg.trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.client_cert_auth else ssl.CERT_OPTIONAL
    return ctx


# ----------------------------------------------------------------- DER bits

_tlv, _children, _pem_to_der = tlv, children, pem_to_der


def cert_serial(der: bytes) -> int:
    """Serial number of an X.509 certificate (DER)."""
    _, s, e = _tlv(der, 0)  # Certificate
    _, ts, te = _tlv(der, s)  # tbsCertificate
    fields = _children(der, ts, te)
    idx = 1 if fields[0][0] == 0xA0 else 0  # optional [0] version
    _, vs, ve = fields[idx]
    return int.from_bytes(der[vs:ve], "big", signed=True)


def crl_serials(der: bytes) -> set[int]:
    """Serial numbers listed in a CRL (DER CertificateList)."""
    _, s, e = _tlv(der, 0)
    _, ts, te = _tlv(der, s)  # tbsCertList
    serials = set()
    for tag, cs, ce in _children(der, ts, te):
        if tag != 0x30:
            continue
        entries = _children(der, cs, ce)
        # revokedCertificates: SEQUENCE OF SEQUENCE { INTEGER serial, Time, ... }
        if entries and all(t == 0x30 for t, _, _ in entries):
            first = _children(der, entries[0][1], entries[0][2])
            if first and first[0][0] == 0x02 and len(first) >= 2 and first[1][0] in (0x17, 0x18):
                for _, es, ee in entries:
                    _, vs, ve = _children(der, es, ee)[0]
                    serials.add(int.from_bytes(der[vs:ve], "big", signed=True))
    return serials


def client_cert_check(revoked: set[int], allowed_hostname: str):
    """The client-certificate test of --client-crl-file and --client-cert-allowed-hostname
    (etcd: a serial the CRL lists is refused; with a hostname, a SAN must match it), or
    None when neither is set. Takes (DER, ssl's decoded certificate)."""
    if not revoked and not allowed_hostname:
        return None

    def check(der: bytes, cert: dict) -> bool:
        if revoked and cert_serial(der) in revoked:
            return False
        if allowed_hostname:
            sans = [v for _, v in cert.get("subjectAltName", ())]
            return hostname_allowed(sans, allowed_hostname)
        return True

    return check


def pem_revoked(pem: bytes, revoked: set[int]) -> bool:
    """Whether a PEM certificate's serial is in ``revoked`` (an unreadable one counts)."""
    ders = _pem_to_der(pem, b"CERTIFICATE")
    if not ders:
        return True
    try:
        return cert_serial(ders[0]) in revoked
    except (IndexError, ValueError, DERError):
        return True


def load_crl(path: str) -> set[int]:
    data = _read(path)
    ders = _pem_to_der(data, b"X509 CRL") or [data]
    serials: set[int] = set()
    for der in ders:
        serials |= crl_serials(der)
    return serials
