"""The commit rule of a one-member cluster: an entry is committed once it is durable locally.

Shaped like a Raft node so the replicated runner can take its place: proposals
from many handler threads are batched into one log append with one fsync, the
committed entries are applied in one state transaction, then every waiter is
answered. One committer thread does all of it, so LMDB writes and fsyncs never
run on a thread that serves clients. Each start is a new term (as if the member
had won an election), opened by an empty entry.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

from etcdproto.raftpb import raft_pb2

from . import errors
from .applier import Applier, BatchResult
from .waiter import Waiter

log = logging.getLogger("kubekv.node")

MAX_BATCH_ENTRIES = 4096
MAX_BATCH_BYTES = 8 << 20

_STOP = object()


class SingleMemberNode:
    """Durable log + apply pipeline for a cluster of one; `propose` returns a Waiter."""

    def __init__(self, storage, applier: Applier, member_id: int) -> None:
        self.storage = storage
        self.applier = applier
        self.member_id = member_id
        self.term = 0
        self.commit_index = 0
        self.last_index = 0
        self.leader_id = 0
        self._ids = itertools.count(time.time_ns() & ((1 << 62) - 1))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[BatchResult], None]] = []
        self._idle_work: list[Callable[[], bool]] = []
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Recover (apply every durable entry not yet applied, open a new term), then serve."""
        self._recover()
        self.leader_id = self.member_id
        self._thread = threading.Thread(target=self._run, name="kubekv-committer", daemon=True)
        self._thread.start()

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

    def stop(self) -> None:
        """Finish what is queued, then stop the committer; later proposals fail."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(30)

    # ------------------------------------------------------------- proposals

    def next_id(self) -> int:
        """A request id unique within this member's lifetime."""
        return next(self._ids)

    def propose(self, request_id: int, data: bytes) -> Waiter:
        """Queue an entry; the waiter yields the applier's result for request_id."""
        if self._stopped:
            raise errors.STOPPED
        waiter = Waiter()
        self._queue.put((data, request_id, waiter))
        return waiter

    def add_listener(self, fn: Callable[[BatchResult], None]) -> None:
        """Call fn(batch) on the committer thread after each applied batch, before its
        waiters are answered (watch hub). fn must not block: it only enqueues."""
        self._listeners.append(fn)

    def add_idle_work(self, step: Callable[[], bool]) -> None:
        """Run step() on the committer thread between batches while it returns True."""
        self._idle_work.append(step)

    # ------------------------------------------------------------ the loop

    def _next_batch(self, block: bool) -> list | None:
        """Everything queued now (bounded), waiting for the first item if `block`."""
        q = self._queue
        try:
            first = q.get() if block else q.get_nowait()
        except queue.Empty:
            return []
        if first is _STOP:
            return None
        batch, size = [first], len(first[0])
        while len(batch) < MAX_BATCH_ENTRIES and size < MAX_BATCH_BYTES:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                q.put(_STOP)  # finish this batch, stop on the next round
                break
            batch.append(item)
            size += len(item[0])
        return batch

    def _run(self) -> None:
        idle_busy = bool(self._idle_work)  # finish work left over from before a restart
        while True:
            batch = self._next_batch(block=not idle_busy)
            if batch is None:
                break
            if batch:
                result = self._commit(batch)
                if result is not None and result.compaction_scheduled:
                    idle_busy = True
            if idle_busy:
                idle_busy = self._idle_step()
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[2].fail(errors.STOPPED)

    def _commit(self, batch: list) -> BatchResult | None:
        try:
            result = self._persist_and_apply(batch)
        except Exception as exc:  # disk full, I/O error: fail the batch, keep serving
            log.exception("event=append_failed entries=%d", len(batch))
            err = errors.NO_SPACE if "MDB_MAP_FULL" in str(exc) else errors.STOPPED
            for item in batch:
                item[2].fail(err)
            return None
        # Listeners (the watch hub) first: a client that has its write acknowledged
        # and then opens a watch must find the write already behind the hub's revision.
        for fn in self._listeners:
            try:
                fn(result)
            except Exception:
                log.exception("event=listener_failed")
        waiters = {rid: w for _, rid, w in batch}
        for rid, outcome in result.results:
            w = waiters.get(rid)
            if w is None:
                continue
            if isinstance(outcome, BaseException):
                w.fail(outcome)
            else:
                w.succeed(outcome)
        return result

    def _idle_step(self) -> bool:
        busy = False
        for step in self._idle_work:
            try:
                busy = step() or busy
            except Exception:
                log.exception("event=idle_work_failed")
        return busy

    def _persist_and_apply(self, batch: list) -> BatchResult:
        """Append + fsync the entries, then apply them in one state transaction."""
        start = self.last_index + 1
        entries = [
            raft_pb2.Entry(term=self.term, index=start + i, type=raft_pb2.EntryNormal, data=data)
            for i, (data, _, _) in enumerate(batch)
        ]
        last = start + len(entries) - 1
        hs = raft_pb2.HardState(term=self.term, vote=self.member_id, commit=last)
        self.storage.append(entries, hs)
        self.last_index = self.commit_index = last
        return self.applier.apply(entries)
