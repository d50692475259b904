"""`PeerCallGuard`: what every call on the peer port runs inside (`peer_server.PeerServer`).

Everything that reaches the peer port is treated as hostile: a request that does not
decode ends its call with INVALID_ARGUMENT and one rate-limited log line per peer
address (`bounds.violations`), not a traceback; a peer whose certificate the member's
`PeerIdentity` refuses gets UNAUTHENTICATED. On `close()` the guard ends every call in
flight with UNAVAILABLE and refuses new ones, so a stopping member leaves no handler
behind for the event loop's teardown to cancel. A call is a task (`wrap`: a servicer's
async method) or an inline request sink (`wrap_sink`: the Raft message stream, whose
batches are taken in the loop pass that parsed them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kubekv_server.peer import bounds
from kubekv_server.peer.bounds import MAX_LOGGED_CHARS
from kubekv_server.tls.peer import BAD_CERTIFICATE, PeerIdentity, peer_address

__all__ = [
    "PeerCallGuard",
    "MalformedRequestError",
    "STOPPING_MESSAGE",
]

# What a member that is stopping answers the calls it ends.
STOPPING_MESSAGE = "raft: the member is stopping"
# How long a stopping member waits for the calls it cancelled to end (they end within a
# loop iteration or two; this bounds a wedged one).
SHUTDOWN_DRAIN_TIMEOUT = 2.0


class MalformedRequestError(Exception):
    """A request did not decode (raised into the handler reading it)."""


class PeerCallGuard:
    """Runs every peer call: malformed requests end in INVALID_ARGUMENT (with one
    rate-limited line), refused certificates in UNAUTHENTICATED, and `close()` ends
    every call in flight with UNAVAILABLE.

    `on_received(sender, nbytes)`, if set, is told the encoded size of every request of
    a client-streaming call (Raft message batches, snapshot chunks) with the member it
    came from (a batch's `from_`, a snapshot's first chunk's message), for etcd's
    etcd_network_peer_received_bytes_total: the size comes free from the bytes decoded."""

    def __init__(self) -> None:
        self._active: set[asyncio.Task] = set()
        self._sinks: set[_GuardedSink] = set()  # inline streams open (no task of their own)
        self._closing = False
        self.on_received: Callable[[int, int], None] | None = None

    @property
    def active(self) -> int:
        """Calls in flight."""
        return len(self._active) + len(self._sinks)

    @property
    def closing(self) -> bool:
        """Whether `close()` was called: new calls are refused."""
        return self._closing

    async def close(self, timeout: float = SHUTDOWN_DRAIN_TIMEOUT) -> None:
        """End every call in flight (UNAVAILABLE) and wait, at most `timeout`, for them."""
        self._closing = True
        for sink in list(self._sinks):  # ended at once: each leaves the set as it ends
            sink.context.end(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
        tasks = set(self._active)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # cancelled again until they end: asyncio.wait_for (3.11) can swallow a
        # cancellation that lands as its inner wait completes, and a call that missed it
        # would run on until its own timeout
        while tasks and loop.time() < deadline:
            for t in tasks:
                t.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=min(0.1, deadline - loop.time()))

    async def _run(self, method: str, context: Any, identity: PeerIdentity | None,
                   call: Callable[[], Awaitable[Any]]) -> Any:
        if self._closing:
            context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
        task = asyncio.current_task()
        self._active.add(task)  # type: ignore[arg-type]
        try:
            if identity is not None and not identity.allows(context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_CERTIFICATE)
            return await call()
        except MalformedRequestError:
            bounds.violations.warning(
                peer_address(context), "peer_malformed_request", "method=%s", method
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
        except asyncio.CancelledError:
            if not self._closing:
                raise  # the peer went away
            context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
        finally:
            self._active.discard(task)  # type: ignore[arg-type]

    def wrap(self, method: str, handler: Callable, client_streaming: bool,
             identity: PeerIdentity | None, malformed: object) -> Callable:
        """`handler` (a servicer method) run by the guard. A client-streaming handler's
        requests arrive as (request, encoded size) pairs; `malformed` is what a request
        that did not decode is."""
        method = method[:MAX_LOGGED_CHARS]
        run = self._run

        if client_streaming:
            async def checked(requests):  # type: ignore[no-untyped-def]
                sender = 0
                async for r, n in requests:
                    if r is malformed:
                        raise MalformedRequestError(method)
                    if not sender:
                        sender = _sender(r)
                    if sender and self.on_received is not None:
                        self.on_received(sender, n)
                    yield r

            async def streamed(requests, context):  # type: ignore[no-untyped-def]
                return await run(method, context, identity,
                                 lambda: handler(checked(requests), context))

            return streamed

        async def unary(request, context):  # type: ignore[no-untyped-def]
            async def call():  # type: ignore[no-untyped-def]
                if request is malformed:
                    raise MalformedRequestError(method)
                return await handler(request, context)

            return await run(method, context, identity, call)

        return unary

    def wrap_sink(self, method: str, open_sink: Callable[[Any], Any],
                  identity: PeerIdentity | None, malformed: object) -> Callable:
        """`open_sink(context)` (a servicer's inline request sink for a client-streaming
        method, as `RaftPeerServicer.StreamSink`) run by the guard: refused while closing
        and for a certificate `identity` refuses, its requests (request, encoded size)
        counted and checked for `malformed` as `wrap`'s, ended by `close()`. The peer
        server registers the result as an inline handler (rpc/calls.py)."""
        method = method[:MAX_LOGGED_CHARS]

        def opened(context: Any) -> _GuardedSink:
            if self._closing:
                context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
            if identity is not None and not identity.allows(context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_CERTIFICATE)
            sink = _GuardedSink(self, method, context, open_sink(context), malformed)
            self._sinks.add(sink)
            context.add_callback(lambda: self._sinks.discard(sink))  # however it ends
            return sink

        return opened


class _GuardedSink:
    """A servicer's request sink behind the guard (`PeerCallGuard.wrap_sink`)."""

    __slots__ = ("guard", "method", "context", "sink", "malformed", "sender")

    def __init__(self, guard: PeerCallGuard, method: str, context: Any, sink: Any,
                 malformed: object) -> None:
        self.guard = guard
        self.method = method
        self.context = context
        self.sink = sink
        self.malformed = malformed
        self.sender = 0  # the member the requests come from, once one names it

    def message(self, request: Any, size: int) -> None:
        if request is self.malformed:
            bounds.violations.warning(
                peer_address(self.context), "peer_malformed_request", "method=%s", self.method
            )
            self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
        if not self.sender:
            self.sender = _sender(request)
        on_received = self.guard.on_received
        if self.sender and on_received is not None:
            on_received(self.sender, size)
        self.sink.message(request, size)

    def end(self) -> Any:
        return self.sink.end()


def _sender(request: Any) -> int:
    """The member a streamed peer request comes from (0: not known from this one)."""
    frm = getattr(request, "from_", 0)
    if frm:
        return frm
    message = getattr(request, "message", None)
    return message.from_ if message is not None else 0
