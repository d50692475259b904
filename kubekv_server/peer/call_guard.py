"""The peer server's outermost interceptor, `PeerCallGuard`, and how a peer server stops.

Everything that reaches the peer port is treated as hostile: a request that does not
decode ends its call with INVALID_ARGUMENT and one rate-limited log line per peer
address (`bounds.violations`), not grpc's ERROR traceback. On `close()` the guard ends
every call in flight with UNAVAILABLE, so a stopping member leaves no handler behind
for the event loop's teardown to cancel (`stop_peer_server`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from kubekv_server.peer import bounds
from kubekv_server.peer.bounds import MAX_LOGGED_CHARS
from kubekv_server.tls.peer import peer_address

__all__ = [
    "PeerCallGuard",
    "MalformedRequestError",
    "STOPPING_MESSAGE",
    "grpc_call_tasks",
    "stop_peer_server",
]

# What a member that is stopping answers the calls it ends.
STOPPING_MESSAGE = "raft: the member is stopping"
# How long a stopping member waits for gRPC's per-call tasks to finish once the server
# stopped (they end within a loop iteration or two; this bounds a wedged one).
SHUTDOWN_DRAIN_TIMEOUT = 2.0


class _Malformed:
    """What a request that does not decode becomes (the guard answers INVALID_ARGUMENT)."""


_MALFORMED = _Malformed()


class MalformedRequestError(Exception):
    """A streamed request did not decode (raised into the handler reading it)."""


class PeerCallGuard(grpc.aio.ServerInterceptor):
    """The peer server's outermost interceptor: malformed requests end in
    INVALID_ARGUMENT (with one rate-limited line, not grpc's ERROR traceback), and
    `close()` ends every call in flight with UNAVAILABLE, refusing new ones, so a
    member stops without a handler left for the event loop's teardown to cancel.

    `on_received(sender, nbytes)`, if set, is told the encoded size of every request of
    a client-streaming call (Raft message batches, snapshot chunks) with the member it
    came from (a batch's `from_`, a snapshot's first chunk's message), for etcd's
    etcd_network_peer_received_bytes_total: the size comes free from the bytes decoded."""

    def __init__(self) -> None:
        self._active: set[asyncio.Task] = set()
        self._closing = False
        self.on_received: Callable[[int, int], None] | None = None

    @property
    def active(self) -> int:
        """Calls in flight."""
        return len(self._active)

    async def close(self, timeout: float = SHUTDOWN_DRAIN_TIMEOUT) -> None:
        """End every call in flight (UNAVAILABLE) and wait, at most `timeout`, for them."""
        self._closing = True
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

    async def _run(self, method: str, context: Any, call: Callable[[], Any]) -> Any:
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
        task = asyncio.current_task()
        self._active.add(task)  # type: ignore[arg-type]
        try:
            return await call()
        except MalformedRequestError:
            bounds.violations.warning(
                peer_address(context), "peer_malformed_request", "method=%s", method
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
        except asyncio.CancelledError:
            if not self._closing:
                raise  # the peer went away
            try:
                await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
            except grpc.aio.AbortError:
                raise  # how abort ends a call
            except Exception:  # noqa: BLE001 - the call had ended, or was ending, already
                raise asyncio.CancelledError from None  # grpc takes this quietly
        finally:
            self._active.discard(task)  # type: ignore[arg-type]

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method[:MAX_LOGGED_CHARS]
        decode = handler.request_deserializer

        def safe_decode(data: bytes) -> Any:
            if decode is None:
                return data
            try:
                return decode(data)
            except Exception:  # noqa: BLE001 - any decoding failure is the peer's
                return _MALFORMED

        def sized_decode(data: bytes) -> tuple[Any, int]:
            return safe_decode(data), len(data)

        async def checked(requests):
            sender = 0
            async for r, n in requests:
                if r is _MALFORMED:
                    raise MalformedRequestError(method)
                if not sender:
                    sender = _sender(r)
                if sender and self.on_received is not None:
                    self.on_received(sender, n)
                yield r

        def unary_arg(request: Any) -> Any:
            if request is _MALFORMED:
                raise MalformedRequestError(method)
            return request

        run = self._run
        if handler.unary_unary or handler.stream_unary:
            if handler.unary_unary:
                inner, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler

                async def one(request, context):
                    return await run(method, context,
                                     lambda: inner(unary_arg(request), context))
            else:
                inner, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler

                async def one(request, context):
                    return await run(method, context, lambda: inner(checked(request), context))

                return factory(one, sized_decode, handler.response_serializer)

            return factory(one, safe_decode, handler.response_serializer)
        # response streams: none on the peer port today; passed through with safe decoding
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                handler.unary_stream, safe_decode, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            handler.stream_stream, safe_decode, handler.response_serializer)


def _sender(request: Any) -> int:
    """The member a streamed peer request comes from (0: not known from this one)."""
    frm = getattr(request, "from_", 0)
    if frm:
        return frm
    message = getattr(request, "message", None)
    return message.from_ if message is not None else 0


def grpc_call_tasks() -> list[asyncio.Task]:
    """grpc.aio's own per-call tasks still running on this loop (it names them "rpc_task"
    and "HandleExceptions[<method>]"): awaited after a server stops, because the loop's
    teardown would cancel them and grpc logs each at ERROR with a traceback."""
    return [
        t for t in asyncio.all_tasks()
        if not t.done() and (t.get_name() == "rpc_task"
                             or t.get_name().startswith("HandleExceptions["))
    ]


async def stop_peer_server(server: grpc.aio.Server, guard: PeerCallGuard | None,
                           grace: float = 0.5) -> None:
    """Stop a peer server cleanly: end calls in flight (UNAVAILABLE), stop accepting,
    then wait for gRPC's per-call tasks to finish (bounded by SHUTDOWN_DRAIN_TIMEOUT)."""
    if guard is not None:
        await guard.close()
    await server.stop(grace)
    tasks = grpc_call_tasks()
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_DRAIN_TIMEOUT)
