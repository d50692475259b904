"""Turns committed log entries into store changes, exactly once.

A batch of entries is applied in one LMDB write transaction that also records
the applied index, so after a crash the store is either before or after the
whole batch and the log tail is replayed from the recorded index. Each entry
runs in a nested transaction: a request that fails leaves no partial change.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import lmdb

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import internal_pb2
from etcdproto.raftpb import raft_pb2
from kubekv_server import errors
from kubekv_server.auth import AuthInfo, AuthStore
from kubekv_server.auth.store import KINDS as AUTH_KINDS
from kubekv_server.backend.alarms import apply_alarm, list_alarms
from kubekv_server.backend.state_db import Backend
from kubekv_server.errors import EtcdError
from kubekv_server.kv.txn import apply_delete_range, apply_put, apply_txn
from kubekv_server.lease import LeaseStore
from kubekv_server.member.membership import apply_conf_change, set_attributes
from kubekv_server.member.quota import has_put
from kubekv_server.mvcc import CompactedError, FutureRevError, MVCCStore

log = logging.getLogger("kubekv.applier")

# What etcd's applierV3Corrupt refuses while a CORRUPT alarm is raised.
# etcd's --experimental-warning-apply-duration default (embed.DefaultWarningApplyDuration)
DEFAULT_WARNING_APPLY_SECONDS = 0.1

CORRUPT_REFUSED = frozenset({"put", "delete_range", "txn", "compaction", "lease_grant",
                             "lease_revoke"})


@dataclass
class BatchResult:
    """What one applied batch produced: per-request outcomes and the MVCC events."""

    # (request id, response or EtcdError), in log order
    results: list[tuple[int, object]] = field(default_factory=list)
    events: list = field(default_factory=list)  # mvccpb.Event, in revision order
    applied_index: int = 0
    compaction_scheduled: bool = False
    # ("grant", id, ttl) / ("revoke", id), for the in-memory lessor after commit
    lease_changes: list = field(default_factory=list)
    membership_changed: bool = False  # a conf change or published attributes


def mvcc_error(exc: Exception) -> EtcdError:
    """Map MVCC store errors to etcd's client errors."""
    if isinstance(exc, CompactedError):
        return errors.COMPACTED
    if isinstance(exc, FutureRevError):
        return errors.FUTURE_REV
    raise exc


