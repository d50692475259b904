"""The per-call context handed to service handlers, shaped like grpc.ServicerContext."""

from __future__ import annotations

import contextvars
import ssl
from collections.abc import Callable

import grpc

# For plain HTTP handlers: whether the request came over TLS (etcd checks --host-whitelist
# only for requests that did not).
request_tls: contextvars.ContextVar = contextvars.ContextVar("request_tls", default=False)


class Deferred(Exception):
    """Raised by a server gate that cannot decide yet: the call is admitted again once
    `future` is done; if the gate defers a second time, the call fails with `otherwise`."""

    def __init__(self, future, otherwise: BaseException) -> None:
        super().__init__("deferred")
        self.future = future
        self.otherwise = otherwise


class AbortError(Exception):
    """Raised by `RpcContext.abort`: ends the call with a status code and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def status_number(code: grpc.StatusCode) -> int:
    """The wire number of a gRPC status code."""
    return code.value[0]


class RpcContext:
    """What a handler may ask of its call: metadata, peer, TLS identity, liveness, abort."""

    __slots__ = ("_call", "_code", "_details")

    def __init__(self, call) -> None:
        self._call = call
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> list[tuple[str, str]]:
        """Request headers other than HTTP/2 pseudo-headers, as (key, value) strings."""
        return [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in self._call.headers
            if not k.startswith(b":")
        ]

    def metadata_value(self, key: str) -> str | None:
        """The first value of request header `key` (None: not sent)."""
        v = self._call.fields.get(key.encode())
        return None if v is None else v.decode("latin-1")

    def peer(self) -> str:
        host, port = (self._call.conn.peername or ("", 0))[:2]
        return f"ipv4:{host}:{port}"

    def auth_context(self) -> dict[str, list[bytes]]:
        """TLS identity in grpc's shape: x509_pem_cert and x509_common_name when present."""
        der = self._call.conn.peer_cert_der
        if der is None:
            return {}
        out = {"x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()]}
        cn = self._call.conn.peer_common_name
        if cn:
            out["x509_common_name"] = [cn.encode()]
        return out

    def is_active(self) -> bool:
        return not self._call.finished

    def unacknowledged_bytes(self) -> int:
        """Response bytes the client has not yet given HTTP/2 window back for, plus
        those still waiting for window: how far the client is behind what it was sent."""
        return self._call.conn.unacknowledged_bytes(self._call)

    def add_callback(self, fn: Callable[[], None]) -> bool:
        """Call fn once the call ends (completed, cancelled or the connection lost)."""
        self._call.callbacks.append(fn)
        return True

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise AbortError(code, details)

    def end(self, code: grpc.StatusCode, details: str = "") -> None:
        """End the call now with a status, from outside its handler (a stopping server
        ending an inline stream, which has no task to cancel); what the client sends
        after is ignored."""
        self._call.finish(status_number(code), details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def time_remaining(self) -> float | None:
        return None
