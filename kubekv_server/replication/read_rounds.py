"""Read-index rounds: how a member's linearizable reads wait for a quorum-confirmed index.

As etcd's linearizableReadLoop: one round is in flight at a time and the reads that arrive
meanwhile share the next one, so rounds never outnumber round trips. Raft drops a
read-index request when there is no leader and loses one in flight with a dead leader, so
a round is asked again every `retry` seconds until a leader confirms one, and its reads
fail with etcd's "request timed out" after `timeout`. Runs on the event loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kubekv_server import errors

# etcd's readIndexRetryTime, and its request timeout for a read that gets no read index
READ_RETRY = 0.5
READ_TIMEOUT = 7.0


class ReadRounds:
    """Groups waiting reads into read-index rounds; `ask()` starts one in Raft."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ask: Callable[[], asyncio.Future], *,
                 retry: float = READ_RETRY, timeout: float = READ_TIMEOUT) -> None:
        self.loop = loop
        self.ask = ask
        self.retry = retry
        self.timeout = timeout
        self._waiting: list[asyncio.Future] = []  # for the next round
        self._round = 0  # id of the round in flight, 0 when none
        self._rounds = 0
        self.stopped = False
        # etcd_server_slow_read_indexes_total: rounds retried or timed out;
        # etcd_server_read_indexes_failed_total: rounds Raft failed
        self.slow = 0
        self.failed = 0

    def add(self, reads: list[asyncio.Future]) -> None:
        """Start a round for `reads`, or queue them for the next one."""
        if self._round:
            self._waiting.extend(reads)
        else:
            self._start(reads, self.loop.time() + self.timeout)

    def _start(self, reads: list[asyncio.Future], deadline: float) -> None:
        self._rounds += 1
        self._round = rid = self._rounds
        fut = self.ask()
        fut.add_done_callback(lambda f: self._done(f, reads, rid))
        self.loop.call_later(self.retry, self._check, reads, deadline, rid)

    def _check(self, reads: list[asyncio.Future], deadline: float, rid: int) -> None:
        """`retry` seconds after a round started: ask again for the reads still waiting."""
        if self.stopped or rid != self._round:
            return  # answered (the next round, if any, has its own check) or stopped
        pending = [r for r in reads if not r.done()]
        if not pending:
            # every read of the round was given up (its client went away) and Raft never
            # answered: end the round, or the reads queued behind it would wait forever
            self._round = 0
            self._next()
            return
        self.slow += 1  # etcd: "waiting for ReadIndex response took too long"
        if self.loop.time() >= deadline:
            for r in pending:
                r.set_exception(errors.TIMEOUT)
            self._round = 0
            self._next()
            return
        waiting, self._waiting = self._waiting, []
        self._start(pending + waiting, deadline)  # the round was lost: ask again

    def _done(self, fut: asyncio.Future, reads: list[asyncio.Future], rid: int) -> None:
        failed = fut.cancelled() or fut.exception() is not None
        if failed:
            self.failed += 1
        for r in reads:
            if r.done():
                continue
            if failed:
                r.set_exception(errors.NO_LEADER)
            else:
                r.set_result(fut.result())
        if rid == self._round:
            self._round = 0
            self._next()

    def _next(self) -> None:
        if self._waiting and not self._round and not self.stopped:
            waiting, self._waiting = self._waiting, []
            self._start(waiting, self.loop.time() + self.timeout)