class Applier:
    """Applies committed entries to the MVCC store (and, later, lessor, auth, membership)."""

    def __init__(
        self,
        backend: Backend,
        mvcc: MVCCStore,
        leases: LeaseStore | None = None,
        on_lease_changes: Callable[[list], None] | None = None,
        auth: AuthStore | None = None,
    ) -> None:
        self.backend = backend
        self.auth = auth
        self._index = 0  # log index of the entry being applied
        self.mvcc = mvcc
        self.leases = leases
        self.on_lease_changes = on_lease_changes
        self.applied_index = backend.applied_index()
        with backend.env.begin() as txn:
            self.alarms = {(a.memberID, a.alarm) for a in list_alarms(txn, backend.meta)}
        self._txn: lmdb.Transaction | None = None  # the request being applied
        self._lease_changes: list = []
        # etcd_server_slow_apply_total: requests whose apply took longer than
        # --experimental-warning-apply-duration (etcd's warnOfExpensiveRequest)
        self.slow_apply_seconds = DEFAULT_WARNING_APPLY_SECONDS
        self.slow_applies = 0

    def reload(self) -> None:
        """Re-read what is cached from the state db (after a snapshot replaced it)."""
        self.applied_index = self.backend.applied_index()
        with self.backend.env.begin() as txn:
            self.alarms = {(a.memberID, a.alarm) for a in list_alarms(txn, self.backend.meta)}

    @property
    def nospace(self) -> bool:
        """While a NOSPACE alarm is raised, new values are refused (etcd's capped applier)."""
        return any(alarm == pb.NOSPACE for _, alarm in self.alarms)

    @property
    def corrupt(self) -> bool:
        """While a CORRUPT alarm is raised, etcd's corrupt applier refuses changes."""
        return any(alarm == pb.CORRUPT for _, alarm in self.alarms)

    def lease_exists(self, lease_id: int) -> bool:
        """Whether a lease exists as of the request being applied (same batch included)."""
        if self.leases is None or self._txn is None:
            return False
        return self.leases.exists(self._txn, lease_id)

    def apply(self, entries: Sequence[raft_pb2.Entry]) -> BatchResult:
        """Apply entries past the applied index in one durable transaction. Thread: writer."""
        out = BatchResult(applied_index=self.applied_index)
        todo = [e for e in entries if e.index > self.applied_index]
        if not todo:
            return out
        env = self.backend.env
        with env.begin(write=True) as txn:
            for entry in todo:
                if entry.type == raft_pb2.EntryNormal and entry.data:
                    self._index = entry.index
                    started = time.perf_counter()
                    self._apply_request(txn, entry.data, out)
                    if time.perf_counter() - started > self.slow_apply_seconds:
                        self.slow_applies += 1
                elif entry.type == raft_pb2.EntryConfChange:
                    self._apply_conf_change(txn, entry.data, out)
            self.backend.set_applied_index(txn, todo[-1].index)
        self.applied_index = out.applied_index = todo[-1].index
        if out.lease_changes and self.on_lease_changes is not None:
            self.on_lease_changes(out.lease_changes)
        return out

    # ------------------------------------------------------------ membership

    def members(self, txn: lmdb.Transaction | None = None) -> list[dict]:
        if txn is None:
            with self.backend.env.begin() as t:
                return self.members(t)
        return json.loads(txn.get(b"members", db=self.backend.meta) or b"[]")

    def removed_members(self, txn: lmdb.Transaction | None = None) -> list[int]:
        """Ids of members removed from the cluster (etcd's members_removed)."""
        if txn is None:
            with self.backend.env.begin() as t:
                return self.removed_members(t)
        return json.loads(txn.get(b"removed_members", db=self.backend.meta) or b"[]")

    def conf_state(self, txn: lmdb.Transaction | None = None) -> raft_pb2.ConfState:
        if txn is None:
            with self.backend.env.begin() as t:
                return self.conf_state(t)
        raw = txn.get(b"conf_state", db=self.backend.meta)
        return raft_pb2.ConfState.FromString(raw) if raw else raft_pb2.ConfState()

    def _set_members(self, txn: lmdb.Transaction, members: list[dict]) -> None:
        txn.put(b"members", json.dumps(members, sort_keys=True).encode(), db=self.backend.meta)

    def _apply_conf_change(self, txn: lmdb.Transaction, data: bytes, out: BatchResult) -> None:
        """Membership and the ConfState change with the applied index, in the same txn."""
        cc = raft_pb2.ConfChange.FromString(data)
        members, cs = apply_conf_change(self.members(txn), self.conf_state(txn), cc)
        self._set_members(txn, members)
        txn.put(b"conf_state", cs.SerializeToString(), db=self.backend.meta)
        if cc.type == raft_pb2.ConfChangeRemoveNode:
            removed = sorted(set(self.removed_members(txn)) | {cc.node_id})
            txn.put(b"removed_members", json.dumps(removed).encode(), db=self.backend.meta)
        out.membership_changed = True
        if cc.id:
            out.results.append((cc.id, members))

    def _apply_request(self, txn: lmdb.Transaction, data: bytes, out: BatchResult) -> None:
        req = internal_pb2.InternalRequest.FromString(data)
        kind = req.WhichOneof("request")
        child = self.backend.env.begin(write=True, parent=txn)
        self._txn = child
        self._lease_changes: list = []
        try:
            result, events = self._dispatch(child, req, kind)
        except EtcdError as exc:
            child.abort()
            out.results.append((req.id, exc))
            return
        except (CompactedError, FutureRevError) as exc:
            child.abort()
            out.results.append((req.id, mvcc_error(exc)))
            return
        except Exception:
            child.abort()
            log.exception("event=apply_failed request_id=%d kind=%s", req.id, kind)
            out.results.append((req.id, errors.EtcdError(errors.STOPPED.code, "etcdserver: "
                                                          "internal error applying request")))
            return
        finally:
            self._txn = None
        child.commit()
        out.lease_changes.extend(self._lease_changes)
        if kind == "compaction":
            out.compaction_scheduled = True
        elif kind == "member_attributes":
            out.membership_changed = True
        out.events.extend(events)
        out.results.append((req.id, result))

    def _track(self, txn: lmdb.Transaction, changes: list) -> None:
        if self.leases is not None and changes:
            self.leases.track(txn, changes)

    def _check_auth(self, txn: lmdb.Transaction, req, kind: str | None) -> AuthInfo | None:
        """etcd's authApplierV3: a client's write is checked against the auth store as of
        its place in the log. None for the member's own requests, which are trusted."""
        if self.auth is None or not req.HasField("auth"):
            return None
        ai = AuthInfo(req.auth.username, req.auth.revision)
        auth = self.auth
        if not auth.enabled:
            return ai
        if kind == "put":
            p = req.put
            auth.is_put_permitted(ai, p.key, txn)
            if p.lease and self.leases is not None:
                auth.check_lease_keys(ai, self.leases.keys(txn, p.lease), True, txn)
            if p.prev_kv:
                auth.is_range_permitted(ai, p.key, b"", txn)
        elif kind == "delete_range":
            d = req.delete_range
            auth.is_delete_permitted(ai, d.key, d.range_end, txn)
            if d.prev_kv:
                auth.is_range_permitted(ai, d.key, d.range_end, txn)
        elif kind == "txn":
            auth.check_txn(ai, req.txn, txn)
        elif kind == "lease_revoke" and self.leases is not None:
            auth.check_lease_keys(ai, self.leases.keys(txn, req.lease_revoke.ID), True, txn)
        return ai

    def _write(self, txn: lmdb.Transaction, op):
        """Run one KV write request as one MVCC write txn: (response, its events)."""
        w = self.mvcc.write(txn)
        resp = op(w)
        w.end()
        self._track(txn, w.changes)
        return resp, w.changes

    def _dispatch(self, txn: lmdb.Transaction, req, kind: str | None):
        if kind in CORRUPT_REFUSED and self.corrupt:
            raise errors.CORRUPT
        ai = self._check_auth(txn, req, kind)
        if kind in AUTH_KINDS and self.auth is not None:
            resp = self.auth.apply(txn, kind, getattr(req, kind), ai, self._index)
            resp.header.revision = self.mvcc.write(txn).current_revision
            return resp, []
        if kind == "put":
            if self.nospace:
                raise errors.NO_SPACE
            return self._write(txn, lambda w: apply_put(w, req.put, self.lease_exists))
        if kind == "delete_range":
            return self._write(txn, lambda w: apply_delete_range(w, req.delete_range))
        if kind == "txn":
            if self.nospace and has_put(req.txn):
                raise errors.NO_SPACE
            return self._write(txn, lambda w: apply_txn(w, req.txn, self.lease_exists))
        if kind == "compaction":
            self.mvcc.compact(txn, req.compaction.revision)
            resp = pb.CompactionResponse()
            w = self.mvcc.write(txn)
            resp.header.revision = w.current_revision
            return resp, []
        if kind == "lease_grant" and self.leases is not None:
            ttl = self.leases.grant(txn, req.lease_grant)
            self._lease_changes.append(("grant", req.lease_grant.ID, ttl))
            resp = pb.LeaseGrantResponse(ID=req.lease_grant.ID, TTL=ttl)
            resp.header.revision = self.mvcc.write(txn).current_revision
            return resp, []
        if kind == "lease_revoke" and self.leases is not None:
            w = self.mvcc.write(txn)
            self.leases.revoke(txn, w, req.lease_revoke.ID)
            resp = pb.LeaseRevokeResponse()
            resp.header.revision = w.end()
            self._track(txn, w.changes)
            self._lease_changes.append(("revoke", req.lease_revoke.ID))
            return resp, w.changes
        if kind == "lease_checkpoint":
            for cp in req.lease_checkpoint.checkpoints:
                self._lease_changes.append(("checkpoint", cp.ID, cp.remaining_TTL))
            return pb.LeaseCheckpointResponse(), []
        if kind == "member_attributes":
            a = req.member_attributes
            self._set_members(txn, set_attributes(self.members(txn), a.member_id, a.name,
                                                  list(a.client_urls)))
            return None, []
        if kind == "alarm":
            resp = apply_alarm(txn, self.backend.meta, req.alarm)
            self.alarms = {(a.memberID, a.alarm) for a in list_alarms(txn, self.backend.meta)}
            return resp, []
        raise EtcdError(errors.NOT_CAPABLE.code, f"etcdserver: unsupported request {kind!r}")
