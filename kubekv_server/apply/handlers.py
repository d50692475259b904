"""One handler per request kind: what a committed request changes (etcd's applierV3backend).

`Handlers.table` maps the kind (the `InternalRequest.request` oneof field) to its
handler; a kind without a handler is answered NOT_CAPABLE. The checks that cut
across kinds (alarms, auth) are the layers of `layers.py`, around `Handlers.apply`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lmdb

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import internal_pb2
from kubekv_server import errors
from kubekv_server.apply.alarm_state import AlarmState
from kubekv_server.apply.members_db import MembersDB
from kubekv_server.auth import AuthInfo, AuthStore
from kubekv_server.auth.store import KINDS as AUTH_KINDS
from kubekv_server.backend.alarms import apply_alarm
from kubekv_server.backend.state_db import Backend
from kubekv_server.errors import EtcdError
from kubekv_server.kv.txn import apply_delete_range, apply_put, apply_txn
from kubekv_server.lease import LeaseStore
from kubekv_server.member.membership import set_attributes
from kubekv_server.mvcc import MVCCStore
from kubekv_server.mvcc.overlay import Overlay
from kubekv_server.mvcc.store import WriteTxn

# (response, the MVCC events it made, in revision order)
Outcome = tuple[object, list]


@dataclass(slots=True)
class Step:
    """One request being applied, in a nested write transaction (applier.py)."""

    txn: lmdb.Transaction
    req: internal_pb2.InternalRequest
    kind: str | None
    index: int  # its log index
    auth_info: AuthInfo | None = None  # set by the auth layer; None = the member's own
    # ("grant", id, ttl) / ("revoke", id) / ("checkpoint", id, remaining), for the lessor
    lease_changes: list | tuple = ()
    event_bytes: int = 0  # the encoded size of the events it made (WriteTxn.changes_bytes)
    rows: list | tuple = ()  # its key changes as written (WriteTxn.rows), for the pending view
    touched_leases: bool = False  # it attached or detached a key to or from a lease
    write_txn: WriteTxn | None = None  # a key request's MVCC write txn, once begun
    # (current, compact revision) as `txn` holds them, if the applier keeps them (then it
    # stores the current revision: MVCCStore.write)
    revisions: tuple[int, int] | None = None
    # while a commit lands: the overlay a key request goes into (`txn` is then a read
    # txn of the committed state: mvcc/overlay.py)
    overlay: Overlay | None = None


Handler = Callable[[Step], Outcome]


def _no_lease(lease_id: int) -> bool:
    """The lease check of a member without a lease store: no lease exists."""
    return False


class Handlers:
    """The base applier: each kind's state change, with no cross-cutting checks."""

    def __init__(
        self,
        mvcc: MVCCStore,
        members: MembersDB,
        alarms: AlarmState,
        backend: Backend,
        leases: LeaseStore | None = None,
        auth: AuthStore | None = None,
    ) -> None:
        self.mvcc = mvcc
        self.members = members
        self.alarms = alarms
        self.backend = backend
        self.leases = leases
        self.auth = auth
        # the lease check of the txn last asked about (_lease_exists)
        self._exists_txn: lmdb.Transaction | None = None
        self._exists: Callable[[int], bool] = _no_lease
        self.table: dict[str, Handler] = {
            "put": self.put,
            "delete_range": self.delete_range,
            "txn": self.txn,
            "compaction": self.compaction,
            "lease_checkpoint": self.lease_checkpoint,
            "member_attributes": self.member_attributes,
            "alarm": self.alarm,
        }
        if leases is not None:
            self.table["lease_grant"] = self.lease_grant
            self.table["lease_revoke"] = self.lease_revoke
        if auth is not None:
            self.table.update(dict.fromkeys(AUTH_KINDS, self.auth_request))

    def apply(self, step: Step) -> Outcome:
        handler = self.table.get(step.kind)
        if handler is None:
            raise EtcdError(errors.NOT_CAPABLE.code,
                            f"etcdserver: unsupported request {step.kind!r}")
        return handler(step)

    # ------------------------------------------------------------------ kv

    def _begin(self, step: Step) -> WriteTxn:
        """A key request's MVCC write txn: in the apply txn, or in the overlay."""
        ov = step.overlay
        w = step.write_txn = self.mvcc.write(step.txn, step.revisions) if ov is None \
            else ov.write(step.revisions)
        return w

    def _write(self, step: Step, op: Callable) -> Outcome:
        """Run one KV write request as one MVCC write txn: (response, its events)."""
        w = self._begin(step)
        return self._ended(step, w, op(w))

    def _ended(self, step: Step, w, resp) -> Outcome:
        """End a KV write request's MVCC write txn `w`: (its response, its events)."""
        w.end()
        changes = w.changes
        if w.leases_moved and self.leases is not None:  # _track, inline
            step.touched_leases = self.leases.track(step.txn, changes)
        step.event_bytes = w.changes_bytes
        step.rows = w.rows
        return resp, changes

    def _track(self, txn: lmdb.Transaction, changes: list) -> None:
        """Attach and detach keys to and from their leases, as the changes say."""
        if self.leases is not None and changes:
            self.leases.track(txn, changes)

    def _lease_exists(self, step: Step) -> Callable[[int], bool]:
        """Whether a lease exists as of this request (earlier entries of its batch included).
        The batch's key requests share one txn (applier.py): one function per txn, not
        per request (each object made per request adds to the garbage collector's work)."""
        txn = step.txn
        if txn is not self._exists_txn:
            leases = self.leases
            if leases is None:
                self._exists = _no_lease
            else:
                self._exists = lambda lease_id: leases.exists(txn, lease_id)
            self._exists_txn = txn
        return self._exists

    def put(self, step: Step) -> Outcome:
        w = self._begin(step)
        resp = apply_put(w, step.req.put, self._lease_exists(step))
        return self._ended(step, w, resp)

    def delete_range(self, step: Step) -> Outcome:
        return self._write(step, lambda w: apply_delete_range(w, step.req.delete_range))

    def txn(self, step: Step) -> Outcome:
        w = self._begin(step)
        resp = apply_txn(w, step.req.txn, self._lease_exists(step))
        return self._ended(step, w, resp)

    def compaction(self, step: Step) -> Outcome:
        """The logical compaction; the physical one is the compactor's, after commit."""
        self.mvcc.compact(step.txn, step.req.compaction.revision)
        resp = pb.CompactionResponse()
        resp.header.revision = self.mvcc.write(step.txn).current_revision
        return resp, []

    # -------------------------------------------------------------- leases

    def lease_grant(self, step: Step) -> Outcome:
        r = step.req.lease_grant
        ttl = self.leases.grant(step.txn, r)
        step.lease_changes = [("grant", r.ID, ttl)]
        resp = pb.LeaseGrantResponse(ID=r.ID, TTL=ttl)
        resp.header.revision = self.mvcc.write(step.txn).current_revision
        return resp, []

    def lease_revoke(self, step: Step) -> Outcome:
        """Deletes every attached key in one MVCC txn (one revision), then the lease."""
        lease_id = step.req.lease_revoke.ID
        w = self.mvcc.write(step.txn)
        self.leases.revoke(step.txn, w, lease_id)
        resp = pb.LeaseRevokeResponse()
        resp.header.revision = w.end()
        self._track(step.txn, w.changes)
        step.event_bytes = w.changes_bytes
        step.lease_changes = [("revoke", lease_id)]
        return resp, w.changes

    def lease_checkpoint(self, step: Step) -> Outcome:
        """Remaining TTLs for the lessor only: nothing durable changes (etcd keeps them
        in memory too)."""
        step.lease_changes = [("checkpoint", cp.ID, cp.remaining_TTL)
                              for cp in step.req.lease_checkpoint.checkpoints]
        return pb.LeaseCheckpointResponse(), []

    # ------------------------------------------------------ cluster, auth

    def member_attributes(self, step: Step) -> Outcome:
        a = step.req.member_attributes
        members = set_attributes(self.members.members(step.txn), a.member_id, a.name,
                                 list(a.client_urls))
        self.members.set_members(step.txn, members)
        return None, []

    def alarm(self, step: Step) -> Outcome:
        resp = apply_alarm(step.txn, self.backend.meta, step.req.alarm)
        self.alarms.load(step.txn)
        return resp, []

    def auth_request(self, step: Step) -> Outcome:
        """Users, roles, auth enable/disable, authenticate: the auth store applies them."""
        kind = step.kind
        resp = self.auth.apply(step.txn, kind, getattr(step.req, kind), step.auth_info,
                               step.index)
        resp.header.revision = self.mvcc.write(step.txn).current_revision
        return resp, []
