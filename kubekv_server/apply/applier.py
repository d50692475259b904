"""Turns committed log entries into store changes, exactly once.

A batch of entries is applied in the backend's apply transaction, which also
records the applied index, so after a crash the store is as of some applied
index and the log tail is replayed from it. The transaction commits every
--backend-batch-interval or --backend-batch-limit entries (etcd's batchTx), and
at once after a batch that changed anything but keys (membership, leases, auth,
alarms, compaction, a key's lease): those are read from committed state. The key
changes applied but not committed are published after each batch as the MVCC
store's `pending` view, which readers lay over their snapshot (mvcc/pending.py).
The applied index and the current revision are stored once, just before the
transaction commits (`Backend.before_commit`): nothing reads them from it meanwhile.

A request that fails leaves no partial change. Key requests (put, delete_range, txn)
change nothing but LMDB, so they write straight into the apply transaction: one that
fails after writing makes the transaction begin anew (`Backend.restart_txn`) and the
key requests it held since its last commit are applied again, from their entries'
data (the same writes: applying is deterministic); one that fails before writing, as
every refused request does (kv/txn.py), needs nothing undone. Any other request runs
in a nested transaction of its own (its in-memory effects, auth, alarms, must never
run twice), and from then to the next commit the key requests of each batch share a
nested transaction, dropped and filled again on such a failure. A nested transaction
per batch cost ~3.5 µs at one entry per batch, and one per request ~7 µs
(`bench/hot_path_cpu.py apply put --server-like`: LMDB copies the pages it touches
that the apply transaction already holds dirty, and merges its dirty list into the
parent's).

The transaction's commits a bound asks for run on the state db's commit thread
(`Backend.commit_async`); until one has landed there is no write txn, and the key
requests of the batches meanwhile go into an overlay (mvcc/overlay.py): their changes
and results are made as usual and published in the pending view, and written into the
next transaction once the commit has landed (`_landed`). A request the overlay cannot
serve, or any other kind, waits for the commit first, as every request did before.

A request goes through the layers of `layers.py` (alarms, auth) to its kind's
handler in `handlers.py`, as etcd's applierV3 wrappers around applierV3backend.
The applier calls out to nobody: what a batch did (results, events, lease and
membership changes, its duration) is its BatchResult, which `RaftNode` hands to
the after-apply listeners on the event loop (contract: `replication/raft_node.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import lmdb

from etcdproto.kubekvpb import internal_pb2
from etcdproto.raftpb import raft_pb2
from kubekv_server import errors
from kubekv_server.apply.alarm_state import AlarmState
from kubekv_server.apply.handlers import Handlers, Step
from kubekv_server.apply.layers import wrap
from kubekv_server.apply.members_db import MembersDB
from kubekv_server.auth import AuthStore
from kubekv_server.backend.state_db import MAX_UNCOMMITTED_BYTES, Backend
from kubekv_server.errors import EtcdError
from kubekv_server.lease import LeaseStore
from kubekv_server.mvcc import CompactedError, FutureRevError, MVCCStore
from kubekv_server.mvcc.overlay import NeedsCommittedState, Overlay
from kubekv_server.mvcc.pending import EMPTY

log = logging.getLogger("kubekv.applier")

# Requests that change keys only: their changes may stay uncommitted (readers see them
# through the pending view); any other request commits the apply txn with its batch.
_KEY_ONLY = frozenset(("put", "delete_range", "txn"))

# How long `apply_inline` may work on a batch before it gives up (the Runner's loop runs
# it, and serves no client meanwhile): past it the batch declines, nothing done, and goes
# to the apply thread. Kubernetes-sized writes take ~20-40 us each; a batch of txns with
# etcd's 128 ops each can take milliseconds.
INLINE_APPLY_SECONDS = 0.002

# etcd's --experimental-warning-apply-duration default (embed.DefaultWarningApplyDuration)
DEFAULT_WARNING_APPLY_SECONDS = 0.1


@dataclass
class BatchResult:
    """What one applied batch produced: per-request outcomes and the MVCC events."""

    # (request id, response or EtcdError), in log order
    results: list[tuple[int, object]] = field(default_factory=list)
    # (revision, its mvccpb.Events, their encoded size), in revision order
    revisions: list[tuple[int, list, int]] = field(default_factory=list)
    applied_index: int = 0
    compaction_scheduled: bool = False
    # ("grant", id, ttl) / ("revoke", id) / ("checkpoint", id, remaining), for the lessor
    lease_changes: list = field(default_factory=list)
    membership_changed: bool = False  # a conf change or published attributes
    # key changes for the pending view (pending.Change), and whether anything else
    # changed (the apply txn must commit before the results are seen)
    rows: list = field(default_factory=list)
    must_commit: bool = False
    apply_seconds: float = 0.0  # wall time of the whole batch, commit included


def mvcc_error(exc: Exception) -> EtcdError:
    """Map MVCC store errors to etcd's client errors."""
    if isinstance(exc, CompactedError):
        return errors.COMPACTED
    if isinstance(exc, FutureRevError):
        return errors.FUTURE_REV
    raise exc


