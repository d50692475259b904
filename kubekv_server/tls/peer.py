"""Peer TLS: credentials from certificate files, and self-signed certs for --peer-auto-tls.

The transport takes credentials, not files: `grpc.ChannelCredentials` for its grpc.aio
channels and an `ssl.SSLContext` for its message streams (`stream_ssl_context`); this
module builds them (and `grpc.ServerCredentials` for grpc.aio peer servers in tests)
from etcd's --peer-cert-file, --peer-key-file, --peer-trusted-ca-file and
--peer-client-cert-auth, or generates a self-signed certificate (with the
`cryptography` package) as etcd's --peer-auto-tls does; `PeerIdentity` checks a
peer's client certificate on every call.

etcd's auto-TLS peers skip verifying each other's certificates. gRPC's Python
channels cannot skip verification, so with auto-TLS a member trusts the certificate
its peer presents on first contact: `fetch_peer_certificate` reads it and
`channel_credentials(root_pem=...)` / `stream_ssl_context(root_pem=...)` trust exactly
it. That is no weaker than etcd's behaviour, and no stronger either: use
--peer-trusted-ca-file for real security.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import logging
import os
import secrets
import ssl
import urllib.parse
from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubekv_server.log_limit import RateLimitedLog, client_key

log = logging.getLogger(__name__)

# Longest certificate name echoed into a log line (X.509's ub-common-name is 64).
MAX_LOGGED_NAME = 64

__all__ = [
    "BAD_CERTIFICATE",
    "PeerIdentity",
    "cert_names",
    "hostname_allowed",
    "peer_address",
    "peer_allowed",
    "self_signed_cert",
    "auto_tls_cert",
    "server_credentials",
    "server_ssl_context",
    "channel_credentials",
    "stream_ssl_context",
    "fetch_peer_certificate",
]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _is_ip(host: str) -> bool:
    return host.replace(".", "").isdigit() or ":" in host


# Bits of a self-signed certificate's random serial number (etcd's SelfCert: [0, 2**128)).
SELF_CERT_SERIAL_BITS = 128


def self_signed_cert(directory: str, hosts: list[str], validity_years: int = 1) -> tuple[str, str]:
    """Create (once) a self-signed certificate and key for `hosts`; (cert, key) paths.

    As etcd's transport.SelfCert: kept in `directory` as cert.pem and key.pem (an
    existing pair is reused), subject O=etcd, a random 128-bit serial, valid from now
    for `validity_years` * 365 days (--self-signed-cert-validity), key usage
    digitalSignature+keyEncipherment, not a CA, the key as an "EC PRIVATE KEY" (0600).
    Two differences, both needed by gRPC's peer transport: the key is ECDSA P-256, not
    etcd's P-521 (gRPC's TLS library refuses P-521 handshakes); and the SANs also name
    localhost and 127.0.0.1 and the usage includes clientAuth, because kubekv's peers
    verify the certificate they trust on first use and present it as their client
    certificate, where etcd's auto-TLS peers skip verification.
    """
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    if validity_years <= 0:  # etcd's words; checked only when a pair is to be made
        raise ValueError("selfSignedCertValidity is invalid,it should be greater than 0")
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        if not host:
            continue
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        # x509 wants a positive serial; etcd's may be 0 once in 2**128
        .serial_number(secrets.randbits(SELF_CERT_SERIAL_BITS) or 1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365 * validity_years))
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=True, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(private, hashes.SHA256())
    )
    tmp_cert, tmp_key = cert + ".tmp", key + ".tmp"
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    with open(tmp_cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    # The key first: a cert.pem without its key.pem would be taken as a complete pair.
    os.replace(tmp_key, key)
    os.replace(tmp_cert, cert)
    log.info("event=self_signed_cert_generated cert=%s hosts=%s", cert,
             ",".join(str(n.value) for n in sans))
    return cert, key


def auto_tls_cert(data_dir: str, port: str, urls: list[str],
                  validity_years: int) -> tuple[str, str]:
    """The certificate of --auto-tls (`port` "client") or --peer-auto-tls ("peer"): made
    once in <data_dir>/fixtures/<port> for the hosts of `urls` (the listen URLs); exits
    with etcd's words when --self-signed-cert-validity is invalid."""
    hosts = [urllib.parse.urlsplit(u).hostname or "" for u in urls]
    try:
        return self_signed_cert(os.path.join(data_dir, "fixtures", port), hosts, validity_years)
    except ValueError as exc:
        raise SystemExit(f"kubekv: failed to get {port} self-signed certs: {exc}") from None


def server_credentials(
    cert_file: str,
    key_file: str,
    trusted_ca_file: str | None = None,
    client_cert_auth: bool = False,
) -> grpc.ServerCredentials:
    """Credentials for the peer server (--peer-cert-file, --peer-key-file, ...)."""
    ca = _read(trusted_ca_file) if trusted_ca_file else None
    if client_cert_auth and ca is None:
        raise ValueError("peer client cert auth needs a trusted CA file")
    return grpc.ssl_server_credentials(
        [(_read(key_file), _read(cert_file))],
        root_certificates=ca,
        require_client_auth=client_cert_auth,
    )


