"""A member's Raft node: kubekv_raft's Runner on the server's event loop.

Handlers on the loop call `propose` and `read_index` and get asyncio futures;
proposals made while the Runner writes a Ready reach it as one batch (one Ready,
one log append and fdatasync); the reads of one loop iteration share one
read-index round. The Runner's two stages overlap: the log thread
(`kubekv-log`) persists Ready N+1 to the write-ahead log while the apply thread
(`kubekv-apply`) applies Ready N's committed entries with kubekv's Applier (the
log thread hands them over itself, right after the write); back on the loop,
the proposers' futures resolve and the batch's listeners run.
Threads (lease expiry, blocking handlers) use the `*_threadsafe` variants.

After apply, one mechanism: `add_listener(fn)`. For every batch the Runner hands
over (log replay at start and batches with nothing new included), once the
batch is committed to the state db, `fn(BatchResult)` runs
- on the event loop thread (never the executor: the applier calls nobody),
- in log order, listeners in the order they were added,
- in the loop callback that resolves the batch's proposers, so a client answered
  sees every listener's effect (lessor, watchers, member list, metrics): the
  proposers' awaiters and done callbacks run in a later pass, and whatever a
  client sends after an answer the loop reads after this callback,
- before `applied_index` advances, so read barriers and waits on the applied
  index (lease forwarding's waitAppliedIndex) see them too.
By default a listener runs right after the proposers are resolved, so the
answers `Proposal.answer_with` writes leave first (a Put at 1 in flight does
not wait for the watch hub, the lessor or the metrics); one that prepares the
answers (the proposer's header fill) is added with `before_answers=True`.
A listener must not block (the loop and the next batch wait); one that raises
is logged and the others still run. A snapshot from the leader is the other
event, `on_snapshot_installed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from etcdproto.raftpb import raft_pb2
from kubekv_raft.core.errors import ProposalDroppedError, SnapshotOutOfDateError
from kubekv_raft.core.progress import Progress
from kubekv_raft.core.raft import Config as RaftConfig
from kubekv_raft.driver.runner import Runner, initial_applied
from kubekv_raft.driver.worker import ThreadWorker
from kubekv_server import errors
from kubekv_server.apply.applier import Applier, BatchResult
from kubekv_server.replication.read_rounds import ReadRounds

log = logging.getLogger("kubekv.raft")
T = TypeVar("T")

def request_id_of(data: bytes) -> bytes:
    """The varint bytes of InternalRequest.id (field 1), which leads every proposal."""
    if not data or data[0] != 0x08:
        return data
    end = 1
    while data[end] & 0x80:
        end += 1
    return data[1 : end + 1]


class Proposal(asyncio.Future):
    """A proposal's outcome on the loop. Besides done callbacks (which asyncio runs a loop
    pass after the future resolves), one caller may `answer_with(fn)`: fn(proposal) runs
    as the proposal resolves, in that pass, and may return a follow-up that completes the
    answer (the RPC layer: its connection's write). `resolve_proposals` runs each distinct
    follow-up once after answering the whole batch, so a batch's answers to one client
    connection leave in one write, in the pass that learned of the batch."""

    _answer: Callable[[asyncio.Future], Callable[[], None] | None] | None = None

    def answer_with(self, fn: Callable[[asyncio.Future], Callable[[], None] | None]) -> None:
        """Loop thread: fn(self) once this resolves, at once if it has (not if it is
        cancelled later)."""
        self._answer = fn
        if self.done():
            self._answered(None)

    def set_result(self, result: object) -> None:
        super().set_result(result)
        self._answered(None)

    def set_exception(self, exception: type | BaseException) -> None:
        super().set_exception(exception)
        self._answered(None)

    def resolve(self, outcome: object, after: dict[Callable[[], None], None]) -> None:
        """Resolve to the applier's outcome (an exception fails it); the answer's follow-up
        joins `after`, for the caller to run once it answered the others."""
        if isinstance(outcome, BaseException):
            super().set_exception(outcome)
        else:
            super().set_result(outcome)
        self._answered(after)

    def _answered(self, after: dict[Callable[[], None], None] | None) -> None:
        fn = self._answer
        if fn is None:
            return
        self._answer = None
        try:
            then = fn(self)
            if then is not None:
                if after is None:
                    then()
                else:
                    after[then] = None
        except Exception:  # as a done callback's: logged, the resolver goes on
            log.exception("event=proposal_answer_failed")


def resolve_proposals(futures: dict[int, asyncio.Future],
                      results: list[tuple[int, object]]) -> None:
    """Loop thread: resolve the proposers of a batch's (request id, outcome) pairs, popped
    from `futures`; a `Proposal`'s answer is given as it resolves, and the answers'
    follow-ups (their connections' writes) run once each after all of them."""
    after: dict[Callable[[], None], None] = {}
    try:
        for rid, outcome in results:
            fut = futures.pop(rid, None)
            if fut is None or fut.done():
                continue
            if type(fut) is Proposal:
                fut.resolve(outcome, after)
            elif isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)
    finally:
        for then in after:
            try:
                then()
            except Exception:
                log.exception("event=proposal_answer_failed")


class NullTransport:
    """The transport of a one-member cluster: there is nobody to send to."""

    def send(self, messages: list[raft_pb2.Message]) -> None:
        if messages:
            log.debug("event=dropped_messages count=%d", len(messages))


def _abort_view(f: concurrent.futures.Future) -> None:
    """A pinned view nobody copies: end its read txn once it is begun."""
    if not f.cancelled() and f.exception() is None:
        f.result().abort()


class _PinnedSnapshot(NamedTuple):
    """A snapshot's state as the apply thread pinned it, for the snapshot thread to copy."""

    # a read txn, once the commit has landed: the state db exactly as of `index`
    view: concurrent.futures.Future
    index: int
    term: int
    conf: raft_pb2.ConfState
    compact_all: bool  # compact the whole log behind it (force_snapshot)
    paused: float  # seconds the apply stage waited for the pin


class RaftNode:
    """The loop-side front of a Runner: proposals, read barriers, leadership, status."""

    def __init__(
        self,
        storage,
        applier: Applier,
        member_id: int,
        *,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        transport_factory: Callable[[RaftNode], object] | None = None,
        backend=None,
        snapshot_dir: str | None = None,
        snapshot_count: int = 0,
    ) -> None:
        self.storage = storage
        self.applier = applier
        self.member_id = member_id
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self._transport_factory = transport_factory
        self.backend = backend
        self.snapshot_dir = snapshot_dir
        if snapshot_dir is not None:
            from kubekv_server.backend import state_snapshot
            if n := state_snapshot.remove_interrupted_copies(snapshot_dir):
                log.info("event=snapshot_copies_removed count=%d dir=%s "
                         "(interrupted by a crash)", n, snapshot_dir)
        self.snapshot_count = snapshot_count
        self._snap_index = storage.snapshot().metadata.index
        self._snapshotting = False
        # held from the pinning of a snapshot's read view to the end of its copy: what
        # replaces the state db's contents or its file (a received snapshot's install, a
        # defragmentation) waits for it, and so does stopping
        self.snapshot_lock = threading.Lock()
        self._snapshot_task: asyncio.Future | None = None
        self._installed: list[Callable[[], None]] = []
        # etcd's idutil shape: 16 bits of the member id, a 40-bit millisecond clock, then
        # a counter, so ids proposed by different members never collide.
        now_ms = time.time_ns() // 1_000_000
        self._ids = itertools.count(
            ((member_id & 0xFFFF) << 48) | ((now_ms & ((1 << 40) - 1)) << 8)
        )
        self._futures: dict[int, asyncio.Future] = {}  # request id -> its proposer
        self._reads: list[asyncio.Future] = []
        self._read_rounds: ReadRounds | None = None
        self._scheduled = False
        self._preparers: list[Callable[[BatchResult], None]] = []  # before the answers
        self._listeners: list[Callable[[BatchResult], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runner: Runner | None = None
        self.transport = None
        # the apply stage's thread (state db writes, snapshots, maintenance) and the log
        # stage's (log appends): two, so that persisting and applying overlap
        self._executor = ThreadWorker("kubekv-apply")
        self._log_executor = ThreadWorker("kubekv-log")
        # copies the state db to a snapshot file beside the apply stage (`_snapshot`)
        self._snapshot_executor = ThreadWorker("kubekv-snapshot")
        self._stopped = False
        self._commit_task: asyncio.Task | None = None
        # called on the loop with the error that stopped Raft here (the runner's, or the
        # state db's batch commit's): the member can neither persist nor apply any more
        self.on_fatal: Callable[[BaseException], None] | None = None
        # metrics: proposals refused
        self.proposals_failed = 0

    # ------------------------------------------------------------ status

    @property
    def slow_read_indexes(self) -> int:
        """etcd_server_slow_read_indexes_total: read-index rounds retried or timed out."""
        return self._read_rounds.slow if self._read_rounds is not None else 0

    @property
    def read_indexes_failed(self) -> int:
        """etcd_server_read_indexes_failed_total: read-index rounds Raft failed."""
        return self._read_rounds.failed if self._read_rounds is not None else 0

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
        """The highest index known committed: Raft's, or what was applied already (a lone
        voter's entries apply right after their write, a Ready before Raft counts them)."""
        r = self.runner
        return max(r.node.raft.raft_log.committed, r.applied) if r is not None else 0

    @property
    def applied_index(self) -> int:
        r = self.runner
        return r.applied if r is not None else 0

    def is_leader(self) -> bool:
        return self.leader_id == self.member_id

    @property
    def election_ticks(self) -> int:
        """The election timeout in heartbeat ticks (etcd's ElectionTicks)."""
        return max(2, self.election_ms // self.heartbeat_ms)

    def lone_voter(self) -> bool:
        """Whether this member is the only voter (so its applied state is the committed one)."""
        r = self.runner
        if r is None:
            return False
        voters = r.node.raft.prs.config.voters.ids()
        return voters == {self.member_id}

    @property
    def pending_proposals(self) -> int:
        """Proposals waiting for their outcome (etcd_server_proposals_pending)."""
        return len(self._futures)

    def log_term(self, index: int) -> int:
        """The term of the log entry at `index`, as Raft's log answers it (0 outside the
        log; CompactedError for an entry compacted away)."""
        return self.runner.node.raft.raft_log.term(index)

    def progress(self, peer: int) -> Progress | None:
        """The leader's view of `peer`'s replication (match index, recent activity), or
        None for a peer Raft does not track."""
        return self.runner.node.raft.prs.progress.get(peer)

    def recently_active(self) -> set[int]:
        """On the leader, the members it heard from within the last election timeout,
        itself included (Raft's RecentActive, what etcd's strict reconfiguration and
        leadership transfer look at); elsewhere an empty set: only a leader knows."""
        r = self.runner.node.raft
        if not self.runner.node.is_leader:
            return set()
        return {i for i, p in r.prs.progress.items() if p.recent_active or i == r.id}

    @property
    def message_handler(self) -> Runner:
        """What the peer transport hands received messages and delivery reports to."""
        return self.runner

    # ------------------------------------------------------------ leadership

    def advance_ticks(self, ticks: int) -> None:
        """Let `ticks` election ticks pass at once (etcd's adjustTicks on startup)."""
        self.runner.advance_ticks(ticks)

    def transfer_leadership(self, target: int) -> None:
        """Ask Raft to hand leadership to `target` (the leader only; Raft may abandon it)."""
        self.runner.transfer_leadership(target)

    async def run_in_apply_thread(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) in the thread that applies entries, so that none is applied meanwhile."""
        return await self.loop.run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = RaftConfig(
            id=self.member_id,
            storage=self.storage,
            election_tick=self.election_ticks,
            heartbeat_tick=1,
            applied=initial_applied(self.applier.applied_index, self.storage.hard_state()),
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
            tick_interval=self.heartbeat_ms / 1000.0,
            request_id_of=request_id_of,
            executor=self._log_executor,
            apply_executor=self._executor,
        )
        self.runner.on_dropped = self._dropped
        self.runner.on_failure = self._fatal
        self._read_rounds = ReadRounds(self.loop, self.runner.read_index)
        await self.runner.start()
        self._commit_task = self.loop.create_task(self._commit_clock(), name="backend-commit")
        _, cs = self.storage.initial_state()
        if list(cs.voters) == [self.member_id]:
            self.loop.create_task(self._campaign_alone())

    async def _campaign_alone(self) -> None:
        """A lone voter need not wait an election timeout: campaign once the log is applied."""
        runner = self.runner
        while runner.applied < runner.node.raft.raft_log.committed:
            await asyncio.sleep(0.002)
        if runner.node.raft.lead == 0:
            runner.campaign()

    async def wait_leader(self, timeout: float | None = None) -> bool:
        """Until this member knows a leader and has applied what was committed."""
        deadline = None if timeout is None else self.loop.time() + timeout
        while self.leader_id == 0 or self.runner.applied < self.commit_index:
            if deadline is not None and self.loop.time() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def _commit_clock(self) -> None:
        """etcd's backend batch ticker: commit the apply txn once --backend-batch-interval
        passed since its first write, also when no new batch comes to do it."""
        interval = self.backend.batch_interval
        while not self._stopped:
            await asyncio.sleep(interval)
            try:
                await self._executor.call(self.loop, self.backend.commit_if_due)
            except Exception as exc:  # the state db cannot commit: etcd's "failed to commit tx"
                if self._stopped:
                    return
                log.exception("event=backend_commit_failed")
                self._fatal(exc)
                return

    def _fatal(self, exc: BaseException) -> None:
        """Raft cannot go on here (see `on_fatal`); nothing while stopping."""
        if self.on_fatal is not None and not self._stopped:
            self.on_fatal(exc)

    def commit_state(self) -> None:
        """Commit the apply txn and wait (a thread that is neither the loop nor the apply
        thread: before reading the state db's whole file, as Maintenance.Hash)."""
        try:
            self._executor.submit(self.backend.commit).result()
        except RuntimeError:  # stopping: stop() commits
            pass

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._read_rounds is not None:
            self._read_rounds.stopped = True
        if self._commit_task is not None:
            self._commit_task.cancel()
        if self.runner is not None:
            await self.runner.stop()
        close = getattr(self.transport, "close", None)
        if close is not None:
            res = close()
            if asyncio.iscoroutine(res):
                await res
        # the log thread first: a write it finishes may still hand entries to the apply
        # thread; then what was applied is committed (else the log replays it at start),
        # on the apply thread, whose LMDB write txn it is
        self._log_executor.shutdown(wait=True)
        if self._snapshot_task is not None:  # its copy reads the state db
            with contextlib.suppress(Exception):
                await asyncio.shield(self._snapshot_task)
        self._snapshot_executor.shutdown(wait=True)
        try:
            await self._executor.call(self.loop, self.backend.commit)
        except Exception:
            log.exception("event=backend_commit_failed")
        self._executor.shutdown(wait=True)
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(errors.STOPPED)
                # a proposer that gave up (its client timed out) never reads this: mark it
                # read, or asyncio logs "Future exception was never retrieved" at ERROR
                fut.exception()

    # ------------------------------------------------------------- inputs

    def next_id(self) -> int:
        return next(self._ids)

    def on_snapshot_installed(self, fn: Callable[[], None]) -> None:
        """fn() on the loop after a snapshot from the leader replaced the local state."""
        self._installed.append(fn)

    def add_listener(self, fn: Callable[[BatchResult], None], *,
                     before_answers: bool = False) -> None:
        """fn(batch) on the loop after each applied batch, in the callback that resolves
        its proposers (after them, or before with `before_answers`) and before
        applied_index advances (the contract: module docstring)."""
        (self._preparers if before_answers else self._listeners).append(fn)

    def propose(self, request_id: int, data: bytes) -> asyncio.Future:
        """Loop thread: queue a proposal; the future resolves to the applier's result
        (a `Proposal`: its caller may be answered in the pass that resolves it)."""
        if self._stopped:
            raise errors.STOPPED
        fut = Proposal(loop=self.loop)
        self._futures[request_id] = fut
        self.runner.submit([(data, request_id)])  # the Runner batches: one MsgProp per Ready
        return fut

    def propose_threadsafe(self, request_id: int, data: bytes) -> concurrent.futures.Future:
        """Any thread: like `propose`, with a concurrent future."""
        out: concurrent.futures.Future = concurrent.futures.Future()

        def submit() -> None:
            try:
                fut = self.propose(request_id, data)
            except Exception as exc:
                out.set_exception(exc)
                return
            asyncio.futures._chain_future(fut, out)  # noqa: SLF001 - stdlib's own bridge

        self.loop.call_soon_threadsafe(submit)
        return out

    def propose_conf_change(self, cc: raft_pb2.ConfChange) -> asyncio.Future:
        """Loop thread: propose a membership change (cc.id set by the caller); the future
        resolves to the member list once the change is applied here."""
        fut = self.loop.create_future()
        rid = cc.id
        self._futures[rid] = fut

        def proposed(f: asyncio.Future) -> None:
            exc = None if f.cancelled() else f.exception()
            if exc is not None:
                self._futures.pop(rid, None)
                if not fut.done():
                    fut.set_exception(errors.NO_LEADER if isinstance(exc, ProposalDroppedError)
                                      else errors.EtcdError(errors.TIMEOUT.code, str(exc)))

        self.runner.propose_conf_change(cc).add_done_callback(proposed)
        return fut

    def read_index(self) -> asyncio.Future:
        """Loop thread: resolves once this member applied a read index confirmed by a quorum."""
        if self._stopped:
            raise errors.STOPPED
        fut = self.loop.create_future()
        self._reads.append(fut)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._drain)
        return fut

    def _drain(self) -> None:
        """The reads of one loop iteration start one read-index round."""
        self._scheduled = False
        reads, self._reads = self._reads, []
        if reads:
            self._read_rounds.add(reads)

    def _dropped(self, rids: list[int], exc: Exception) -> None:
        err = errors.NO_LEADER if isinstance(exc, ProposalDroppedError) else errors.STOPPED
        self.proposals_failed += len(rids)
        for rid in rids:
            fut = self._futures.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)

    # -------------------------------------------------------------- apply

    def _applied(self, result: BatchResult) -> None:
        """Loop thread, after a batch is durable in the state db: what prepares the answers,
        the proposers (a `Proposal`'s answer is written here), then the listeners."""
        for fn in self._preparers:
            try:
                fn(result)
            except Exception:
                log.exception("event=listener_failed")
        try:
            resolve_proposals(self._futures, result.results)
        finally:
            for fn in self._listeners:
                try:
                    fn(result)
                except Exception:
                    log.exception("event=listener_failed")


    # ----------------------------------------------------------- snapshots

    def catch_up_entries(self) -> int:
        """Log entries kept behind a snapshot for slow followers (etcd keeps 5,000)."""
        return max(1, min(5000, self.snapshot_count))

    def snapshot_due(self) -> bool:
        """Whether --snapshot-count entries were applied since the last snapshot."""
        return (self.snapshot_count > 0 and not self._snapshotting
                and self.snapshot_dir is not None
                and self.applier.applied_index - self._snap_index >= self.snapshot_count)

    async def maybe_snapshot(self) -> None:
        """After --snapshot-count applied entries: snapshot the state db, compact the log."""
        if not self.snapshot_due():
            return
        self._snapshotting = True
        try:
            await self._snapshot(compact_all=False)
        except SnapshotOutOfDateError as exc:
            # a snapshot from the leader was installed while ours was copied: nothing
            # lost (etcd returns quietly on raft.ErrSnapOutOfDate); the next prune takes
            # the file
            log.info("event=snapshot_skipped reason=%s", exc)
        except Exception:
            log.exception("event=snapshot_failed")
        finally:
            self._snapshotting = False

    async def force_snapshot(self) -> None:
        """Snapshot now and compact the whole log (state that no log entry holds, such
        as an imported etcd backend, must reach new members through a snapshot)."""
        if self.applier.applied_index > self._snap_index:
            await self._snapshot(compact_all=True)

    async def _snapshot(self, compact_all: bool) -> None:
        """Snapshot the state as applied now. Only the commit and the pinning of a read
        view stop the apply stage; the copy, which takes as long as the database is
        large (37 MB: ~40 ms), is made from that view on the snapshot thread while
        entries go on being applied (etcd's snapshot does not stop its apply loop
        either)."""
        pin = await self.loop.run_in_executor(self._executor, self._pin_snapshot, compact_all)
        try:
            if self._stopped:  # stop() may have let the snapshot thread go already
                raise asyncio.CancelledError
            task = self.loop.run_in_executor(self._snapshot_executor, self._write_snapshot, pin)
        except BaseException:
            pin.view.add_done_callback(_abort_view)
            self.snapshot_lock.release()
            raise
        self._snapshot_task = task
        await task

    def _pin_snapshot(self, compact_all: bool) -> _PinnedSnapshot:
        """Apply thread: commit what is applied, durably, and pin a read view of it, on
        the state db's commit thread while applying goes on (Backend.pin_durable)."""
        self.snapshot_lock.acquire()  # released by _write_snapshot, which follows
        try:
            index = self.applier.applied_index
            term = self.storage.term(index)
            conf = self.applier.conf_state()
            began = time.monotonic()
            view = self.backend.pin_durable()  # exactly the state as of `index`
        except BaseException:
            self.snapshot_lock.release()
            raise
        return _PinnedSnapshot(view, index, term, conf, compact_all, time.monotonic() - began)

    def _write_snapshot(self, pin: _PinnedSnapshot) -> None:
        """Snapshot thread: copy the pinned view to a snapshot file, durable first, then
        record it in the log and compact the log behind it."""
        index, term = pin.index, pin.term
        from kubekv_server.backend import state_snapshot
        from kubekv_server.peer.snapshot_files import remove_older_snapshots

        began = time.monotonic()
        view = None
        try:
            view = pin.view.result()
            landed = time.monotonic() - began
            path = state_snapshot.create(self.backend, self.snapshot_dir, term, index,
                                         txn=view)
            copied = time.monotonic() - began
            view.abort()
            view = None
            self.storage.create_snapshot(index, pin.conf, state_snapshot.handle(path))
            compact_to = index if pin.compact_all else index - self.catch_up_entries()
            if compact_to > self.storage.first_index():
                self.storage.compact(compact_to)
            state_snapshot.prune(self.snapshot_dir, keep=path)
            # received snapshots below our own are stale (Raft refuses them now); a newer
            # one may be waiting for install and must stay (a power-loss run found it
            # deleted)
            remove_older_snapshots(self.snapshot_dir, index)
            self._snap_index = index
        finally:
            if view is not None:
                view.abort()
            self.snapshot_lock.release()
        log.info("event=snapshot_created index=%d term=%d compacted_to=%d file=%s "
                 "apply_paused_ms=%.1f commit_ms=%.1f copy_ms=%.1f", index, term,
                 max(compact_to, 0), path, pin.paused * 1e3, landed * 1e3,
                 (copied - landed) * 1e3)

    def _install_alone(self, path: str) -> None:
        """Apply thread: install a received snapshot once no snapshot of ours copies."""
        from kubekv_server.backend import state_snapshot

        with self.snapshot_lock:
            state_snapshot.install(self.backend, path)

    def snapshot_reader(self, snapshot: raft_pb2.Snapshot):
        """The transport's SnapshotSource: our snapshot file, or one received and kept."""
        from kubekv_server.backend import state_snapshot
        from kubekv_server.peer.snapshot_files import received_snapshot

        path = state_snapshot.path_of(snapshot.data)
        if path is None:
            try:
                path = received_snapshot(snapshot).path
            except Exception:
                return None
        return open(path, "rb") if path and os.path.exists(path) else None

    async def install_snapshot(self, snapshot: raft_pb2.Snapshot) -> None:
        """A snapshot from the leader: swap its state in, then let the member reload."""
        from kubekv_server.peer.snapshot_files import received_snapshot, remove_older_snapshots

        path = received_snapshot(snapshot).path
        await self.loop.run_in_executor(self._executor, self._install_alone, path)
        self.applier.reload()
        self._snap_index = snapshot.metadata.index
        if self.snapshot_dir is not None:
            remove_older_snapshots(self.snapshot_dir, snapshot.metadata.index)
        for fn in self._installed:
            try:
                fn()
            except Exception:
                log.exception("event=snapshot_listener_failed")


class _ApplierAdapter:
    """What the Runner hands each batch of committed entries to."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    def apply(self, entries: list[raft_pb2.Entry]) -> BatchResult:
        """Apply thread: one batch into the state db's apply txn; nothing else runs here."""
        return self.node.applier.apply(entries)

    def apply_inline(self, entries: list[raft_pb2.Entry]) -> BatchResult | None:
        """Loop, the apply thread idle: the batch applied here if nothing in it waits for
        another thread, else None (`Applier.apply_inline`)."""
        return self.node.applier.apply_inline(entries)

    def on_applied(self, entries: list[raft_pb2.Entry], result: BatchResult) -> None:
        """Loop: listeners and proposers learn of the batch; maybe time for a snapshot."""
        node = self.node
        node._applied(result)
        if node.snapshot_due():
            node.loop.create_task(node.maybe_snapshot())

    async def apply_snapshot(self, snapshot: raft_pb2.Snapshot) -> None:
        await self.node.install_snapshot(snapshot)
