"""Client TLS: certificates from flags or generated (--auto-tls), and CRL checks of client certs.

Revocation is checked by serial number against --client-crl-file, as etcd does
(transport's checkCRL compares serials only), rather than by OpenSSL's CRL
machinery, which also refuses every client once the CRL's nextUpdate has passed.
Certificates and CRLs are parsed with the `cryptography` package.
"""

from __future__ import annotations

import logging
import ssl

from cryptography import x509

from kubekv_server.config.flags import Config
from kubekv_server.tls.peer import auto_tls_cert, hostname_allowed

log = logging.getLogger("kubekv.tls")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def client_ssl_context(cfg: Config, data_dir: str) -> ssl.SSLContext | None:
    """TLS for https client URLs: --cert-file/--key-file, else a generated cert with --auto-tls;
    with --client-cert-auth, clients must present a cert signed by --trusted-ca-file."""
    cert, key = cfg.cert_file, cfg.key_file
    if not (cert and key) and cfg.auto_tls:
        cert, key = auto_tls_cert(data_dir, "client", cfg.listen_client_urls,
                                  cfg.self_signed_cert_validity)
    if not (cert and key):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if cfg.openssl_ciphers:
        ctx.set_ciphers(cfg.openssl_ciphers)  # TLS 1.2 only, as Go's CipherSuites
    if cfg.trusted_ca_file:
        ctx.load_verify_locations(cfg.trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.client_cert_auth else ssl.CERT_OPTIONAL
    return ctx


# ------------------------------------------------------------ serials, CRLs


def cert_serial(der: bytes) -> int:
    """Serial number of an X.509 certificate (DER); ValueError if it is not one."""
    return x509.load_der_x509_certificate(der).serial_number


def crl_serials(data: bytes) -> set[int]:
    """Serial numbers a CRL lists, PEM (its first "X509 CRL" block, text around it
    allowed) or DER, as Go's x509.ParseCRL takes it. Neither its signature nor its
    nextUpdate is checked: etcd reads only the serials. ValueError if not a CRL."""
    if b"-----BEGIN X509 CRL-----" in data:
        crl = x509.load_pem_x509_crl(data)
    else:
        crl = x509.load_der_x509_crl(data)
    return {entry.serial_number for entry in crl}


def client_cert_check(revoked: set[int], allowed_hostname: str):
    """The client-certificate test of --client-crl-file and --client-cert-allowed-hostname
    (etcd: a serial the CRL lists is refused; with a hostname, a SAN must match it), or
    None when neither is set. Takes (DER, ssl's decoded certificate)."""
    if not revoked and not allowed_hostname:
        return None

    def check(der: bytes, cert: dict) -> bool:
        if revoked and _der_revoked(der, revoked):
            return False
        if allowed_hostname:
            sans = [v for _, v in cert.get("subjectAltName", ())]
            return hostname_allowed(sans, allowed_hostname)
        return True

    return check


def _der_revoked(der: bytes, revoked: set[int]) -> bool:
    try:
        return cert_serial(der) in revoked
    except ValueError:  # a certificate we cannot read is refused
        return True


def pem_revoked(pem: bytes, revoked: set[int]) -> bool:
    """Whether a PEM certificate's serial is in ``revoked`` (an unreadable one counts)."""
    try:
        serial = x509.load_pem_x509_certificate(pem).serial_number
    except ValueError:
        return True
    return serial in revoked


def load_crl(path: str) -> set[int]:
    """The revoked serials of --client-crl-file / --peer-crl-file; SystemExit if the file
    cannot be read or is not a CRL (etcd would then refuse every TLS client)."""
    try:
        return crl_serials(_read(path))
    except OSError as exc:
        raise SystemExit(f"kubekv: open {path}: {exc.strerror.lower()}") from None
    except ValueError as exc:
        raise SystemExit(f"kubekv: {path} is not a certificate revocation list: {exc}") from None
