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


class GaveUp(RuntimeError):
    """A wait ended early: its `give_up` check said the condition can no longer hold
    (e.g. the server process exited). `reason` is what the check returned."""

    def __init__(self, what: str, reason: object) -> None:
        super().__init__(f"gave up waiting for {what}: {reason}")
        self.reason = reason


class _Poll:
    """One wait's state: the deadline on `now`'s clock and the last value and exception."""

    def __init__(self, cond: Callable[[], object], timeout: float, what: str,
                 now: Callable[[], float], give_up: Callable[[], object] | None) -> None:
        self.cond, self.timeout, self.what, self.now = cond, timeout, what, now
        self.give_up = give_up
        self.deadline = now() + timeout
        self.last: object = None
        self.last_exc: BaseException | None = None

    def held(self) -> bool:
        """Whether `cond` holds now; `TimeoutError` once it has not in time, `GaveUp`
        once `give_up` returns something truthy."""
        reason = self.give_up() if self.give_up is not None else None
        if reason:
            raise GaveUp(self.what, reason)
        try:
            self.last = self.cond()
            if self.last:
                return True
        except Exception as exc:  # noqa: BLE001 - "not yet", reported on timeout
            self.last_exc = exc
        if self.now() >= self.deadline:
            raise TimeoutError(f"timed out after {self.timeout}s waiting for {self.what} "
                               f"(last: {self.last!r}, last error: {self.last_exc!r})")
        return False


def wait_for(cond: Callable[[], T], timeout: float, what: str,
             interval: float = POLL_INTERVAL, *,
             give_up: Callable[[], object] | None = None) -> T:
    """Poll `cond()` until it returns something truthy, and return that; `TimeoutError`
    naming `what` (and the last value and exception seen) when `timeout` runs out.
    An exception from `cond` counts as "not yet": a member may be down or electing.
    `give_up()`, checked before each poll, ends the wait with `GaveUp` when it returns
    something truthy (why): a server that exited will not become ready."""
    poll = _Poll(cond, timeout, what, time.monotonic, give_up)
    while not poll.held():
        time.sleep(interval)
    return poll.last  # type: ignore[return-value]


async def wait_for_async(cond: Callable[[], T], timeout: float, what: str,
                         interval: float = POLL_INTERVAL) -> T:
    """`wait_for` for code running on an asyncio loop: sleeps without blocking the loop
    (whose tasks are what will make `cond` true)."""
    poll = _Poll(cond, timeout, what, asyncio.get_running_loop().time, None)
    while not poll.held():
        await asyncio.sleep(interval)
    return poll.last  # type: ignore[return-value]
