"""Worker threads calling into the event loop: run a function there, wait for its result."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Callable
from typing import Any

from kubekv_server import errors


def call_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args,
                 timeout: float) -> Any:
    """Worker threads only: run fn(*args) on the loop; its result, or its future's.

    Runs in the caller's context, so that proposals keep the client's identity.
    """
    result: concurrent.futures.Future = concurrent.futures.Future()

    def submit() -> None:
        try:
            out = fn(*args)
        except BaseException as exc:
            result.set_exception(exc)
            return
        if isinstance(out, asyncio.Future):
            asyncio.futures._chain_future(out, result)  # noqa: SLF001 - stdlib's bridge
        else:
            result.set_result(out)

    loop.call_soon_threadsafe(submit, context=contextvars.copy_context())
    try:
        return result.result(timeout)
    except concurrent.futures.TimeoutError:
        raise errors.TIMEOUT from None
