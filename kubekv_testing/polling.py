"""Polling for a condition in tests: the one helper every test and `kubekv.embed` use,
so "not yet" (a falsy value or an exception: a member may be down or electing) and the
timeout report mean the same everywhere. Stdlib only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

# Between polls: short enough not to add to test time, long enough to stay cheap.
POLL_INTERVAL = 0.05

T = TypeVar("T")


def _timed_out(timeout: float, what: str, last: object, last_exc: BaseException | None
               ) -> TimeoutError:
    return TimeoutError(f"timed out after {timeout}s waiting for {what} "
                        f"(last: {last!r}, last error: {last_exc!r})")


def wait_for(cond: Callable[[], T], timeout: float, what: str,
             interval: float = POLL_INTERVAL) -> T:
    """Poll `cond()` until it returns something truthy, and return that; `TimeoutError`
    naming `what` (and the last value and exception seen) when `timeout` runs out.
    An exception from `cond` counts as "not yet": a member may be down or electing."""
    deadline = time.monotonic() + timeout
    last: object = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = cond()
            if last:
                return last  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - "not yet", reported on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last, last_exc)
        time.sleep(interval)


async def wait_for_async(cond: Callable[[], T], timeout: float, what: str,
                         interval: float = POLL_INTERVAL) -> T:
    """`wait_for` for code running on an asyncio loop: sleeps without blocking the loop
    (whose tasks are what will make `cond` true)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = cond()
            if last:
                return last  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - "not yet", reported on timeout
            last_exc = exc
        if loop.time() >= deadline:
            raise _timed_out(timeout, what, last, last_exc)
        await asyncio.sleep(interval)
