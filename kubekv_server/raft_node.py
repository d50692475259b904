"""A member's Raft node: kubekv_raft's Runner on an asyncio loop in a thread of its own.

gRPC handler threads call `propose` and `read_index`; both hand work to the loop
in coalesced batches (one wake-up for everything queued meanwhile) and block on
a Waiter. The Runner persists each Ready to the LMDB log, sends messages through
the peer transport and applies committed entries with kubekv's Applier, whose
per-request results release the waiters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable

from etcdproto.raftpb import raft_pb2
from kubekv_raft.errors import ProposalDroppedError
from kubekv_raft.raft import Config as RaftConfig
from kubekv_raft.runner import Runner

from . import errors
from .applier import Applier, BatchResult
from .waiter import Waiter

log = logging.getLogger("kubekv.raft")


def request_id_of(data: bytes) -> bytes:
    """The varint bytes of InternalRequest.id (field 1), which leads every proposal."""
    if not data or data[0] != 0x08:
        return data
    end = 1
    while data[end] & 0x80:
        end += 1
    return data[1 : end + 1]


class NullTransport:
    """The transport of a one-member cluster: there is nobody to send to."""

    def send(self, messages: list[raft_pb2.Message]) -> None:
        if messages:
            log.debug("event=dropped_messages count=%d", len(messages))


class RaftNode:
    """Thread-safe front of a Runner: proposals, linearizable-read barriers, status."""

    def __init__(
        self,
        storage,
        applier: Applier,
        member_id: int,
        *,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        transport_factory: Callable[[RaftNode], object] | None = None,
    ) -> None:
        self.storage = storage
        self.applier = applier
        self.member_id = member_id
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self._transport_factory = transport_factory
        self._ids = itertools.count(time.time_ns() & ((1 << 62) - 1))
        self._waiters: dict[bytes, Waiter] = {}
        self._waiters_lock = threading.Lock()
        self._inbox: list[tuple[bytes, bytes]] = []
        self._reads: list[Waiter] = []
        self._inbox_lock = threading.Lock()
        self._scheduled = False
        self._listeners: list[Callable[[BatchResult], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runner: Runner | None = None
        self.transport = None
        self._thread: threading.Thread | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kubekv-raft")
        self._stopped = False

    # ------------------------------------------------------------ status

    @property
    def term(self) -> int:
        r = self.runner
        return r.node.raft.term if r is not None else 0

    @property
    def leader_id(self) -> int:
        r = self.runner
        return r.node.raft.lead if r is not None else 0

    @property
    def commit_index(self) -> int:
        r = self.runner
        return r.node.raft.raft_log.committed if r is not None else 0

    def is_leader(self) -> bool:
        return self.leader_id == self.member_id

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            try:
                loop.run_until_complete(self._start_runner())
            except BaseException as exc:  # surface start-up failures to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="kubekv-raft-loop", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    async def _start_runner(self) -> None:
        tick = self.heartbeat_ms / 1000.0
        cfg = RaftConfig(
            id=self.member_id,
            storage=self.storage,
            election_tick=max(2, self.election_ms // self.heartbeat_ms),
            heartbeat_tick=1,
            applied=self.applier.applied_index,
            pre_vote=True,
            check_quorum=True,
            max_inflight_msgs=256,
        )
        self.transport = (
            self._transport_factory(self) if self._transport_factory else NullTransport()
        )
        self.runner = Runner(
            cfg,
            self.storage,
            self.transport,
            _ApplierAdapter(self),
            tick_interval=tick,
            request_id_of=request_id_of,
            executor=self._executor,
        )
        await self.runner.start()
        if self._single_voter():
            asyncio.get_running_loop().create_task(self._campaign_alone())

    async def _campaign_alone(self) -> None:
        """A lone voter need not wait an election timeout: campaign once the log is applied."""
        runner = self.runner
        while runner.applied < runner.node.raft.raft_log.committed:
            await asyncio.sleep(0.002)
        if runner.node.raft.lead == 0:
            runner.campaign()

    def wait_leader(self, timeout: float | None = None) -> bool:
        """Block until this member knows a leader (and has applied what was committed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.leader_id == 0 or self.runner.applied < self.commit_index:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _single_voter(self) -> bool:
        _, cs = self.storage.initial_state()
        return list(cs.voters) == [self.member_id]

    def stop(self) -> None:
        if self._stopped or self.loop is None:
            return
        self._stopped = True

        async def shutdown() -> None:
            if self.runner is not None:
                await self.runner.stop()
            close = getattr(self.transport, "close", None)
            if close is not None:
                res = close()
                if asyncio.iscoroutine(res):
                    await res

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(15)
        except Exception:
            log.exception("event=raft_stop_failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._executor.shutdown(wait=True)
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, {}
        for w in waiters.values():
            w.fail(errors.STOPPED)

    # ------------------------------------------------------------- inputs

    def next_id(self) -> int:
        return next(self._ids)

    def add_listener(self, fn: Callable[[BatchResult], None]) -> None:
        self._listeners.append(fn)

    def propose(self, request_id: int, data: bytes) -> Waiter:
        """Queue a proposal; the waiter yields the applier's result for request_id."""
        if self._stopped:
            raise errors.STOPPED
        waiter = Waiter()
        rid = request_id_of(data)
        with self._waiters_lock:
            self._waiters[rid] = waiter
        with self._inbox_lock:
            self._inbox.append((data, rid))
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self.loop.call_soon_threadsafe(self._drain)
        return waiter

    def read_index(self) -> Waiter:
        """A barrier: the waiter is released once this member applied a confirmed read index."""
        if self._stopped:
            raise errors.STOPPED
        waiter = Waiter()
        with self._inbox_lock:
            self._reads.append(waiter)
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self.loop.call_soon_threadsafe(self._drain)
        return waiter

    def _drain(self) -> None:
        """Loop thread: hand everything queued to the runner in one go."""
        with self._inbox_lock:
            props, self._inbox = self._inbox, []
            reads, self._reads = self._reads, []
            self._scheduled = False
        runner = self.runner
        for data, rid in props:
            fut = runner.propose(data, rid)
            fut.add_done_callback(lambda f, rid=rid: self._proposal_done(f, rid))
        if reads:
            fut = runner.read_index()
            fut.add_done_callback(lambda f, reads=reads: self._reads_done(f, reads))

    def _proposal_done(self, fut: asyncio.Future, rid: bytes) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        with self._waiters_lock:
            waiter = self._waiters.pop(rid, None)
        if waiter is not None:
            exc = fut.exception()
            dropped = isinstance(exc, ProposalDroppedError)
            waiter.fail(errors.NO_LEADER if dropped else errors.STOPPED)

    def _reads_done(self, fut: asyncio.Future, reads: list[Waiter]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        for w in reads:
            if exc is None and not fut.cancelled():
                w.succeed(fut.result())
            else:
                w.fail(errors.NO_LEADER)

    # -------------------------------------------------------------- apply

    def _applied(self, result: BatchResult) -> None:
        """Executor thread: notify listeners (watchers see a change before its writer's
        answer), then release the waiters of this batch."""
        for fn in self._listeners:
            try:
                fn(result)
            except Exception:
                log.exception("event=listener_failed")
        if result.results:
            with self._waiters_lock:
                found = [(self._waiters.pop(_varint(rid), None), outcome)
                         for rid, outcome in result.results]
            for waiter, outcome in found:
                if waiter is None:
                    continue
                if isinstance(outcome, BaseException):
                    waiter.fail(outcome)
                else:
                    waiter.succeed(outcome)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _ApplierAdapter:
    """What the Runner calls (in its executor thread) with each batch of committed entries."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    def apply(self, entries: list[raft_pb2.Entry]) -> None:
        result = self.node.applier.apply(entries)
        self.node._applied(result)
