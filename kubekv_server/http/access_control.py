"""etcd's AccessController for plain HTTP on the client port: --host-whitelist and --cors.

A request that did not come over TLS must name a whitelisted host (etcd's defence
against DNS rebinding, CVE-2018-5702), else it is answered 421 with etcd's text.
CORS headers name the request's Origin when --cors lists it, every origin with "*".
gRPC calls are not HTTP requests in this sense and are not checked (as in etcd).
"""

from __future__ import annotations

ALLOW_HEADERS = [
    ("Access-Control-Allow-Headers", "accept, content-type, authorization"),
    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
]


def _names(flag: str) -> set[str]:
    return {n.strip() for n in flag.split(",") if n.strip()}


def hostname(headers: dict) -> str:
    """Go's httputil.GetHostname: the Host (or :authority) without its port."""
    host = headers.get("host") or headers.get(":authority") or ""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else host


class AccessController:
    def __init__(self, cors: str, host_whitelist: str) -> None:
        self.cors = _names(cors)
        self.hosts = _names(host_whitelist)

    def host_allowed(self, host: str) -> bool:
        return not self.hosts or "*" in self.hosts or host in self.hosts

    def cors_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS headers for a request from ``origin`` (none if it is not allowed)."""
        if not self.cors or "*" in self.cors:
            return [*ALLOW_HEADERS, ("Access-Control-Allow-Origin", "*")]
        if origin is not None and origin in self.cors:
            return [*ALLOW_HEADERS, ("Access-Control-Allow-Origin", origin)]
        return []

    @staticmethod
    def rejection(host: str) -> bytes:
        """etcd's errCVE20185702 text, as http.Error sends it."""
        return (
            "\netcd received your request, but the Host header was unrecognized.\n\n"
            "To fix this, choose one of the following options:\n"
            "- Enable TLS, then any HTTPS request will be allowed.\n"
            "- Add the hostname you want to use to the whitelist in settings.\n"
            f'  - e.g. etcd --host-whitelist "{host}"\n\n'
            'This requirement has been added to help prevent "DNS Rebinding" attacks '
            "(CVE-2018-5702).\n\n"
        ).encode()
