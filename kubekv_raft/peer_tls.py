"""Peer TLS: credentials from certificate files, and self-signed certs for --peer-auto-tls.

The transport only takes `grpc.ServerCredentials` / `grpc.ChannelCredentials`; this
module builds them from etcd's --peer-cert-file, --peer-key-file,
--peer-trusted-ca-file and --peer-client-cert-auth, or generates a certificate with
the `openssl` CLI as etcd's --peer-auto-tls does.

etcd's auto-TLS peers skip verifying each other's certificates. gRPC's Python
channels cannot skip verification, so with auto-TLS a member trusts the certificate
its peer presents on first contact: `fetch_peer_certificate` reads it and
`channel_credentials(root_pem=...)` trusts exactly it. That is no weaker than etcd's
behaviour, and no stronger either: use --peer-trusted-ca-file for real security.
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
from collections.abc import Callable

import grpc

from kubekv_server.rpc.log_limit import RateLimitedLog, client_key

log = logging.getLogger(__name__)

# Longest certificate name echoed into a log line (X.509's ub-common-name is 64).
MAX_LOGGED_NAME = 64

__all__ = [
    "BAD_CERTIFICATE",
    "PeerIdentityInterceptor",
    "hostname_allowed",
    "peer_address",
    "peer_allowed",
    "self_signed_cert",
    "server_credentials",
    "channel_credentials",
    "fetch_peer_certificate",
]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _is_ip(host: str) -> bool:
    return host.replace(".", "").isdigit() or ":" in host


def self_signed_cert(directory: str, hosts: list[str], validity_years: int = 1) -> tuple[str, str]:
    """Create (once) a self-signed ECDSA P-256 cert and key for `hosts`; (cert, key) paths.

    The certificate is valid for serverAuth and clientAuth, so one pair serves a
    member's peer server and its outgoing peer connections.
    """
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    names = [
        f"IP:{h}" if _is_ip(h) else f"DNS:{h}"
        for h in dict.fromkeys([*hosts, "localhost", "127.0.0.1"])
        if h
    ]
    tmp_cert, tmp_key = cert + ".tmp", key + ".tmp"
    cmd = [
        "openssl", "req", "-x509", "-nodes", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", tmp_key, "-out", tmp_cert, "-days", str(365 * validity_years),
        "-subj", "/O=kubekv peer", "-addext", "subjectAltName=" + ",".join(names),
        "-addext", "extendedKeyUsage=serverAuth,clientAuth",
    ]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot generate a self-signed peer certificate: {exc}") from None
    os.chmod(tmp_key, 0o600)
    # The key first: a cert.pem without its key.pem would be taken as a complete pair.
    os.replace(tmp_key, key)
    os.replace(tmp_cert, cert)
    log.info("event=peer_auto_tls_cert_generated cert=%s hosts=%s", cert, ",".join(names))
    return cert, key


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


class PeerIdentityInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every peer call whose client certificate fails `peer_allowed` (etcd
    refuses the TLS handshake; gRPC's Python server cannot, so the call is refused
    with UNAUTHENTICATED before its handler runs)."""

    def __init__(self, allowed_cn: str, allowed_hostname: str,
                 accept_pem: Callable[[bytes], bool] | None = None) -> None:
        self.allowed_cn = allowed_cn
        self.allowed_hostname = allowed_hostname
        # the application's own test of the certificate (PEM), e.g. a CRL lookup
        self.accept_pem = accept_pem
        # one line per peer address per interval: a refused peer retries many times a second
        self._log = RateLimitedLog(log)

    def _check(self, context) -> bool:
        ac = context.auth_context()
        if peer_allowed(ac, self.allowed_cn, self.allowed_hostname) and (
            self.accept_pem is None
            or all(self.accept_pem(pem) for pem in ac.get("x509_pem_cert", [b""]))
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

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        check = self._check

        single = handler.unary_unary or handler.stream_unary  # one response
        if single:
            factory = (grpc.unary_unary_rpc_method_handler if handler.unary_unary
                       else grpc.stream_unary_rpc_method_handler)

            async def one_response(request, context):
                if not check(context):
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_CERTIFICATE)
                return await single(request, context)

            return factory(one_response, handler.request_deserializer,
                           handler.response_serializer)
        inner = handler.unary_stream or handler.stream_stream
        factory = (grpc.unary_stream_rpc_method_handler if handler.unary_stream
                   else grpc.stream_stream_rpc_method_handler)

        async def streaming(request, context):
            if not check(context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_CERTIFICATE)
            result = inner(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                await result

        return factory(streaming, handler.request_deserializer, handler.response_serializer)
