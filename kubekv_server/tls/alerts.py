"""Send the TLS alert of a failed server handshake before closing, as Go's servers do.

asyncio's SSLProtocol (3.11+) closes a connection whose handshake failed without
flushing what OpenSSL wrote for the peer, so a client offered no common cipher (or
refused for its certificate) sees a bare EOF where etcd's clients and curl expect
"alert handshake failure" / "bad certificate". ``install`` wraps the private
``_do_handshake`` once to flush first; on other Pythons it does nothing.

uvloop's own TLS (compiled, so it cannot be patched) drops the alert the same way, so
TLS listeners do not hand their SSLContext to the loop: ``server_protocol`` puts
asyncio's SSLProtocol in front of each connection's protocol on whichever loop runs,
which is what asyncio's ``create_server(ssl=...)`` does inside; ``connect`` does the
same for a client (the peer port's streams), so a certificate it refuses is answered
with "bad certificate" on either loop.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from collections.abc import Callable

_installed = False


def install() -> None:
    global _installed
    proto = getattr(sslproto, "SSLProtocol", None)
    original = getattr(proto, "_do_handshake", None)
    if _installed or original is None or not hasattr(proto, "_process_outgoing"):
        return

    def _do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except sslproto.SSLAgainErrors:
            self._process_outgoing()
        except ssl.SSLError as exc:
            self._process_outgoing()  # the alert, before the connection is dropped
            self._on_handshake_complete(exc)
        else:
            self._on_handshake_complete(None)

    proto._do_handshake = _do_handshake
    _installed = True


def server_protocol(loop: asyncio.AbstractEventLoop,
                    factory: Callable[[], asyncio.BaseProtocol],
                    ssl_context: ssl.SSLContext) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for `loop.create_server(..., ssl=None)` that serves TLS with
    `ssl_context` in front of `factory`'s protocols, alerts included."""
    install()
    return lambda: sslproto.SSLProtocol(loop, factory(), ssl_context, None, server_side=True)


async def connect(loop: asyncio.AbstractEventLoop, protocol: asyncio.BaseProtocol,
                  host: str, port: int, ssl_context: ssl.SSLContext,
                  server_hostname: str) -> asyncio.BaseTransport:
    """`loop.create_connection(..., ssl=ssl_context)` through asyncio's SSLProtocol on
    whichever loop runs (alerts included); returns `protocol`'s TLS transport once the
    handshake is done. The caller bounds the time."""
    install()
    handshake = loop.create_future()
    tls = sslproto.SSLProtocol(loop, protocol, ssl_context, handshake, server_side=False,
                               server_hostname=server_hostname)
    raw, _ = await loop.create_connection(lambda: tls, host, port)
    try:
        await handshake
    except BaseException:
        raw.close()
        raise
    return tls._app_transport
