"""The commit rule of a one-member cluster: an entry is committed once it is durable locally.

Shaped like a Raft node so the replicated runner can take its place unchanged:
proposals are batched into one log append with one fsync, committed entries are
applied in one state transaction, then waiters are answered. Each start is a
new term (as if the member had won an election), opened by an empty entry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import time
from collections.abc import Callable

from etcdproto.raftpb import raft_pb2

from . import errors
from .applier import Applier, BatchResult

log = logging.getLogger("kubekv.node")

MAX_BATCH_ENTRIES = 4096
MAX_BATCH_BYTES = 8 << 20


class SingleMemberNode:
    """Durable log + apply pipeline for a cluster of one; `propose` resolves once applied."""

    def __init__(self, storage, applier: Applier, member_id: int) -> None:
        self.storage = storage
        self.applier = applier
        self.member_id = member_id
        self.term = 0
        self.commit_index = 0
        self.last_index = 0
        self.leader_id = 0
        self._ids = itertools.count(time.time_ns() & ((1 << 62) - 1))
        self._pending: list[tuple[bytes, int]] = []
        self._pending_bytes = 0
        self._waiters: dict[int, asyncio.Future] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kubekv-wal")
        self._listeners: list[Callable[[BatchResult], None]] = []
        self._idle_work: list[Callable[[], bool]] = []
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover: apply every durable entry not yet applied, then open a new term."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._recover)
        self.leader_id = self.member_id
        self._task = asyncio.create_task(self._run(), name="kubekv-commit-loop")

    def _recover(self) -> None:
        hs = self.storage.hard_state()
        last = self.storage.last_index()
        applied = self.applier.applied_index
        first = max(applied + 1, self.storage.first_index())
        while first <= last:
            chunk = self.storage.entries(first, min(last + 1, first + 1024))
            self.applier.apply(chunk)
            first += len(chunk)
        self.term = max(hs.term, 1) + 1
        self.last_index = last + 1
        empty = raft_pb2.Entry(term=self.term, index=self.last_index, type=raft_pb2.EntryNormal)
        hs = raft_pb2.HardState(term=self.term, vote=self.member_id, commit=self.last_index)
        self.storage.append([empty], hs)
        self.applier.apply([empty])
        self.commit_index = self.last_index
        log.info(
            "event=recovered term=%d last_index=%d applied_index=%d replayed=%d",
            self.term,
            self.last_index,
            self.applier.applied_index,
            max(last - applied, 0),
        )

    async def stop(self) -> None:
        self._stopped = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(errors.STOPPED)
        self._waiters.clear()
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------- proposals

    def next_id(self) -> int:
        """A request id unique within this member's lifetime."""
        return next(self._ids)

    def propose(self, request_id: int, data: bytes) -> asyncio.Future:
        """Queue an entry; the future resolves to the applier's result for request_id."""
        if self._stopped:
            raise errors.STOPPED
        fut = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = fut
        self._pending.append((data, request_id))
        self._pending_bytes += len(data)
        self._wakeup.set()
        return fut

    def add_listener(self, fn: Callable[[BatchResult], None]) -> None:
        """Call fn(batch) on the event loop after each applied batch (watch hub, metrics)."""
        self._listeners.append(fn)

    def add_idle_work(self, step: Callable[[], bool]) -> None:
        """Run step() in the writer thread between batches while it returns True (compaction)."""
        self._idle_work.append(step)

    # ------------------------------------------------------------ the loop

    def _take_batch(self) -> list[tuple[bytes, int]]:
        if len(self._pending) <= MAX_BATCH_ENTRIES and self._pending_bytes <= MAX_BATCH_BYTES:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            return batch
        batch, size = [], 0
        while self._pending and len(batch) < MAX_BATCH_ENTRIES:
            item = self._pending[0]
            if batch and size + len(item[0]) > MAX_BATCH_BYTES:
                break
            batch.append(self._pending.pop(0))
            size += len(item[0])
        self._pending_bytes -= size
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        idle_busy = bool(self._idle_work)  # finish work left over from before a restart
        while True:
            if self._pending:
                batch = self._take_batch()
                result = await self._commit(loop, batch)
                if result is not None:
                    idle_busy = idle_busy or result.compaction_scheduled
            elif self._stopped:
                return
            elif not idle_busy:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if idle_busy:
                idle_busy = await loop.run_in_executor(self._executor, self._idle_step)

    async def _commit(self, loop, batch: list[tuple[bytes, int]]) -> BatchResult | None:
        try:
            result = await loop.run_in_executor(self._executor, self._persist_and_apply, batch)
        except Exception as exc:  # disk full, I/O error: fail the batch, keep serving
            log.exception("event=append_failed entries=%d", len(batch))
            err = errors.NO_SPACE if "MDB_MAP_FULL" in str(exc) else errors.STOPPED
            for _, rid in batch:
                fut = self._waiters.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(err)
            return None
        for rid, outcome in result.results:
            fut = self._waiters.pop(rid, None)
            if fut is None or fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)
        for fn in self._listeners:
            fn(result)
        return result

    def _idle_step(self) -> bool:
        busy = False
        for step in self._idle_work:
            busy = step() or busy
        return busy

    def _persist_and_apply(self, batch: list[tuple[bytes, int]]) -> BatchResult:
        """Writer thread: append + fsync the entries, then apply them (one txn each)."""
        start = self.last_index + 1
        entries = [
            raft_pb2.Entry(term=self.term, index=start + i, type=raft_pb2.EntryNormal, data=data)
            for i, (data, _) in enumerate(batch)
        ]
        last = start + len(entries) - 1
        hs = raft_pb2.HardState(term=self.term, vote=self.member_id, commit=last)
        self.storage.append(entries, hs)
        self.last_index = self.commit_index = last
        return self.applier.apply(entries)
