"""A one-shot result slot that a handler thread blocks on until the committer fills it."""

from __future__ import annotations

import _thread

from . import errors


class Waiter:
    """Filled exactly once by `succeed` or `fail`; `wait` blocks until then (or times out)."""

    __slots__ = ("_lock", "_value", "_error")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._value = None
        self._error: BaseException | None = None

    def succeed(self, value) -> None:
        self._value = value
        self._lock.release()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._lock.release()

    def wait(self, timeout: float = -1):
        """The result, or raise the failure; etcd's request-timeout error after `timeout` s."""
        if not self._lock.acquire(True, timeout):
            raise errors.TIMEOUT
        self._lock.release()
        if self._error is not None:
            raise self._error
        return self._value