class Applier:
    """Applies committed entries: requests through the layers to their handlers, conf
    changes to the membership records; each batch with its applied index."""

    def __init__(
        self,
        backend: Backend,
        mvcc: MVCCStore,
        leases: LeaseStore | None = None,
        auth: AuthStore | None = None,
    ) -> None:
        self.backend = backend
        self.mvcc = mvcc
        self.applied_index = backend.applied_index()
        self.alarms = AlarmState(backend)
        self._members = MembersDB(backend)
        self.handlers = Handlers(mvcc, self._members, self.alarms, backend, leases, auth)
        self._base: int | None = None  # current revision as of the last commit
        # The apply txn's window: what it holds since its last commit. Key requests write
        # straight into it (`_direct`) until a request of another kind or a conf change
        # is applied in the window; the key requests after that, to the commit, run in a
        # nested txn per batch (`_kv`), as before. `_window` is what a redo applies again:
        # (index, entry data) of the key requests applied straight into it, data rather
        # than parsed requests so that nothing it holds is tracked by the collector.
        self._txn: lmdb.Transaction | None = None  # the apply txn, during a batch
        self._direct = True
        self._window: list[tuple[int, bytes]] = []
        self._window_revs = (0, 0)  # the (current, compact revision) it began with
        # (current, compact revision) as the txn the key requests write into holds them
        # after those applied (None: read them from it), and the current revision stored
        # in it: key requests get them instead of reading meta, and the current revision
        # is stored once, before the txn commits or another kind of request reads it
        self._revs: tuple[int, int] | None = None
        self._stored = 0
        self._txn_index = 0  # the applied index the apply txn records when it commits
        self._kv: lmdb.Transaction | None = None
        self._kv_steps: list[tuple[int, bytes]] = []
        self._kv_start = (0, 0)
        # key requests applied while a background commit lands (None: none is)
        self._overlay: Overlay | None = None
        backend.before_commit.append(self._before_commit)
        backend.on_commit.append(self._committed)
        backend.on_landed.append(self._landed)
        self._chain = wrap(self.handlers, self.alarms, auth, leases)
        # etcd_server_slow_apply_total: requests whose apply took longer than
        # --experimental-warning-apply-duration (etcd's warnOfExpensiveRequest)
        self.slow_apply_seconds = DEFAULT_WARNING_APPLY_SECONDS
        self.slow_applies = 0

    def reload(self) -> None:
        """Re-read what is cached from the state db (after a snapshot replaced it)."""
        self.applied_index = self.backend.applied_index()
        with self.backend.env.begin() as txn:
            self.alarms.load(txn)

    def apply(self, entries: Sequence[raft_pb2.Entry]) -> BatchResult:
        """Apply entries past the applied index in the apply txn. Thread: apply."""
        started_batch = time.perf_counter()
        out = BatchResult(applied_index=self.applied_index)
        todo = [e for e in entries if e.index > self.applied_index]
        if todo and not self.backend.poll_landing():
            todo = self._apply_overlaid(todo, out)
            if not todo:
                out.apply_seconds = time.perf_counter() - started_batch
                return out
        if todo:
            backend = self.backend
            first = len(out.rows)  # (an overlay's rows are published already)
            txn = self._txn = backend.apply_txn()  # (after a commit under way has landed)
            if self._base is None:  # the window's first batch: the revisions it extends
                self._revs = self._window_revs = self.mvcc.revisions_in(txn)
                self._stored = self._base = self._revs[0]
            try:
                done = time.perf_counter()  # when the previous entry was done
                for entry in todo:
                    if entry.type == raft_pb2.EntryNormal and entry.data:
                        self._apply_request(entry.index, entry.data, out)
                        now = time.perf_counter()
                        if now - done > self.slow_apply_seconds:
                            self.slow_applies += 1
                        done = now
                    elif entry.type == raft_pb2.EntryConfChange:
                        self._before_other()
                        self._apply_conf_change(self._txn, entry.data, out)
                        done = time.perf_counter()
                self._commit_kv()
                self._txn_index = todo[-1].index
            except BaseException:
                if self._kv is not None:
                    self._kv.abort()
                    self._kv = None
                backend.abort()  # applied but uncommitted batches go too: the log has them
                raise
            finally:
                self._txn = None
            rows = out.rows[first:] if first else out.rows
            if not backend.applied(len(todo), out.must_commit,
                                   sum(len(row[3]) for row in rows)):
                self._publish(rows)
            self.applied_index = out.applied_index = todo[-1].index
        out.apply_seconds = time.perf_counter() - started_batch
        return out

    def _publish(self, rows: list) -> None:
        """Readers lay `rows` (a batch's key changes, not committed yet) over the last
        commit, up to the current revision the key requests reached."""
        mvcc = self.mvcc
        top = self._revs[0] if self._revs is not None else \
            mvcc.current_revision(self.backend.apply_txn())
        mvcc.pending = mvcc.pending.extended(self._base, rows, top)

    def apply_inline(self, entries: Sequence[raft_pb2.Entry]) -> BatchResult | None:
        """Apply a batch without waiting for any other thread (the Runner's loop does it
        while the apply thread is idle, `INLINE_APPLY_ENTRIES`), or None and nothing done.

        Only key requests that read single live keys, through an overlay as while a
        commit lands (their reads and changes bounded by the request, none of them moves
        a key between leases, which would commit the batch at once), reading the open
        apply txn; their rows then go into it. Anything else declines, as does a commit
        landing, a window that holds another kind of request, or a batch still
        unfinished after `INLINE_APPLY_SECONDS`."""
        started_batch = time.perf_counter()
        backend = self.backend
        if not self._direct or self._overlay is not None or not backend.waits_for_nothing:
            return None
        todo = [e for e in entries if e.index > self.applied_index]
        out = BatchResult(applied_index=self.applied_index)
        if not todo:
            return out
        txn = backend.apply_txn()  # (open: it waits for nothing)
        revs = self._revs if self._revs is not None else self.mvcc.revisions_in(txn)
        ov = Overlay(self.mvcc, EMPTY, revs, txn=txn)  # (the txn holds the whole window)
        counts = self.mvcc.counts
        saved_counts = counts.range, counts.put, counts.delete, counts.txn
        saved_revs, self._revs = self._revs, revs
        try:
            give_up = started_batch + INLINE_APPLY_SECONDS
            for entry in todo:
                if entry.type != raft_pb2.EntryNormal or time.perf_counter() > give_up or (
                        entry.data and not self._overlay_request(ov, entry.index, entry.data,
                                                                 out)):
                    self._revs = saved_revs
                    counts.range, counts.put, counts.delete, counts.txn = saved_counts
                    return None
        finally:
            ov.release()
        if self._base is None:  # the window's first batch
            self._window_revs = revs
            self._stored = self._base = revs[0]
        try:
            self.mvcc.write_rows(txn, ov.rows)
            self._window.extend(ov.entries)
            self._txn_index = todo[-1].index
            committed = backend.applied(len(todo), False, ov.nbytes)
        except BaseException:
            backend.abort()  # as an apply txn's failure: the log has it all
            raise
        if not committed:
            self._publish(out.rows)
        self.applied_index = out.applied_index = todo[-1].index
        out.apply_seconds = time.perf_counter() - started_batch
        return out

    def _before_commit(self, txn: lmdb.Transaction) -> None:
        """The apply txn commits: it records the applied index and the current revision
        of what it holds (once per commit, not per batch: nothing reads them meanwhile)."""
        if self._txn_index:
            self._store_revision(txn)
            self.backend.set_applied_index(txn, self._txn_index)

    def _committed(self) -> None:
        """The apply txn committed (or was dropped, with any overlay): readers need no
        pending view, and a new window begins."""
        self.mvcc.pending = EMPTY
        self._base = self._revs = None
        self._direct = True
        self._window = []
        self._txn_index = 0
        self._overlay = None
        self.backend.overlay_bytes = 0

    # ------------------------------------------------------------ the overlay

    def _apply_overlaid(self, todo: list[raft_pb2.Entry], out: BatchResult) -> list:
        """While a commit lands: apply the batch's entries into the overlay, up to the
        first the overlay cannot take; returns the entries left for the apply txn."""
        ov = self._overlay
        if ov is None:
            # what commits in the background is a window of key requests applied straight
            # into the txn (anything else commits at once: `must_commit`)
            if self._revs is None or not self._direct:
                return todo
            ov = self._overlay = Overlay(self.mvcc, self.mvcc.pending, self._revs)
        n = 0
        try:
            for entry in todo:
                if entry.type != raft_pb2.EntryNormal:
                    break
                if entry.data:
                    if ov.nbytes >= MAX_UNCOMMITTED_BYTES or \
                            not self._overlay_request(ov, entry.index, entry.data, out):
                        break
                ov.last_index = entry.index
                n += 1
        except BaseException:
            ov.release()
            self.backend.abort()  # as an apply txn's failure: the log has it all
            raise
        ov.release()
        if n:
            self.backend.overlay_bytes = ov.nbytes
            self._publish(out.rows)
            self.applied_index = out.applied_index = ov.last_index
        return todo[n:]

    def _overlay_request(self, ov: Overlay, index: int, data: bytes, out: BatchResult) -> bool:
        """One request into the overlay: False (and nothing done) if it needs the apply
        txn (not a key request, or one the overlay cannot serve)."""
        req = internal_pb2.InternalRequest.FromString(data)
        kind = req.WhichOneof("request")
        if kind not in _KEY_ONLY:
            return False
        step = Step(ov.read_txn, req, kind, index, revisions=self._revs, overlay=ov)
        try:
            result, events = self._chain.apply(step)
        except NeedsCommittedState:
            return False
        except Exception as exc:  # refused before any change, as in the apply txn
            out.results.append((req.id, self._failed(exc, req.id, kind)))
            return True
        ov.add(step.write_txn, index, data)
        self._key_request_done(step, result, events, out)  # (no lease moved: end() says)
        return True

    def _landed(self) -> None:
        """The background commit landed (apply thread): the overlay's changes go into a
        new apply txn, whose window they begin (a redo applies them again from the
        entries), and readers lay them over the new commit."""
        ov, self._overlay = self._overlay, None
        if ov is None or not ov.last_index:
            self._committed()
            return
        backend = self.backend
        backend.overlay_bytes = 0
        txn = backend.apply_txn()
        self.mvcc.write_rows(txn, ov.rows)
        backend.note_applied(len(ov.entries), ov.nbytes)
        landed = ov.start[0]
        self._base = self._stored = landed
        self._window_revs = ov.start
        self._window = ov.entries
        self._direct = True
        self._txn_index = ov.last_index
        self.mvcc.pending = EMPTY.extended(landed, ov.rows, self._revs[0])

    # ------------------------------------------------------------ membership

    def members(self, txn: lmdb.Transaction | None = None) -> list[dict]:
        if txn is None:
            with self.backend.env.begin() as t:
                return self._members.members(t)
        return self._members.members(txn)

    def removed_members(self, txn: lmdb.Transaction | None = None) -> list[int]:
        """Ids of members removed from the cluster (etcd's members_removed)."""
        if txn is None:
            with self.backend.env.begin() as t:
                return self._members.removed(t)
        return self._members.removed(txn)

    def conf_state(self, txn: lmdb.Transaction | None = None) -> raft_pb2.ConfState:
        if txn is None:
            with self.backend.env.begin() as t:
                return self._members.conf_state(t)
        return self._members.conf_state(txn)

    def _apply_conf_change(self, txn: lmdb.Transaction, data: bytes, out: BatchResult) -> None:
        """Membership and the ConfState change with the applied index, in the same txn."""
        cc = raft_pb2.ConfChange.FromString(data)
        members = self._members.apply_conf_change(txn, cc)
        out.membership_changed = out.must_commit = True
        if cc.id:
            out.results.append((cc.id, members))

    # -------------------------------------------------------------- requests

    def _apply_request(self, index: int, data: bytes, out: BatchResult) -> None:
        """One request: its changes, or its error and no change."""
        req = internal_pb2.InternalRequest.FromString(data)
        kind = req.WhichOneof("request")
        if kind in _KEY_ONLY:
            self._apply_key_request(req, kind, index, data, out)
            return
        self._before_other()
        child = self.backend.env.begin(write=True, parent=self._txn)
        step = Step(child, req, kind, index)
        try:
            result, events = self._chain.apply(step)
        except Exception as exc:
            child.abort()
            out.results.append((req.id, self._failed(exc, req.id, kind)))
            return
        child.commit()
        self._applied(step, result, events, out)

    def _apply_key_request(self, req: internal_pb2.InternalRequest, kind: str, index: int,
                           data: bytes, out: BatchResult) -> None:
        """A put, delete_range or txn: straight into the apply txn, or into the batch's
        nested txn for key requests once the window holds another kind of request."""
        if self._direct:
            txn = self._txn
        else:
            txn = self._kv
            if txn is None:
                txn = self._kv = self.backend.env.begin(write=True, parent=self._txn)
                self._kv_steps = []
                if self._revs is None:
                    self._revs = self.mvcc.revisions_in(txn)
                    self._stored = self._revs[0]
                self._kv_start = self._revs
        step = Step(txn, req, kind, index, revisions=self._revs)
        try:
            result, events = self._chain.apply(step)
        except Exception as exc:
            if step.write_txn is not None and step.write_txn.dirty:
                self._redo()
            out.results.append((req.id, self._failed(exc, req.id, kind)))
            return
        (self._window if self._direct else self._kv_steps).append((index, data))
        self._key_request_done(step, result, events, out)

    def _key_request_done(self, step: Step, result: object, events: list,
                          out: BatchResult) -> None:
        """What _applied records, for a key request that succeeded: the revisions it
        leaves, its changes for the pending view (or the commit, if a key moved between
        leases), its events at the revision it made (their size is never 0), its
        response."""
        self._revs = self._after(step)
        if step.touched_leases:
            out.must_commit = True
        else:
            out.rows.extend(step.rows)
        if events:
            out.revisions.append((self._revs[0], events, step.event_bytes))
        out.results.append((step.req.id, result))

    def _after(self, step: Step) -> tuple[int, int]:
        """The (current, compact revision) after a key request applied with `_revs`."""
        w = step.write_txn
        if w.changed:
            return w.current_revision + 1, w.compact_revision
        return self._revs

    def _redo(self) -> None:
        """A key request failed half-way: drop the txn it wrote into (the apply txn, or
        the batch's nested one) and apply the key requests that succeeded in it again
        into a new one (the same writes: applying is deterministic); their results stand."""
        if self._direct:
            txn = self._txn = self.backend.restart_txn()
            done, self._revs = self._window, self._window_revs
        else:
            self._kv.abort()
            txn = self._kv = self.backend.env.begin(write=True, parent=self._txn)
            done, self._revs = self._kv_steps, self._kv_start
        self._stored = self._revs[0]
        counts = self.mvcc.counts  # counted once already
        saved = counts.range, counts.put, counts.delete, counts.txn
        for index, data in done:
            req = internal_pb2.InternalRequest.FromString(data)
            step = Step(txn, req, req.WhichOneof("request"), index, revisions=self._revs)
            self._chain.apply(step)
            self._revs = self._after(step)
        counts.range, counts.put, counts.delete, counts.txn = saved

    def _store_revision(self, txn: lmdb.Transaction) -> None:
        """Store the current revision the key requests reached in `txn`, if not yet."""
        revs = self._revs
        if revs is not None and revs[0] != self._stored:
            self.mvcc.store_revision(txn, revs[0])
            self._stored = revs[0]

    def _before_other(self) -> None:
        """Before a request of another kind or a conf change: the key requests' changes
        and current revision go into the apply txn, which it may read (and change: its
        revisions are read again after it), and the window's key requests go into
        nested txns from now on (a redo could not apply this one again)."""
        if self._kv is not None:
            self._commit_kv()
        else:
            self._store_revision(self._txn)
        self._revs = None
        self._direct = False

    def _commit_kv(self) -> None:
        """Commit the key requests' nested txn into the apply txn, if one is open."""
        if self._kv is not None:
            self._store_revision(self._kv)
            self._kv.commit()
            self._kv = None
            self._kv_steps = []

    @staticmethod
    def _failed(exc: Exception, request_id: int, kind: str | None) -> EtcdError:
        """The error a client gets for a request whose apply raised `exc`."""
        if isinstance(exc, EtcdError):
            return exc
        if isinstance(exc, (CompactedError, FutureRevError)):
            return mvcc_error(exc)
        log.exception("event=apply_failed request_id=%d kind=%s", request_id, kind,
                      exc_info=exc)
        return errors.EtcdError(errors.STOPPED.code,
                                "etcdserver: internal error applying request")

    @staticmethod
    def _applied(step: Step, result: object, events: list, out: BatchResult) -> None:
        """Record what an applied request produced in the batch's result."""
        kind = step.kind
        if kind in _KEY_ONLY and not step.touched_leases:
            out.rows.extend(step.rows)
        else:
            out.must_commit = True
        out.lease_changes.extend(step.lease_changes)
        if kind == "compaction":
            out.compaction_scheduled = True
        elif kind == "member_attributes":
            out.membership_changed = True
        if events:  # one request's events share its revision
            out.revisions.append((events[0].kv.mod_revision, events,
                                  step.event_bytes or sum(ev.ByteSize() for ev in events)))
        out.results.append((step.req.id, result))
