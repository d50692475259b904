"""Turning kubekv's errors into gRPC statuses with etcd's codes and messages."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging

from kubekv_server.errors import EtcdError

log = logging.getLogger("kubekv.api")


def etcd_errors(handler):
    """Wrap a unary handler (plain or async): an EtcdError it raises ends the call with
    its status (one set on a returned future does too, through the RPC layer); other
    exceptions reach the server, which answers Unknown and logs."""
    if inspect.iscoroutinefunction(handler):

        @functools.wraps(handler)
        async def async_wrapper(self, request, context):
            try:
                return await handler(self, request, context)
            except EtcdError as exc:
                context.abort(exc.code, exc.message)

        return async_wrapper

    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            return handler(self, request, context)
        except EtcdError as exc:
            context.abort(exc.code, exc.message)

    return wrapper


def chain(barrier: asyncio.Future, then) -> asyncio.Future:
    """A future of then() run once `barrier` resolves (its failure passes through)."""
    out = asyncio.get_running_loop().create_future()

    def done(f: asyncio.Future) -> None:
        if out.done():
            return
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        try:
            out.set_result(then())
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            out.set_exception(e)

    barrier.add_done_callback(done)
    return out
