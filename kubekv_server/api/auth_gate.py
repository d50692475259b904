"""The one place client calls meet auth: run by the RPC layer before every handler.

`AuthGate(method path, request, context)` resolves the caller (token or client
certificate; "invalid auth token" here), makes the checks etcd makes in its API
layer, and returns the caller's AuthInfo, which the RPC layer binds to the call
(`auth/caller.py`) so that every proposal the handler makes carries
it into the log. Checks etcd makes when applying (writes, admin-only requests,
UserGet/RoleGet) run in the applier with that AuthInfo, on every member.

API-layer checks, as etcd's:
  KV Range, read-only Txn          read permission (etcd's doSerialize)
  Cluster Member*: root role; Maintenance Defragment/Snapshot/Hash/HashKV/Downgrade:
                                   root role, errors unconverted as etcd 3.5 sends them
  Lease TimeToLive (keys) / Leases read permission on the leases' keys unless root
Watch create requests are checked by the watch stream itself (watch_denied).
"""

from __future__ import annotations

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server import errors
from kubekv_server.auth.store import EMPTY, AuthInfo, AuthStore, TokenPending
from kubekv_server.errors import EtcdError
from kubekv_server.kv.txn import is_read_only
from kubekv_server.rpc.context import Deferred

_ADMIN = frozenset(
    f"/etcdserverpb.Cluster/{m}".encode()
    for m in ("MemberAdd", "MemberRemove", "MemberUpdate", "MemberPromote")
)
_MAINTENANCE_ADMIN = frozenset(
    f"/etcdserverpb.Maintenance/{m}".encode()
    for m in ("Defragment", "Snapshot", "Hash", "HashKV", "Downgrade")
)
# etcd 3.5's authMaintenanceServer returns the auth store's errors unconverted: clients
# see code Unknown and the auth package's own text.
_RAW = {
    errors.USER_EMPTY: "auth: user name is empty",
    errors.USER_NOT_FOUND: "auth: user not found",
    errors.PERMISSION_DENIED: "auth: permission denied",
    errors.INVALID_AUTH_TOKEN: "auth: invalid auth token",
}
_RANGE = b"/etcdserverpb.KV/Range"
_TXN = b"/etcdserverpb.KV/Txn"
_TTL = b"/etcdserverpb.Lease/LeaseTimeToLive"
_LEASES = b"/etcdserverpb.Lease/LeaseLeases"


class AuthGate:
    def __init__(self, store: AuthStore, member) -> None:
        self.store = store
        self.member = member

    def __call__(self, path: bytes, request, ctx) -> AuthInfo | None:
        if request is None:
            return None  # streams: checked per request inside (watch creates)
        try:
            return self._admit(path, request, ctx)
        except TokenPending:
            # a token from an Authenticate entry not applied here yet: decide once this
            # member has caught up with the leader's commit index
            barrier = self.member.read_barrier()
            if barrier is None:
                raise errors.INVALID_AUTH_TOKEN from None
            raise Deferred(barrier, errors.INVALID_AUTH_TOKEN) from None

    def _admit(self, path: bytes, request, ctx) -> AuthInfo | None:
        store = self.store
        if path in _MAINTENANCE_ADMIN:
            try:
                ai = store.auth_info(ctx)
                store.is_admin_permitted(ai)
            except EtcdError as exc:
                raise EtcdError(grpc.StatusCode.UNKNOWN, _RAW.get(exc, exc.message)) from None
            return ai
        ai = store.auth_info(ctx)
        if not store.enabled:
            return ai
        if path == _RANGE:
            store.is_range_permitted(ai, request.key, request.range_end)
        elif path == _TXN:
            if is_read_only(request):
                store.check_txn(ai, request)
        elif path in _ADMIN:
            store.is_admin_permitted(ai)
        elif path == _TTL:
            if request.keys:
                self._lease_keys(ai, [request.ID])
        elif path == _LEASES:
            self._lease_keys(ai, self.member.lessor.ids())
        return ai

    def _lease_keys(self, ai: AuthInfo, ids: list[int]) -> None:
        leases = self.member.leases
        with self.member.backend.env.begin() as txn:
            keys = [k for lease_id in ids for k in leases.keys(txn, lease_id)]
        if ai.revision == 0 and not ai.username:
            raise errors.USER_EMPTY
        self.store.check_lease_keys(ai, keys, write=False)


def watch_denied(store: AuthStore | None, ctx, c: pb.WatchCreateRequest) -> str | None:
    """None if the watch may be created, else the cancel reason etcd sends with a created and
    canceled response (v3rpc/watch.go isWatchPermitted)."""
    if store is None or not store.enabled:
        return None
    try:
        ai = store.auth_info(ctx) if ctx is not None else EMPTY
        # as etcd: an empty key is "\x00", and a range_end of "\x00" (every key >= key)
        # becomes empty, which the check then treats as the single key
        end = b"" if c.range_end == b"\x00" else c.range_end
        store.is_range_permitted(ai, c.key or b"\x00", end)
    except EtcdError as exc:
        if exc in (errors.INVALID_AUTH_TOKEN, errors.AUTH_OLD_REVISION, errors.USER_EMPTY):
            return exc.message
        return errors.PERMISSION_DENIED.message
    except TokenPending:
        return errors.INVALID_AUTH_TOKEN.message
    return None
