"""The checks around the handlers, one layer each (etcd's applierV3 wrappers).

Each layer refuses a request or passes it to the one inside it. `wrap` stacks
them in kubekv's order, which every error a client sees depends on:

    CorruptLayer → AuthLayer → NoSpaceLayer → Handlers

etcd swaps `applierV3Corrupt` / `applierV3Capped` in when the alarm is raised
(apply.go's Alarm); these layers ask the alarm cache on every request instead.
etcd's `quotaApplierV3` has no layer here: kubekv checks the quota before
proposing and raises NOSPACE (`member/quota.py`), after which NoSpaceLayer refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kubekv_server import errors
from kubekv_server.apply.alarm_state import AlarmState
from kubekv_server.apply.handlers import Outcome, Step
from kubekv_server.auth import AuthInfo, AuthStore
from kubekv_server.auth.store import KINDS as AUTH_KINDS
from kubekv_server.lease import LeaseStore
from kubekv_server.member.quota import has_put

# What etcd's applierV3Corrupt refuses while a CORRUPT alarm is raised.
CORRUPT_REFUSED = frozenset({"put", "delete_range", "txn", "compaction", "lease_grant",
                             "lease_revoke"})


class Layer(Protocol):
    """Anything that applies a step: a layer, or the handlers at the core."""

    def apply(self, step: Step) -> Outcome: ...


class CorruptLayer:
    """etcd's applierV3Corrupt: while CORRUPT is raised, changes are refused."""

    def __init__(self, inner: Layer, alarms: AlarmState) -> None:
        self.inner = inner
        self.alarms = alarms

    def apply(self, step: Step) -> Outcome:
        if self.alarms.corrupt and step.kind in CORRUPT_REFUSED:
            raise errors.CORRUPT
        return self.inner.apply(step)


class NoSpaceLayer:
    """etcd's applierV3Capped: while NOSPACE is raised, new values are refused (a put,
    a txn that may put, and a lease grant, as etcd's LeaseGrant); deletes and
    compactions still pass, to free space."""

    def __init__(self, inner: Layer, alarms: AlarmState) -> None:
        self.inner = inner
        self.alarms = alarms

    def apply(self, step: Step) -> Outcome:
        if self.alarms.nospace and (
            step.kind in ("put", "lease_grant")
            or (step.kind == "txn" and has_put(step.req.txn))
        ):
            raise errors.NO_SPACE
        return self.inner.apply(step)


class AuthLayer:
    """etcd's authApplierV3: a client's write is checked against the auth store as of
    its place in the log. Entries without `auth` are the member's own, trusted
    (step.auth_info stays None); the auth requests get the caller's AuthInfo for the
    auth store's own admin check (nothing else reads it: with auth off, no other
    request gets one)."""

    def __init__(self, inner: Layer, auth: AuthStore, leases: LeaseStore | None) -> None:
        self.inner = inner
        self.auth = auth
        self.leases = leases
        self.checks: dict[str, Callable[[Step, AuthInfo], None]] = {
            "put": self._put,
            "delete_range": self._delete_range,
            "txn": self._txn,
        }
        if leases is not None:
            self.checks["lease_revoke"] = self._lease_revoke

    def apply(self, step: Step) -> Outcome:
        req = step.req
        if req.HasField("auth") and (self.auth.enabled or step.kind in AUTH_KINDS):
            ai = AuthInfo(req.auth.username, req.auth.revision)
            if self.auth.enabled:
                check = self.checks.get(step.kind)
                if check is not None:
                    check(step, ai)
            step.auth_info = ai
        return self.inner.apply(step)

    def _put(self, step: Step, ai: AuthInfo) -> None:
        p, txn = step.req.put, step.txn
        self.auth.is_put_permitted(ai, p.key, txn)
        if p.lease and self.leases is not None:
            self.auth.check_lease_keys(ai, self.leases.keys(txn, p.lease), True, txn)
        if p.prev_kv:
            self.auth.is_range_permitted(ai, p.key, b"", txn)

    def _delete_range(self, step: Step, ai: AuthInfo) -> None:
        d, txn = step.req.delete_range, step.txn
        self.auth.is_delete_permitted(ai, d.key, d.range_end, txn)
        if d.prev_kv:
            self.auth.is_range_permitted(ai, d.key, d.range_end, txn)

    def _txn(self, step: Step, ai: AuthInfo) -> None:
        self.auth.check_txn(ai, step.req.txn, step.txn)

    def _lease_revoke(self, step: Step, ai: AuthInfo) -> None:
        keys = self.leases.keys(step.txn, step.req.lease_revoke.ID)
        self.auth.check_lease_keys(ai, keys, True, step.txn)


def wrap(core: Layer, alarms: AlarmState, auth: AuthStore | None,
         leases: LeaseStore | None) -> Layer:
    """The handlers inside their layers, in kubekv's order (see the module docstring)."""
    layer: Layer = NoSpaceLayer(core, alarms)
    if auth is not None:
        layer = AuthLayer(layer, auth, leases)
    return CorruptLayer(layer, alarms)