def server_ssl_context(cert_file: str, key_file: str, trusted_ca_file: str | None = None,
                       client_cert_auth: bool = False) -> ssl.SSLContext:
    """TLS for the peer port (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file,
    --peer-client-cert-auth): as etcd's TLSInfo.ServerConfig, a client certificate is
    required and verified only with client cert auth. ALPN h2, which gRPC clients need."""
    if client_cert_auth and not trusted_ca_file:
        raise ValueError("peer client cert auth needs a trusted CA file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    if client_cert_auth:
        ctx.load_verify_locations(trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def channel_credentials(
    trusted_ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    root_pem: bytes | None = None,
) -> grpc.ChannelCredentials:
    """Credentials for outgoing peer connections; the client cert is presented if given.

    `root_pem` trusts exactly these certificates (e.g. from fetch_peer_certificate).
    """
    roots = root_pem
    if roots is None and trusted_ca_file:
        roots = _read(trusted_ca_file)
    key = _read(key_file) if key_file else None
    chain = _read(cert_file) if cert_file else None
    return grpc.ssl_channel_credentials(roots, key, chain)


def stream_ssl_context(
    trusted_ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    root_pem: bytes | None = None,
) -> ssl.SSLContext:
    """`channel_credentials`' equivalent for the message streams (`peer/stream_client.py`):
    the server verified against `trusted_ca_file` (or exactly `root_pem`), host names
    checked as gRPC does, the client certificate presented if given, ALPN h2."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if root_pem is not None:
        ctx.load_verify_locations(cadata=root_pem.decode())
    elif trusted_ca_file:
        ctx.load_verify_locations(trusted_ca_file)
    else:
        ctx.load_default_certs()
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def fetch_peer_certificate(host: str, port: int, timeout: float = 5.0) -> bytes:
    """The PEM certificate a peer's TLS server presents, unverified (auto-TLS trust)."""
    return ssl.get_server_certificate((host, port), timeout=timeout).encode()


# What a member refusing a peer's certificate says; the peer logs it as Go's TLS
# client does ("remote error: tls: bad certificate").
BAD_CERTIFICATE = "tls: bad certificate"


def peer_allowed(auth_context: dict, allowed_cn: str, allowed_hostname: str) -> bool:
    """etcd's --peer-cert-allowed-cn / --peer-cert-allowed-hostname: the client
    certificate's common name is exactly `allowed_cn`; one of its subject alternative
    names matches `allowed_hostname` (DNS names may be wildcards: `*.example.com`)."""
    if allowed_cn:
        names = [v.decode() for v in auth_context.get("x509_common_name", [])]
        if allowed_cn not in names:
            return False
    if allowed_hostname:
        sans = [v.decode() for v in auth_context.get("x509_subject_alternative_name", [])]
        if not hostname_allowed(sans, allowed_hostname):
            return False
    return True


def hostname_allowed(sans: list[str], host: str) -> bool:
    """Go's x509 VerifyHostname over a certificate's SANs (DNS names and IP addresses):
    some SAN names ``host``, DNS names may be wildcards (``*.example.com``)."""
    return any(_san_matches(s, host) for s in sans)


def _san_matches(san: str, host: str) -> bool:
    san, host = san.lower().rstrip("."), host.lower().rstrip(".")
    if san == host:
        return True
    if san.startswith("*.") and "." in host:
        return host.split(".", 1)[1] == san[2:] and not _is_ip(host)
    return False


def peer_address(context) -> str:
    """The host of a call's peer ("ipv4:1.2.3.4:5" -> "1.2.3.4"), for rate limiting."""
    try:
        peer = str(context.peer() or "?")
    except Exception:  # noqa: BLE001 - a call torn down meanwhile
        return "?"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return client_key((rest.rsplit(":", 1)[0].strip("[]"),))[:MAX_LOGGED_NAME]
    return peer[:MAX_LOGGED_NAME]


# Distinct client certificates whose names are remembered (a cluster has a few members;
# a peer presenting new certificates only evicts older entries).
MAX_CACHED_CERT_NAMES = 64


@functools.lru_cache(maxsize=MAX_CACHED_CERT_NAMES)
def cert_names(pem: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(common names, subject alternative names as text) of a PEM certificate; an
    unreadable one has none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return (), ()
    cns = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return cns, ()
    sans = [*ext.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))]
    return cns, tuple(sans)


class PeerIdentity:
    """etcd's --peer-cert-allowed-cn, --peer-cert-allowed-hostname and --peer-crl-file:
    `allows(context)` tests a call's client certificate (etcd refuses the TLS handshake;
    the peer server refuses the call with UNAUTHENTICATED before its handler runs, so the
    sender logs Go's "remote error: tls: bad certificate")."""

    def __init__(self, allowed_cn: str, allowed_hostname: str,
                 accept_pem: Callable[[bytes], bool] | None = None) -> None:
        self.allowed_cn = allowed_cn
        self.allowed_hostname = allowed_hostname
        # the application's own test of the certificate (PEM), e.g. a CRL lookup
        self.accept_pem = accept_pem
        # one line per peer address per interval: a refused peer retries many times a second
        self._log = RateLimitedLog(log)

    def allows(self, context) -> bool:
        """Whether the call's client certificate passes; a refusal is logged (rate-limited)."""
        ac = dict(context.auth_context())
        pems = ac.get("x509_pem_cert", [])
        if pems and "x509_subject_alternative_name" not in ac:
            ac["x509_subject_alternative_name"] = [n.encode() for n in cert_names(pems[0])[1]]
        if peer_allowed(ac, self.allowed_cn, self.allowed_hostname) and (
            self.accept_pem is None or all(self.accept_pem(pem) for pem in pems or [b""])
        ):
            return True
        names = b",".join(ac.get("x509_common_name", [])).decode(errors="replace")
        self._log.warning(
            peer_address(context), "peer_cert_rejected",
            "msg=\"client certificate authentication failed\" common_name=%r "
            "allowed_cn=%r allowed_hostname=%r",
            names[:MAX_LOGGED_NAME] or "none", self.allowed_cn, self.allowed_hostname,
        )  # fmt: skip
        return False
