"""Peer URLs (--initial-cluster, --listen-peer-urls) as gRPC targets."""

from __future__ import annotations

import urllib.parse

__all__ = ["parse_peer_url"]


def parse_peer_url(url: str) -> tuple[str, bool]:
    """(gRPC target, uses TLS) of a peer URL: http://h:p, https://h:p, unix://path (etcd's
    form: the path may contain a colon, relative to the working directory), unixs://path,
    unix:path, or h:p."""
    if url.startswith(("unix://", "unixs://")):
        scheme, _, path = url.partition("://")
        if not path:
            raise ValueError(f"bad peer URL {url!r}")
        return "unix:" + path, scheme == "unixs"
    if url.startswith("unix:"):
        return url, False
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"bad peer URL {url!r}")
    return parts.netloc, parts.scheme == "https"
