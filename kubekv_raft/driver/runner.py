"""Runner: drives a RawNode from asyncio. Owns the clock, persists, sends, applies, advances.

It decides nothing Raft decides; it only moves data between the core and the outside,
as a pipeline of two stages that overlap:

    inputs (ticks, peer messages, proposals, reads) -> RawNode -> Ready N
    log stage:   [leader: send] -> persist N (log thread, one fsync) -> [others: send]
                 -> (still on the log thread) hand N's committed entries, and those N's
                    own write commits (a lone voter), to the apply stage
                 -> back on the loop: advance -> Ready N+1
    apply stage: apply everything handed over meanwhile, as one batch (apply thread)
                 -> on the loop: the applier's on_applied, proposals and read waits
                 (a few entries committed by a Ready with nothing to write, the apply
                 thread idle: the loop applies them itself, `_apply_inline`; a few a
                 write hands over with no input waiting, the apply thread idle: the log
                 thread applies them itself, `_apply_here`)

So persisting Ready N+1 (and replicating it) runs while Ready N's entries are applied,
and a committed entry reaches the apply thread straight from the write that made it
durable, without a loop cycle in between. When no input waits for the loop (one Put in
flight), the log thread leaves the write's answer to the apply stage, so the loop wakes
once per Ready (after the apply, answering proposers first, then advancing) instead of
twice, and its Ready cycle does not compete with the apply for the GIL; any input
arriving meanwhile takes the answer back at once (`_poke`), so the log stage never
waits for an apply while there is work for it. Raft's rules hold: an entry is applied only
after the Ready that committed it is persisted (so the state never runs ahead of the
local log and hard state); a follower's messages (acks, votes) leave only after its
write; the leader sends its appends before its own fsync, and counts its own copy only
once `advance` reports it durable (`Raft.persisted`, as etcd-io/raft's self-ack). On a
lone voter that copy is the quorum, so the write of Ready N commits N's entries: the
core says so beforehand (`RawNode.commit_on_persist`, what `advance` will commit) and
the log thread hands them over after the write, whose hard state carries the commit
they reach; after the advance the core is told both were done
(`RawNode.accept_handed`), so no Ready follows only to list them again and record
it. A batch holding a membership change is handed over only once Raft committed it,
and applied before the next Ready (etcd's waitApply), so Raft never runs with a stale
configuration. A hard state whose only change is the commit
index needs no fsync (etcd's MustSync): it is written with the next synced write, after
a tick without work, or at stop; a restart that finds the state applied past it
re-learns the commit from the log (`initial_applied`).

Proposals and reads arriving from many coroutines while a Ready is being handled are
batched into the next cycle: one MsgProp for all proposals, one read-index round for
all reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import operator
import struct
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Any, Protocol

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import ProposalDroppedError, RaftError
from kubekv_raft.core.raft import Config
from kubekv_raft.core.raw_node import RawNode, Ready
from kubekv_raft.driver.commit_notices import NOTICE_DELAY, CommitNotices
from kubekv_raft.driver.worker import NOT_RUN, ThreadWorker

log = logging.getLogger(__name__)

_CONF_CHANGES = frozenset((pb.EntryConfChange, pb.EntryConfChangeV2))
_TYPE = operator.attrgetter("type")
# what the transport reports about a peer: local messages, stepped past RawNode's check
_TRANSPORT_REPORTS = frozenset((pb.MsgSnapStatus, pb.MsgUnreachable))
_MSGPROP = pb.MsgProp


def _has_conf_change(entries: list[pb.Entry]) -> bool:
    """Whether a membership change is among `entries` (a C loop, not a generator)."""
    return not _CONF_CHANGES.isdisjoint(map(_TYPE, entries))


__all__ = ["Transport", "Applier", "Runner", "WritableStorage", "MAX_PEER_INBOX",
           "initial_applied"]

# A batch of at most this many committed entries, from a Ready with nothing to write
# (a leader's quorum of acks, a follower's commit notice), is applied on the loop when
# the apply thread is idle and the applier can (`apply_inline`): at 1 write in flight
# on three members the hand-off to the apply thread and its answer took ~0.45 ms of a
# 1.7 ms Txn (a woken thread waits for a core the other members hold). Larger batches
# keep the apply stage beside the loop's network work. The same bound holds for a batch
# the log thread applies itself after its write (`_apply_here`): a write that arrives
# meanwhile waits for it.
INLINE_APPLY_ENTRIES = 8

# Peer messages waiting for the next Ready cycle; beyond this they are dropped (Raft
# retries), as etcd's rafthttp drops when its receive buffer (recvBufSize 4096) is full.
MAX_PEER_INBOX = 4096


class Transport(Protocol):
    """Delivers messages to peers. Must not block; may drop (Raft retries)."""

    def send(self, messages: list[pb.Message]) -> None:
        """Queue messages for delivery. For MsgSnap, call runner.report_snapshot when done."""
        ...


class Applier(Protocol):
    """Applies committed entries to the state machine, in order, exactly once per index.

    A plain `apply` runs on the apply stage's thread and may also have
    `on_applied(entries, result)`, called on the event loop with what `apply`
    returned, before proposers and read waits learn of the batch, and
    `apply_inline(entries)`: the same on the event loop, while the apply thread is idle,
    if it can apply them there without waiting for anything; None (and nothing done) if
    it cannot."""

    def apply(self, entries: list[pb.Entry]) -> Any:
        """Apply a batch; may be `async def` (awaited) or plain (run in the apply thread)."""
        ...


class WritableStorage(Protocol):
    """The write side of storage the runner uses (LMDBStorage, MemoryStorage)."""

    def append(self, entries: list[pb.Entry], hard_state: pb.HardState | None = None) -> None:
        """Persist entries and hard state in one durable write."""
        ...

    def apply_snapshot(self, snapshot: pb.Snapshot) -> None:
        """Replace the log by a snapshot."""
        ...


def initial_applied(state_applied: int, hard_state: pb.HardState) -> int:
    """The applied index to start Raft from: the state's, but never past the persisted
    commit index (commit-only hard states are written without an fsync, so a crash may
    leave the state applied past it; Raft hands those entries out again once it re-learns
    the commit, and the application skips what it already has, as etcd's consistent index)."""
    return min(state_applied, hard_state.commit)


def _resolve(fut: asyncio.Future, exc: BaseException | None) -> None:
    if not fut.done():
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(None)


def default_request_id(data: bytes) -> bytes:
    """The default hook: the whole entry payload identifies the request."""
    return data


class Runner:
    """One member's event loop around a RawNode.

    `request_id_of(entry_data)` extracts the caller-chosen request id embedded in a
    proposal; `propose(data, request_id)` resolves when an applied entry carries that id.
    """

    def __init__(
        self,
        config: Config,
        storage: WritableStorage,
        transport: Transport,
        applier: Applier,
        *,
        tick_interval: float = 0.1,
        request_id_of: Callable[[bytes], bytes] = default_request_id,
        executor: Executor | None = None,
        apply_executor: Executor | None = None,
        notice_delay: float = NOTICE_DELAY,
    ) -> None:
        self.node = RawNode(config)
        self.id = config.id
        self.storage = storage
        self.transport = transport
        self.applier = applier
        self.tick_interval = tick_interval
        self.request_id_of = request_id_of
        self.executor = executor  # the log stage's thread: persisting
        # a plain (not async) applier runs here; one thread of our own if none is given
        self._own_apply_worker = apply_executor is None and not inspect.iscoroutinefunction(
            applier.apply)
        if self._own_apply_worker:
            apply_executor = ThreadWorker(f"raft-apply-{config.id:x}")
        self.apply_executor = apply_executor
        self.applied = self.node.raft.raft_log.applied  # applied by the applier
        self._apply_is_async = inspect.iscoroutinefunction(applier.apply)
        # the applier's apply_inline, if the loop may use it (a plain applier on a worker)
        self._inline = getattr(applier, "apply_inline", None) \
            if not self._apply_is_async and isinstance(apply_executor, ThreadWorker) else None
        self._on_applied = getattr(applier, "on_applied", None)
        # the loop start() ran on: what the loop's own paths use (asyncio.get_running_loop
        # is a getpid(2) per call in CPython 3.11; those paths ran ~3 per Put)
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._inbox: list[pb.Message] = []
        self._peer_inbox = 0  # peer messages in _inbox
        self._inbox_full_logged = False
        self.peer_messages_dropped = 0
        self._ticks = 0
        self._proposals: list[tuple[bytes, Hashable]] = []
        self._conf_changes: list[tuple[pb.ConfChange | pb.ConfChangeV2, asyncio.Future]] = []
        self._waiting: dict[bytes, asyncio.Future] = {}
        self._reads: list[asyncio.Future] = []
        self._read_ctx = 0
        self._read_waiters: dict[bytes, list[asyncio.Future]] = {}
        self._apply_waiters: list[tuple[int, asyncio.Future]] = []
        # the apply stage. A plain applier: entries handed over (by the log thread after
        # the write that committed them, or by the loop) wait in _handoff for the apply
        # thread, which takes them all as one batch. An async applier: a task on the loop.
        self._handed = self.applied  # the last index handed to the apply stage
        self._handoff: list[pb.Entry] = []
        self._handoff_next = self.applied + 1  # the index the next hand-over starts at
        self._handoff_notify: list[asyncio.Future] = []  # answered once the batch applied
        # a written Ready's future the log thread left to the apply stage to answer: the
        # loop had nothing else to do; input arriving meanwhile answers it (`_poke`)
        self._parked: asyncio.Future | None = None
        self._handoff_lock = threading.Lock()
        self._apply_lock = threading.Lock()  # one batch at a time, in order (any executor)
        self._apply_queue: list[tuple[list[pb.Entry], asyncio.Future]] = []
        self._apply_task: asyncio.Task | None = None
        self._apply_failed: BaseException | None = None
        self._log_failed: BaseException | None = None
        # hand-overs the log thread still owes (a commit record's): the loop's own must
        # wait behind them. Each counter has one writer (the loop posts, the log thread
        # completes), so no lock.
        self._log_hands_posted = 0
        self._log_hands_done = 0
        # a commit-only hard state not yet written (it rides with the next synced write)
        self._unsaved_hard_state: pb.HardState | None = None
        # the hard state a write carried with the entries it committed, and those entries
        # (handed over after it): the core is told after its advance (`accept_handed`)
        self._accepted: tuple[pb.HardState, list[pb.Entry]] | None = None
        self._note_failed_logged = False
        self._ticked = False
        # the loop's wake-up: a flag, and the future the loop sleeps on while it is clear
        # (an asyncio.Event without its Python-level set/wait/clear calls: a poke per
        # input and a wake per cycle)
        self._woken = False
        self._waiter: asyncio.Future | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopped = False
        # a leader's commit notices held back (commit_notices), the term they belong to,
        # and the timer that sends those held for their whole delay
        self._notices = CommitNotices(notice_delay)
        self._notices_term = 0
        self._notice_timer: asyncio.TimerHandle | None = None
        # Called with (request ids, error) when proposals made through submit() are refused.
        self.on_dropped: Callable[[list[Hashable], Exception], None] | None = None
        # Called on the loop with the error that stopped the runner (a failed log write,
        # apply or hand-over, a broken Raft invariant): nothing is persisted, applied or
        # answered after it, so its owner must stop too (etcd's raft loop exits the
        # process: lg.Fatal on a failed WAL save, a panic on a broken invariant).
        self.on_failure: Callable[[BaseException], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the clock and the Ready loop."""
        self._loop_ref = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._clock(), name=f"raft-clock-{self.id}"),
            asyncio.create_task(self._loop(), name=f"raft-loop-{self.id}"),
        ]

    async def stop(self) -> None:
        """Stop the tasks, write a commit index not yet written; pending futures fail
        with ProposalDroppedError."""
        self._stopped = True
        if self._notice_timer is not None:
            self._notice_timer.cancel()
            self._notice_timer = None
        tasks = [*self._tasks, *([self._apply_task] if self._apply_task is not None else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await self._save_hard_state()
        if self._own_apply_worker:
            self.apply_executor.shutdown(wait=False)
        err = ProposalDroppedError("runner stopped")
        queued = [f for _, f in self._apply_queue]
        self._apply_queue = []
        for f in [*self._waiting.values(), *self._reads, *(f for _, f in self._apply_waiters),
                  *queued]:
            if not f.done():
                f.set_exception(err)
                f.exception()  # nobody may be waiting: mark it read

    # -- inputs ------------------------------------------------------------------------------
    def step(self, m: pb.Message) -> bool:
        """A message arrived from a peer (call from the event loop). False: dropped,
        MAX_PEER_INBOX messages already wait for the loop (a flooding or stalled peer)."""
        if self._peer_inbox >= MAX_PEER_INBOX:
            self.peer_messages_dropped += 1
            if not self._inbox_full_logged:  # once per backlog
                self._inbox_full_logged = True
                log.warning("event=raft_inbox_full member=%x limit=%d dropping peer messages",
                            self.id, MAX_PEER_INBOX)
            return False
        self._peer_inbox += 1
        self._inbox.append(m)
        self._poke()
        return True

    def report_snapshot(self, to: int, ok: bool) -> None:
        """The transport finished (or failed) sending a snapshot to `to`."""
        self._inbox.append(pb.Message(type=pb.MsgSnapStatus, from_=to, reject=not ok))
        self._poke()

    def report_unreachable(self, to: int) -> None:
        """The transport could not reach `to`."""
        self._inbox.append(pb.Message(type=pb.MsgUnreachable, from_=to))
        self._poke()

    def propose(self, data: bytes, request_id: bytes | None = None) -> asyncio.Future:
        """Propose data; the future resolves to its log index once applied locally.

        request_id must equal request_id_of(data) (default: data itself) and be unique
        among proposals in flight. Fails with ProposalDroppedError if Raft refuses it;
        never resolves if the entry is lost to a leader change (callers use timeouts).
        """
        rid = request_id if request_id is not None else self.request_id_of(data)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._proposals.append((data, rid))
        self._poke()
        return fut

    def submit(self, items: list[tuple[bytes, Hashable]]) -> None:
        """Propose (data, request_id) pairs without a future each: the caller learns the
        outcome from its applier, and of refusals through `on_dropped(request_ids, error)`
        (request_id: whatever the caller keys its proposers by)."""
        self._proposals.extend(items)
        self._poke()

    def propose_conf_change(self, cc: pb.ConfChange | pb.ConfChangeV2) -> asyncio.Future:
        """Propose a membership change; resolves once it was proposed (not applied)."""
        fut = asyncio.get_running_loop().create_future()
        self._conf_changes.append((cc, fut))
        self._poke()
        return fut

    def read_index(self) -> asyncio.Future:
        """Linearizable read barrier: resolves to an index once applied >= it.

        Every read waiting in one loop iteration shares one read-index request.
        """
        fut = asyncio.get_running_loop().create_future()
        self._reads.append(fut)
        self._poke()
        return fut

    def campaign(self) -> None:
        """Start an election now (a lone voter need not wait for an election timeout)."""
        self.node.campaign()
        self._poke()

    def advance_ticks(self, ticks: int) -> None:
        """Let `ticks` ticks pass at once (etcd's advanceTicks: a starting member that
        reached its peers need not sit out a whole election timeout first)."""
        self._ticks += max(0, ticks)
        self._poke()

    def transfer_leadership(self, to: int) -> None:
        """Ask the leader to hand over to `to`."""
        self.node.transfer_leadership(to)
        self._poke()

    def _poke(self) -> None:
        """Input arrived: wake the loop, and take back a write's answer left to the apply
        stage (the write is done; the loop need not wait for the apply to go on)."""
        self._woken = True  # _wake_loop, inline: once per input
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)
        parked = self._parked
        if parked is not None:
            self._parked = None
            if not parked.done():
                parked.set_result(None)

    def _wake_loop(self) -> None:
        """Make the loop run a cycle (now, or once it finishes the one under way)."""
        self._woken = True
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _has_input(self) -> bool:
        """Whether input waits for the loop (read from the log thread: a hint)."""
        return bool(self._proposals or self._inbox or self._conf_changes or self._reads
                    or self._ticks)

    # -- the loop ----------------------------------------------------------------------------
    async def _clock(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            self._ticks += 1
            self._poke()

    async def _loop(self) -> None:
        loop = self._loop_ref
        while not self._stopped:
            if not self._woken:
                w = self._waiter = loop.create_future()
                await w
            self._woken = False
            try:
                if self._apply_failed is not None:
                    raise self._apply_failed
                if self._log_failed is not None:
                    raise self._log_failed
                self._feed()
                while self.node.has_ready():
                    await self._handle(self.node.ready())
                    self.node.advance()
                    if self._accepted is not None:
                        hs, handed = self._accepted
                        self._accepted = None
                        self.node.accept_handed(hs, handed)
                    self._feed()  # inputs that arrived meanwhile join the next Ready
                if self._ticked and self._unsaved_hard_state is not None:
                    await self._save_hard_state()  # idle for a tick: write the commit index
            except Exception as exc:  # a failed disk, or a bug: make it loud and stop
                log.exception("raft runner %x failed", self.id)
                if self.on_failure is not None and not self._stopped:  # (not a stop's)
                    self.on_failure(exc)
                raise

    def _feed(self) -> None:
        """The inputs that arrived since the last call, into the core. Each kind is looked
        at only when there is some: the call after each Ready cycle mostly finds none
        (no lists swapped, no counters reset: ~4 calls per Put on every member)."""
        node = self.node
        inbox = self._inbox
        if inbox:
            self._inbox = []
            self._peer_inbox = 0  # (both stay as they are while the inbox is empty)
            self._inbox_full_logged = False
            for m in inbox:
                try:
                    if m.type in _TRANSPORT_REPORTS:
                        node.raft.step(m)
                    else:
                        node.step(m)
                        if m.type == _MSGPROP and node.is_leader:
                            # its client waits for the commit: no notice to it held back
                            self._leader_notices().proposed(
                                m.from_, node.raft.raft_log.last_index())
                except RaftError as e:
                    log.debug("dropped %s from %x: %s", pb.MessageType.Name(m.type), m.from_, e)
        ticks = self._ticks
        self._ticked = ticks > 0
        if ticks:
            self._ticks = 0
            for _ in range(ticks):
                node.tick()
        if self._proposals:
            props, self._proposals = self._proposals, []
            try:
                node.propose_batch([d for d, _ in props])
            except ProposalDroppedError as e:
                unclaimed = []
                for _, rid in props:
                    fut = self._waiting.pop(rid, None)
                    if fut is None:
                        unclaimed.append(rid)
                    elif not fut.done():
                        fut.set_exception(ProposalDroppedError(str(e)))
                if unclaimed and self.on_dropped is not None:
                    self.on_dropped(unclaimed, e)
        if self._conf_changes:
            ccs, self._conf_changes = self._conf_changes, []
            for cc, fut in ccs:
                try:
                    node.propose_conf_change(cc)
                    fut.set_result(None)
                except RaftError as e:
                    fut.set_exception(e)
        if self._reads:
            reads, self._reads = self._reads, []
            self._read_ctx += 1
            ctx = struct.pack(">QQ", self.id, self._read_ctx)
            self._read_waiters[ctx] = reads
            node.read_index(ctx)

    async def _handle(self, rd: Ready) -> None:
        """The log stage for one Ready; its committed entries go on to the apply stage."""
        loop = self._loop_ref
        if rd.snapshot is not None:
            await self._applies_done()  # the snapshot replaces the state: nothing may apply
        # etcd's raft loop: a leader's appends leave with its own write, not after it (it
        # counts its own copy only once persisted): here just after the write is posted, so
        # the log thread is running before the followers the appends wake take the cores.
        # Anyone else's messages (acks, votes) leave only after the write.
        lead = self.node.is_leader
        msgs = rd.messages
        if lead and msgs:
            msgs = self._leader_notices().filter(
                msgs, self.node.raft.prs.progress, loop.time(),
                not (rd.committed_entries and _has_conf_change(rd.committed_entries)))
            if self._notices and self._notice_timer is None:
                self._arm_notice_timer()
        hs = rd.hard_state
        write = rd.snapshot is not None or bool(rd.entries) or (hs is not None and rd.must_sync)
        if lead and msgs and not write:
            self.transport.send(msgs)
        # committed entries not handed over yet (a lone voter's went right after their write)
        ents = self._unhanded(rd.committed_entries)
        # what a leader's log thread hands to the apply thread right after this Ready's
        # write: the committed entries, and the entries the write itself commits (a lone
        # voter's own copy is its quorum), so neither waits for a loop cycle (a plain
        # applier only). A follower's wait for the loop instead: its ack leaves first,
        # since the leader waits for that, not for the follower's apply.
        hand: list[pb.Entry] = []
        by_write: list[pb.Entry] = []
        if lead and write and rd.snapshot is None and not self._apply_is_async:
            if ents:
                self._handed = ents[-1].index
            by_write = self._committed_by_write(rd)
            hand = ents + by_write
            if hand:
                self._handed = hand[-1].index
        if write:
            if hs is None:
                hs = self._unsaved_hard_state
            self._unsaved_hard_state = None
            if by_write:
                # the commit this write reaches is written with it (after its entries, in
                # one fsync), so no Ready cycle follows only to record it (`accept_handed`)
                raft = self.node.raft
                hs = pb.HardState(term=raft.term, vote=raft.vote, commit=by_write[-1].index)
                self._accepted = (hs, by_write)
            if hand and isinstance(self.executor, ThreadWorker):
                written = loop.create_future()
                self.executor.post(self._write_ready, rd.snapshot, rd.entries, hs, hand,
                                   written)
            else:
                written = self._in_log_thread(self._write_ready, rd.snapshot, rd.entries, hs,
                                              hand, None)
            if lead and msgs:  # with its write, not after it
                self.transport.send(msgs)
            await written
        elif hs is not None:
            self._unsaved_hard_state = hs  # commit index only: no fsync needed (MustSync)
            note = getattr(self.storage, "note_commit", None)
            # but written, as etcd saves every HardState, before its entries go to the
            # apply thread, so a member killed -9 comes back knowing the commit of all it
            # applied (the state db commits in batches; --force-new-cluster keeps up to
            # it): here if the log is idle (a write(2)), else on the log thread after
            # the write under way, which then hands the entries over
            if note is not None and not note(hs, False) and \
                    isinstance(self.executor, ThreadWorker):
                handed = ents if ents and rd.snapshot is None and not self._apply_is_async \
                    else []
                if handed:
                    self._log_hands_posted += 1
                self.executor.post(self._note_commit, note, hs, handed)
                hand = handed
        if not lead and msgs:
            self.transport.send(msgs)
        for rs in rd.read_states:
            for fut in self._read_waiters.pop(rs.request_ctx, []):
                self._apply_waiters.append((rs.index, fut))
        if rd.snapshot is not None:
            # the application installs the snapshot's state before later entries apply
            install = getattr(self.applier, "apply_snapshot", None)
            if install is not None:
                if inspect.iscoroutinefunction(install):
                    await install(rd.snapshot)
                else:
                    await loop.run_in_executor(self.apply_executor, install, rd.snapshot)
            self.applied = max(self.applied, rd.snapshot.metadata.index)
            self._handed = max(self._handed, self.applied)
            self._handoff_next = self._handed + 1
        if ents:
            self._handed = max(self._handed, ents[-1].index)
            if self._apply_is_async:
                applied = self._submit_apply(ents)
            elif not hand and not self._apply_inline(ents):
                # nothing written, or a snapshot installed first: hand them now
                self._hand_in_order(ents)
            if _has_conf_change(ents):
                # etcd's waitApply: Raft must see the new configuration first
                await (applied if self._apply_is_async
                       else self._applied_through(ents[-1].index))
        if self._apply_waiters:
            self._release_read_waits()

    def _leader_notices(self) -> CommitNotices:
        """Loop, on the leader: its held commit notices, sent and forgotten when its term
        changes."""
        term = self.node.raft.term
        if term != self._notices_term:
            stale = self._notices.take_all()
            if stale:
                self.transport.send(stale)
            self._notices_term = term
        return self._notices

    def _arm_notice_timer(self) -> None:
        when = self._notices.next_due()
        if when is not None:
            # not before the clock's next millisecond (uvloop's time is in milliseconds): a
            # timer that fires early and finds nothing due must not spin until it is
            loop = self._loop_ref
            self._notice_timer = loop.call_at(max(when, loop.time() + 0.001),
                                              self._send_due_notices)

    def _send_due_notices(self) -> None:
        """Loop timer: send the commit notices held for their whole delay."""
        self._notice_timer = None
        if self._stopped:
            return
        due = self._notices.due(self._loop_ref.time())  # (a deposed leader's too)
        if due:
            self.transport.send(due)
        self._arm_notice_timer()

    def _unhanded(self, committed: list[pb.Entry]) -> list[pb.Entry]:
        """The part of a Ready's committed entries not handed to the apply stage yet."""
        if not committed or committed[-1].index <= self._handed:
            return []
        first = committed[0].index
        return committed if first > self._handed else committed[self._handed - first + 1:]

    def _committed_by_write(self, rd: Ready) -> list[pb.Entry]:
        """rd's entries that its own write commits (Raft's answer, `commit_on_persist`),
        when they follow what was handed over. None from a batch with a membership
        change: Raft must have committed it (advance) before it applies (etcd's
        waitApply)."""
        if not rd.entries or rd.entries[0].index > self._handed + 1:
            return []  # nothing written, or committed entries already in the log come first
        first = rd.entries[0].index
        commit = self.node.commit_on_persist(rd)
        if commit <= self._handed or _has_conf_change(rd.entries):
            return []
        return rd.entries[self._handed + 1 - first:commit - first + 1]

    def _write_ready(self, snapshot: pb.Snapshot | None, entries: list[pb.Entry],
                     hard_state: pb.HardState | None, hand: list[pb.Entry],
                     written: asyncio.Future | None) -> None:
        """Log-stage thread: persist a Ready, then hand what is committed and now durable
        straight to the apply thread (no round trip through the loop).

        `written` (None: the caller awaits this call) is the loop's answer. If no input
        waits for the loop, the apply stage answers it together with the batch: one
        wake-up of the loop instead of two, and the loop's next Ready cycle does not
        compete with the apply for the GIL and the CPU (a Put at 1 in flight). Input
        arriving meanwhile takes it back at once (`_poke`)."""
        here = False
        try:
            self._persist(snapshot, entries, hard_state)
            # the entries join the apply stage's queue before the loop can have the answer
            # (`_poke`): whatever the loop hands over next comes after them
            if hand:
                # a small batch with no input waiting for the loop (so for the log stage):
                # applied on this thread if the apply thread is idle (`_apply_here`)
                here = written is not None and len(hand) <= INLINE_APPLY_ENTRIES \
                    and not self._has_input() and isinstance(self.apply_executor, ThreadWorker)
                self._join_apply_queue(hand, written)
                if not here:
                    self._start_apply()
        except BaseException as exc:
            if written is None:
                raise
            self._answer(written, exc)
            return
        if written is not None and not hand:
            self._answer(written, None)
        elif written is not None:
            self._parked = written
            if self._has_input():  # else a `_poke` from now on takes it back
                self._parked = None
                self._answer(written, None)
        if here:
            self._apply_here(written)

    def _apply_here(self, written: asyncio.Future) -> None:
        """Log thread, after a write, no input waiting: apply the queued batch here, in
        the idle apply thread's stead (else hand it to that thread). One thread wake-up
        fewer per write at 1 in flight on one member: ~9 % less CPU per Put, ~4 % more
        Puts (bench/profile_server.md, session 21). Input arriving meanwhile takes the
        write's answer back (`_poke`); its write then waits for this batch."""
        try:
            if self.apply_executor.run_if_idle(self._apply_batch) is NOT_RUN:
                self._start_apply()
        except BaseException as exc:  # noqa: BLE001 - the runner stops on it, loudly
            self._answer(written, exc)  # the loop awaits it (if no input took it back)
            self._call_loop(self._log_stage_failed, exc)

    def _note_commit(self, note: Callable[[pb.HardState], None], hs: pb.HardState,
                     entries: list[pb.Entry]) -> None:
        """Log thread: write a commit-only hard state (no fsync), then hand the entries it
        commits to the apply stage."""
        try:
            note(hs)
        except OSError as exc:  # as before the record existed: the idle tick syncs it
            if not self._note_failed_logged:
                self._note_failed_logged = True
                log.warning("event=commit_record_failed error=%s", exc)
        if entries:
            self._hand_from_log_thread(entries)

    def _hand_in_order(self, entries: list[pb.Entry]) -> None:
        """Loop: hand committed entries to the apply stage behind any hand-over the log
        thread still owes (through it, in order), else at once. (A commit record posted
        to a busy log thread owes one; the next commit-only Ready may find the log idle,
        write its record inline and must still not hand later entries first.)"""
        if self._log_hands_posted == self._log_hands_done:
            self._hand_to_apply(entries)
            return
        self._log_hands_posted += 1
        self.executor.post(self._hand_from_log_thread, entries)

    def _hand_from_log_thread(self, entries: list[pb.Entry]) -> None:
        """Log thread: a hand-over the loop queued behind the thread's earlier ones."""
        try:
            self._hand_to_apply(entries)
        except BaseException as exc:  # noqa: BLE001 - the runner stops on it, loudly
            self._call_loop(self._log_stage_failed, exc)
        finally:
            self._log_hands_done += 1

    def _log_stage_failed(self, exc: BaseException) -> None:
        """Loop: a hand-over failed on the log thread: stop the runner, loudly."""
        log.error("raft runner %x failed on the log thread", self.id, exc_info=exc)
        self._log_failed = exc
        self._wake_loop()

    def _call_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Any thread but the loop's: fn(*args) on the loop (nothing if it is closed)."""
        try:
            self._loop_ref.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _answer(self, fut: asyncio.Future, exc: BaseException | None) -> None:
        """Any thread but the loop's: resolve a loop future."""
        try:
            self._loop_ref.call_soon_threadsafe(_resolve, fut, exc)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _persist(self, snapshot: pb.Snapshot | None, entries: list[pb.Entry],
                 hard_state: pb.HardState | None) -> None:
        """Log-stage thread: the snapshot, then entries and hard state in one durable write."""
        if snapshot is not None:
            self.storage.apply_snapshot(snapshot)
        if entries or hard_state is not None:
            self.storage.append(entries, hard_state)

    async def _save_hard_state(self) -> None:
        """Write a commit-only hard state that no synced write has carried yet."""
        hs, self._unsaved_hard_state = self._unsaved_hard_state, None
        if hs is not None:
            await self._in_log_thread(self.storage.append, [], hs)

    def _in_log_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """fn(*args) on the log stage's thread (a ThreadWorker answers without chaining)."""
        loop = self._loop_ref
        ex = self.executor
        if isinstance(ex, ThreadWorker):
            return ex.call(loop, fn, *args)
        return loop.run_in_executor(ex, fn, *args)

    # -- the apply stage -------------------------------------------------------------------
    def _hand_to_apply(self, entries: list[pb.Entry],
                       notify: asyncio.Future | None = None) -> None:
        """Any thread: committed, durable entries join the next batch of a plain applier
        (`notify`: resolved with it). Callers hand over in log order (the loop only while
        no write of its is under way)."""
        self._join_apply_queue(entries, notify)
        self._start_apply()

    def _join_apply_queue(self, entries: list[pb.Entry],
                          notify: asyncio.Future | None = None) -> None:
        """Any thread: entries join the apply stage's next batch (in log order)."""
        with self._handoff_lock:
            if entries[0].index != self._handoff_next:  # a bug: the applier would skip some
                raise AssertionError(f"entries {entries[0].index}..{entries[-1].index} handed "
                                     f"to the apply stage, expected {self._handoff_next} next")
            self._handoff_next = entries[-1].index + 1
            self._handoff += entries
            if notify is not None:
                self._handoff_notify.append(notify)

    def _start_apply(self) -> None:
        """Any thread: the apply thread takes what is queued (now, or after its batch)."""
        ex = self.apply_executor
        if isinstance(ex, ThreadWorker):
            ex.post(self._apply_batch)
        else:
            ex.submit(self._apply_batch)

    def _apply_inline(self, ents: list[pb.Entry]) -> bool:
        """Loop: apply a small batch here, in the idle apply thread's stead (no hand-off,
        no wake-up of that thread, no answer back); whether it was applied (or failed).
        Only in log order: with no hand-over owed by the log thread or queued, and every
        earlier entry's result delivered here (an apply thread's batch whose answer is
        still on its way to the loop would otherwise reach its listeners second)."""
        inline = self._inline
        if inline is None or len(ents) > INLINE_APPLY_ENTRIES or _has_conf_change(ents) \
                or ents[0].index != self.applied + 1 \
                or self._log_hands_posted != self._log_hands_done:
            return False
        ran = self.apply_executor.run_if_idle(self._inline_batch, inline, ents)
        if ran is NOT_RUN or ran is None:
            return False
        result, exc = ran
        self._batch_applied(ents, result, exc, [])
        return True

    def _inline_batch(self, inline: Callable[[list[pb.Entry]], Any],
                      ents: list[pb.Entry]) -> tuple[Any, BaseException | None] | None:
        """Loop, the apply thread idle: (result, failure) of applying `ents` with
        `inline`, or None if it declined (nothing applied)."""
        with self._handoff_lock:
            if self._handoff or ents[0].index != self._handoff_next:
                return None
        try:
            result = inline(ents)
        except BaseException as exc:  # noqa: BLE001 - as on the apply thread: stops the runner
            result, failure = None, exc
        else:
            if result is None:
                return None
            failure = None
        with self._handoff_lock:
            self._handoff_next = ents[-1].index + 1
        return result, failure

    def _apply_batch(self) -> None:
        """Apply thread: everything handed over so far, as one batch; the loop learns of it
        with one wake-up (`_batch_applied`). A call that finds nothing left does nothing."""
        with self._apply_lock:
            with self._handoff_lock:
                ents, self._handoff = self._handoff, []
                notify, self._handoff_notify = self._handoff_notify, []
            if not ents or self._apply_failed is not None:
                for fut in notify:
                    self._answer(fut, None)
                return
            try:
                result, exc = self.applier.apply(ents), None
            except BaseException as e:  # noqa: BLE001 - handed to the loop
                result, exc = None, e
            try:
                self._loop_ref.call_soon_threadsafe(self._batch_applied, ents, result, exc,
                                                    notify)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _batch_applied(self, ents: list[pb.Entry], result: Any, exc: BaseException | None,
                       notify: list[asyncio.Future]) -> None:
        """Loop: a plain applier's batch is applied (or failed); then the writes that left
        their answer to it go on (their Ready cycles resume in the next pass). The
        proposers' answers are written in this callback already (`on_applied`), so the
        next Ready cycle need not wait a pass for them."""
        try:
            if not self._stopped:
                self._batch_done(ents, result, exc)
        finally:
            if notify:
                self._release(notify)

    @staticmethod
    def _release(futs: list[asyncio.Future]) -> None:
        for fut in futs:
            if not fut.done():
                fut.set_result(None)

    def _batch_done(self, ents: list[pb.Entry], result: Any,
                    exc: BaseException | None) -> None:
        if exc is None and self._on_applied is not None:
            try:
                self._on_applied(ents, result)
            except Exception as e:  # noqa: BLE001 - a bug: stop the runner below
                exc = e
        if exc is not None:
            log.error("raft runner %x failed applying entries %d..%d", self.id,
                      ents[0].index, ents[-1].index, exc_info=exc)
            self._apply_failed = exc
            self._wake_loop()
            waiters, self._apply_waiters = self._apply_waiters, []
            for _, f in waiters:
                if not f.done():
                    f.set_exception(exc)
                    f.exception()
            return
        self._applied(ents)

    def _applied_through(self, index: int) -> asyncio.Future:
        """Resolves once the applier applied through `index`."""
        fut = self._loop_ref.create_future()
        if self.applied >= index:
            fut.set_result(index)
        else:
            self._apply_waiters.append((index, fut))
        return fut

    def _submit_apply(self, entries: list[pb.Entry]) -> asyncio.Future:
        """An async applier: queue committed entries; the future resolves once applied."""
        fut = self._loop_ref.create_future()
        self._apply_queue.append((entries, fut))
        if self._apply_task is None or self._apply_task.done():
            self._apply_task = asyncio.create_task(self._apply_loop(),
                                                   name=f"raft-apply-{self.id}")
        return fut

    async def _applies_done(self) -> None:
        """Until everything handed to the apply stage is applied."""
        if not self._apply_is_async:
            await self._applied_through(self._handed)
            return
        if self._apply_queue:
            await self._apply_queue[-1][1]
        if self._apply_task is not None and not self._apply_task.done():
            await asyncio.shield(self._apply_task)

    async def _apply_loop(self) -> None:
        """An async applier: apply what the log stage handed over, several Readys' entries
        as one batch."""
        while self._apply_queue and not self._stopped:
            batch, self._apply_queue = self._apply_queue, []
            ents = batch[0][0] if len(batch) == 1 else [e for b, _ in batch for e in b]
            try:
                await self.applier.apply(ents)
                self._applied(ents)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a bug: make it loud and stop the runner
                log.exception("raft runner %x failed applying entries %d..%d",
                              self.id, ents[0].index, ents[-1].index)
                self._apply_failed = exc
                self._wake_loop()
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                        f.exception()
                return
            for _, f in batch:
                if not f.done():
                    f.set_result(None)

    def _applied(self, ents: list[pb.Entry]) -> None:
        """Entries are applied: membership changes reach Raft, proposers and reads learn."""
        changed = False
        # per entry only if there is something to find: a proposer's future (propose())
        # or a membership change (submit()'s proposers learn from their applier)
        for e in ents if self._waiting or _has_conf_change(ents) else ():
            if e.type == pb.EntryConfChange:
                self.node.apply_conf_change(pb.ConfChange.FromString(e.data))
                changed = True
            elif e.type == pb.EntryConfChangeV2:
                self.node.apply_conf_change(pb.ConfChangeV2.FromString(e.data))
                changed = True
            elif e.data and self._waiting:
                fut = self._waiting.pop(self.request_id_of(e.data), None)
                if fut is not None and not fut.done():
                    fut.set_result(e.index)
        self.applied = max(self.applied, ents[-1].index)
        if self._apply_waiters:
            self._release_read_waits()
        if changed:
            self._wake_loop()  # the new configuration may have work for Raft

    def _release_read_waits(self) -> None:
        """Resolve the waits (reads, membership changes) on what is applied now. Callers
        skip the call when none waits."""
        keep = []
        for index, fut in self._apply_waiters:
            if index <= self.applied:
                if not fut.done():
                    fut.set_result(index)
            else:
                keep.append((index, fut))
        self._apply_waiters = keep
