"""ThreadWorker: one thread running calls in order, answering on the event loop cheaply.

The Runner hands two calls per Ready to threads (the log write, the apply). Through
`loop.run_in_executor` each costs a `concurrent.futures.Future`, the executor's lock
and queue bookkeeping and a chained asyncio future: profiled at about a quarter of
the server's samples for a Put at 1 in flight (bench/profile_server.md, 2026-12-04).
`call` puts the work on a SimpleQueue and answers with one `call_soon_threadsafe`.
`post` hands work on from any thread without an answer (the Runner's log thread posts
apply batches, which report to the loop themselves). `submit` keeps it an ordinary
Executor for everything else (`run_in_executor`). `run_if_idle` lets the caller run a
call itself, in the thread's stead, when the thread has nothing to do: the Runner's loop
applies a small batch that way instead of waking the apply thread and waiting for its
answer (two thread hand-offs, bench/profile_server.md, session 16).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadWorker", "NOT_RUN"]

log = logging.getLogger(__name__)

_STOP = object()

# What `run_if_idle` returns when the worker was busy and the call did not run.
NOT_RUN = object()


def _resolve(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the awaiting side gave up (cancelled)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class ThreadWorker(concurrent.futures.Executor):
    """A one-thread executor whose `call` resolves an asyncio future directly."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        # calls queued or running (`_state` guards it), and whoever runs one holds
        # `_running`: the worker thread, or a `run_if_idle` caller in its stead
        self._state = threading.Lock()
        self._unfinished = 0
        self._running = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any],
             *args: Any) -> asyncio.Future:
        """fn(*args) on the worker thread; the returned future resolves on `loop`."""
        if self._closed:
            raise RuntimeError("cannot schedule new calls after shutdown")
        fut = loop.create_future()
        self._put((loop, fut, fn, args))
        return fut

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """fn(*args) on the worker thread, answering nobody: for callers on any thread
        that hand work on and learn its outcome from fn itself (no future, no wake-up)."""
        if self._closed:
            raise RuntimeError("cannot schedule new calls after shutdown")
        self._put((None, None, fn, args))

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future:
        """The Executor interface (what `loop.run_in_executor` uses)."""
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        cfut: concurrent.futures.Future = concurrent.futures.Future()
        self._put((None, cfut, fn, (args, kwargs)))
        return cfut

    def run_if_idle(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the calling thread, in the worker's stead, if no call is queued or
        running; what is posted meanwhile runs after it. Returns fn's result, or NOT_RUN
        (and fn did not run) if the worker was busy. Never waits."""
        with self._state:
            if self._closed or self._unfinished or not self._running.acquire(blocking=False):
                return NOT_RUN
        try:
            return fn(*args)
        finally:
            self._running.release()

    def _put(self, item: tuple) -> None:
        with self._state:
            self._unfinished += 1
        self._queue.put(item)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Run what is queued, then end the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            try:
                with self._running:
                    self._execute(*item)
            finally:
                with self._state:
                    self._unfinished -= 1

    def _execute(self, loop: asyncio.AbstractEventLoop | None, fut: Any,
                 fn: Callable[..., Any], args: Any) -> None:
        if fut is None:  # post(): nobody waits
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - fn reports its own outcome
                log.exception("%s: a posted call failed", self._thread.name)
            return
        if loop is None:  # submit(): a concurrent future
            if not fut.set_running_or_notify_cancel():
                return
            a, kw = args
            try:
                fut.set_result(fn(*a, **kw))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
            return
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(_resolve, fut, result, exc)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass
