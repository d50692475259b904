"""The auth store: users, roles and permissions in the state db, changed only through the log.

etcd's auth/store.go with its apply-time checks (etcdserver/apply_auth.go). Three
sub-databases of the state environment: `auth_users` (name → authpb.User),
`auth_roles` (name → authpb.Role) and `auth` (the enabled flag and the auth
revision, which every change of users, roles or permissions increments).

Changes run in the applier's transaction (`apply`). Permission checks read the
current state; the per-user union of role permissions is cached and dropped
whenever the auth revision moves.
"""

from __future__ import annotations

import bisect
import struct
import threading
from typing import NamedTuple

import grpc
import lmdb

from etcdproto.authpb import auth_pb2
from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server import errors
from kubekv_server.auth import perms
from kubekv_server.auth.tokens import VerifyOnlyError
from kubekv_server.errors import EtcdError
from kubekv_server.mvcc.stored_key import stored

ROOT_USER = "root"
ROOT_ROLE = "root"
_U64 = struct.Struct(">Q")
_ENABLED = b"authEnabled"
_REVISION = b"authRevision"

PERMISSION_NOT_GIVEN = EtcdError(errors.INVALID_AUTH_MGMT.code, "etcdserver: permission not given")
# etcd's ErrNoPasswordUser is not in its rpctypes table, so clients get it raw (code Unknown).
NO_PASSWORD_USER = EtcdError(
    grpc.StatusCode.UNKNOWN, "auth: authentication failed, password was given for no password user"
)


class TokenPending(Exception):
    """A simple token issued at a log index this member has not applied yet (etcd waits for
    that index before deciding, in isValidSimpleToken)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class AuthInfo(NamedTuple):
    """Who makes a request: the user and the auth revision its credentials were checked at."""

    username: str
    revision: int


EMPTY = AuthInfo("", 0)
_ROOT = object()  # cache marker: the user has the root role

# Requests that need the root role (etcd 3.5's needAdminPermission).
ADMIN_KINDS = frozenset({
    "auth_enable", "auth_status", "auth_disable", "auth_user_add", "auth_user_delete",
    "auth_user_change_password", "auth_user_grant_role", "auth_user_revoke_role",
    "auth_role_add", "auth_role_grant_permission", "auth_role_revoke_permission",
    "auth_role_delete", "auth_user_list", "auth_role_list",
})
KINDS = ADMIN_KINDS | {"authenticate", "auth_user_get", "auth_role_get"}


def _has_root_role(user: auth_pb2.User) -> bool:
    return ROOT_ROLE in user.roles


class AuthStore:
    def rebind(self, backend) -> None:
        """Take the backend's (possibly new) environment and handles."""
        self.env = backend.env
        self.users_db = backend.open_db(b"auth_users")
        self.roles_db = backend.open_db(b"auth_roles")
        self.meta_db = backend.open_db(b"auth")

    def __init__(self, backend, tokens, client_cert_auth: bool = False,
                 applied_index=None) -> None:
        self.rebind(backend)
        self.tokens = tokens
        self.client_cert_auth = client_cert_auth
        # () -> the applied index; with a simple token from the future (issued by an entry
        # this member has not applied yet) auth_info raises TokenPending
        self.applied_index = applied_index
        self._lock = threading.Lock()
        self._cache: dict[str, object] = {}
        self._cache_rev = -1
        self.enabled = False
        self.revision = 1
        self.reload()

    def reload(self) -> None:
        """Re-read the flag and revision (start-up, or after a snapshot replaced the state)."""
        with self.env.begin() as txn:
            self.enabled = txn.get(_ENABLED, db=self.meta_db) == b"\x01"
            raw = txn.get(_REVISION, db=self.meta_db)
        # etcd commits revision 1 when it creates the store; a missing key means 1 here.
        self.revision = max(_U64.unpack(raw)[0] if raw else 0, 1)
        if self.enabled:
            self.tokens.enable()
        else:
            self.tokens.disable()
        with self._lock:
            self._cache.clear()

    # ------------------------------------------------------------ reading

    def user(self, txn: lmdb.Transaction, name: str) -> auth_pb2.User | None:
        raw = txn.get(stored(name.encode()), db=self.users_db)
        return auth_pb2.User.FromString(raw) if raw is not None else None

    def role(self, txn: lmdb.Transaction, name: str) -> auth_pb2.Role | None:
        raw = txn.get(stored(name.encode()), db=self.roles_db)
        return auth_pb2.Role.FromString(raw) if raw is not None else None

    def _all(self, txn: lmdb.Transaction, db, cls):
        """Every user or role, by name (names are stored as ``mvcc.stored_key`` forms)."""
        return sorted((cls.FromString(v) for _, v in txn.cursor(db=db)), key=lambda m: m.name)

    def _read(self, txn, fn, *args):
        if txn is not None:
            return fn(txn, *args)
        with self.env.begin() as t:
            return fn(t, *args)

    # ------------------------------------------------------ credentials

    def auth_info(self, ctx) -> AuthInfo:
        """The caller of an RPC: its token, else (with --client-cert-auth) its client
        certificate's common name; EMPTY when it brings neither (etcd's AuthInfoFromCtx)."""
        token = ctx.metadata_value("token") or ctx.metadata_value("authorization")
        if token:
            found = self.tokens.info(token, self.revision)
            if found is None:
                index = getattr(self.tokens, "index_of", lambda _t: None)(token)
                if index is not None and self.applied_index is not None \
                        and index > self.applied_index():
                    raise TokenPending(index)
                raise errors.INVALID_AUTH_TOKEN
            return AuthInfo(*found)
        if self.client_cert_auth:
            tls = ctx.auth_context()
            if "x509_pem_cert" in tls and ctx.metadata_value("grpcgateway-accept") is None:
                cn = tls.get("x509_common_name", [b""])[0].decode("utf-8", "replace")
                return AuthInfo(cn, self.revision)
        return EMPTY

    def check_password(self, name: str, password: str) -> int:
        """The auth revision at which name/password were found valid (etcd's CheckPassword)."""
        from kubekv_server.auth.password import check_password

        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED
        with self.env.begin() as txn:
            user = self.user(txn, name)
            raw = txn.get(_REVISION, db=self.meta_db)
        revision = max(_U64.unpack(raw)[0] if raw else 0, 1)
        if user is None:
            raise errors.AUTH_FAILED
        if user.options.no_password:
            raise NO_PASSWORD_USER
        if not check_password(user.password, password):
            raise errors.AUTH_FAILED
        return revision

    # ------------------------------------------------------ permissions

    def _perms(self, txn, username: str):
        with self._lock:
            if self._cache_rev != self.revision:
                self._cache.clear()
                self._cache_rev = self.revision
            found = self._cache.get(username)
        if found is not None:
            return found
        user = self._read(txn, self.user, username)
        if user is None:
            return None
        if _has_root_role(user):
            found = _ROOT
        else:
            roles = [r for r in (self._read(txn, self.role, n) for n in user.roles) if r]
            found = perms.merge(roles)
        with self._lock:
            if self._cache_rev == self.revision:
                self._cache[username] = found
        return found

    def is_op_permitted(self, ai: AuthInfo, key: bytes, range_end: bytes, write: bool,
                        txn=None) -> None:
        """Raise etcd's error unless ai may read (or write) [key, range_end)."""
        if not self.enabled:
            return
        if ai.revision == 0:
            raise errors.USER_EMPTY
        if ai.revision < self.revision:
            raise errors.AUTH_OLD_REVISION
        found = self._perms(txn, ai.username)
        if found is None:
            raise errors.PERMISSION_DENIED
        if found is _ROOT or found.permitted(key, range_end, write):
            return
        raise errors.PERMISSION_DENIED

    def is_range_permitted(self, ai, key, range_end, txn=None) -> None:
        self.is_op_permitted(ai, key, range_end, False, txn)

    def is_put_permitted(self, ai, key, txn=None) -> None:
        self.is_op_permitted(ai, key, b"", True, txn)

    def is_delete_permitted(self, ai, key, range_end, txn=None) -> None:
        self.is_op_permitted(ai, key, range_end, True, txn)

    def is_admin_permitted(self, ai: AuthInfo, txn=None) -> None:
        if not self.enabled:
            return
        if not ai.username:
            raise errors.USER_EMPTY
        user = self._read(txn, self.user, ai.username)
        if user is None:
            raise errors.USER_NOT_FOUND
        if not _has_root_role(user):
            raise errors.PERMISSION_DENIED

    def has_role(self, username: str, role: str, txn=None) -> bool:
        user = self._read(txn, self.user, username)
        return user is not None and role in user.roles

    def check_txn(self, ai: AuthInfo, r: pb.TxnRequest, txn=None) -> None:
        """etcd's checkTxnAuth: compares need read, then every op of both branches."""
        for c in r.compare:
            self.is_range_permitted(ai, c.key, c.range_end, txn)
        self._check_ops(ai, r.success, txn)
        self._check_ops(ai, r.failure, txn)

    def _check_ops(self, ai, ops, txn) -> None:
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self.is_range_permitted(ai, op.request_range.key, op.request_range.range_end,
                                        txn)
            elif kind == "request_put":
                self.is_put_permitted(ai, op.request_put.key, txn)
            elif kind == "request_delete_range":
                d = op.request_delete_range
                if d.prev_kv:
                    self.is_range_permitted(ai, d.key, d.range_end, txn)
                self.is_delete_permitted(ai, d.key, d.range_end, txn)
            # etcd 3.5 does not look inside nested txns here; neither do we

    def check_lease_keys(self, ai: AuthInfo, keys: list[bytes], write: bool, txn=None) -> None:
        """Every key attached to a lease must be writable (revoke, attach) or readable
        (time-to-live with keys); the root role skips the check."""
        if not self.enabled or not keys:
            return
        try:
            self.is_admin_permitted(ai, txn)
            return
        except EtcdError:
            pass
        for key in keys:
            self.is_op_permitted(ai, key, b"", write, txn)

    # ------------------------------------------------------------ applying

    def _commit_revision(self, txn) -> None:
        self.revision += 1
        txn.put(_REVISION, _U64.pack(self.revision), db=self.meta_db)

    def _put_user(self, txn, user: auth_pb2.User) -> None:
        txn.put(stored(bytes(user.name)), user.SerializeToString(), db=self.users_db)

    def _put_role(self, txn, role: auth_pb2.Role) -> None:
        txn.put(stored(bytes(role.name)), role.SerializeToString(), db=self.roles_db)

    def apply(self, txn, kind: str, r, ai: AuthInfo | None, index: int):
        """Apply one auth request in the applier's transaction; ai None = trusted."""
        if ai is not None and kind in ADMIN_KINDS:
            self.is_admin_permitted(ai, txn)
        return getattr(self, "_" + kind)(txn, r, ai, index)

    def _authenticate(self, txn, r, ai, index):
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED
        user = self.user(txn, r.name)
        if user is None or user.options.no_password:
            raise errors.AUTH_FAILED
        try:
            token = self.tokens.assign(r.name, self.revision, index, r.simple_token)
        except VerifyOnlyError as exc:
            raise EtcdError(grpc.StatusCode.UNKNOWN, str(exc)) from None
        return pb.AuthenticateResponse(token=token)

    def _auth_enable(self, txn, r, ai, index):
        if not self.enabled:
            root = self.user(txn, ROOT_USER)
            if root is None:
                raise errors.ROOT_USER_NOT_EXIST
            if not _has_root_role(root):
                raise errors.ROOT_ROLE_NOT_EXIST
            txn.put(_ENABLED, b"\x01", db=self.meta_db)
            self.enabled = True
            self.tokens.enable()
            with self._lock:
                self._cache.clear()
        return pb.AuthEnableResponse()

    def _auth_disable(self, txn, r, ai, index):
        if self.enabled:
            txn.put(_ENABLED, b"\x00", db=self.meta_db)
            self._commit_revision(txn)
            self.enabled = False
            self.tokens.disable()
        return pb.AuthDisableResponse()

    def _auth_status(self, txn, r, ai, index):
        return pb.AuthStatusResponse(enabled=self.enabled, authRevision=self.revision)

    @staticmethod
    def _password(r) -> bytes:
        if r.hashedPassword:
            return r.hashedPassword.encode()
        if r.password:  # a request proposed without the API layer's hashing
            from kubekv_server.auth.password import hash_password

            return hash_password(r.password).encode()
        return b""

    def _auth_user_add(self, txn, r, ai, index):
        if not r.name:
            raise errors.USER_EMPTY
        if self.user(txn, r.name) is not None:
            raise errors.USER_ALREADY_EXIST
        user = auth_pb2.User(name=r.name.encode())
        user.options.no_password = r.options.no_password
        if not r.options.no_password:
            user.password = self._password(r)
        self._put_user(txn, user)
        self._commit_revision(txn)
        return pb.AuthUserAddResponse()

    def _auth_user_delete(self, txn, r, ai, index):
        if self.enabled and r.name == ROOT_USER:
            raise errors.INVALID_AUTH_MGMT
        if self.user(txn, r.name) is None:
            raise errors.USER_NOT_FOUND
        txn.delete(stored(r.name.encode()), db=self.users_db)
        self._commit_revision(txn)
        self.tokens.invalidate_user(r.name)
        return pb.AuthUserDeleteResponse()

    def _auth_user_change_password(self, txn, r, ai, index):
        user = self.user(txn, r.name)
        if user is None:
            raise errors.USER_NOT_FOUND
        user.password = b"" if user.options.no_password else self._password(r)
        self._put_user(txn, user)
        self._commit_revision(txn)
        self.tokens.invalidate_user(r.name)
        return pb.AuthUserChangePasswordResponse()

    def _auth_user_grant_role(self, txn, r, ai, index):
        user = self.user(txn, r.user)
        if user is None:
            raise errors.USER_NOT_FOUND
        if r.role != ROOT_ROLE and self.role(txn, r.role) is None:
            raise errors.ROLE_NOT_FOUND
        roles = list(user.roles)
        i = bisect.bisect_left(roles, r.role)
        if i < len(roles) and roles[i] == r.role:
            return pb.AuthUserGrantRoleResponse()  # already granted: no change (etcd)
        roles.insert(i, r.role)
        del user.roles[:]
        user.roles.extend(roles)
        self._put_user(txn, user)
        self._commit_revision(txn)
        return pb.AuthUserGrantRoleResponse()

    def _auth_user_get(self, txn, r, ai, index):
        if ai is not None and self.enabled:
            try:
                self.is_admin_permitted(ai, txn)
            except EtcdError:
                if r.name != ai.username:
                    raise
        user = self.user(txn, r.name)
        if user is None:
            raise errors.USER_NOT_FOUND
        return pb.AuthUserGetResponse(roles=list(user.roles))

    def _auth_user_list(self, txn, r, ai, index):
        return pb.AuthUserListResponse(
            users=[u.name.decode() for u in self._all(txn, self.users_db, auth_pb2.User)])

    def _auth_user_revoke_role(self, txn, r, ai, index):
        if self.enabled and r.name == ROOT_USER and r.role == ROOT_ROLE:
            raise errors.INVALID_AUTH_MGMT
        user = self.user(txn, r.name)
        if user is None:
            raise errors.USER_NOT_FOUND
        roles = [x for x in user.roles if x != r.role]
        if len(roles) == len(user.roles):
            raise errors.ROLE_NOT_GRANTED
        del user.roles[:]
        user.roles.extend(roles)
        self._put_user(txn, user)
        self._commit_revision(txn)
        return pb.AuthUserRevokeRoleResponse()

    def _auth_role_add(self, txn, r, ai, index):
        if not r.name:
            raise errors.ROLE_EMPTY
        if self.role(txn, r.name) is not None:
            raise errors.ROLE_ALREADY_EXIST
        self._put_role(txn, auth_pb2.Role(name=r.name.encode()))
        self._commit_revision(txn)
        return pb.AuthRoleAddResponse()

    def _auth_role_get(self, txn, r, ai, index):
        if ai is not None and self.enabled:
            try:
                self.is_admin_permitted(ai, txn)
            except EtcdError:
                if not self.has_role(ai.username, r.role, txn):
                    raise
        role = self.role(txn, r.role)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        return pb.AuthRoleGetResponse(perm=list(role.keyPermission))

    def _auth_role_list(self, txn, r, ai, index):
        return pb.AuthRoleListResponse(
            roles=[x.name.decode() for x in self._all(txn, self.roles_db, auth_pb2.Role)])

    def _auth_role_delete(self, txn, r, ai, index):
        if self.enabled and r.role == ROOT_ROLE:
            raise errors.INVALID_AUTH_MGMT
        if self.role(txn, r.role) is None:
            raise errors.ROLE_NOT_FOUND
        txn.delete(stored(r.role.encode()), db=self.roles_db)
        for user in self._all(txn, self.users_db, auth_pb2.User):
            if r.role in user.roles:
                roles = [x for x in user.roles if x != r.role]
                del user.roles[:]
                user.roles.extend(roles)
                self._put_user(txn, user)
        self._commit_revision(txn)
        return pb.AuthRoleDeleteResponse()

    def _auth_role_grant_permission(self, txn, r, ai, index):
        if not r.HasField("perm"):
            raise PERMISSION_NOT_GIVEN
        role = self.role(txn, r.name)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        existing = list(role.keyPermission)
        keys = [p.key for p in existing]
        i = bisect.bisect_left(keys, r.perm.key)
        if i < len(existing) and existing[i].key == r.perm.key \
                and existing[i].range_end == r.perm.range_end:
            role.keyPermission[i].permType = r.perm.permType
        else:
            existing.append(auth_pb2.Permission(key=r.perm.key, range_end=r.perm.range_end,
                                                permType=r.perm.permType))
            existing.sort(key=lambda p: p.key)
            del role.keyPermission[:]
            role.keyPermission.extend(existing)
        self._put_role(txn, role)
        self._commit_revision(txn)
        return pb.AuthRoleGrantPermissionResponse()

    def _auth_role_revoke_permission(self, txn, r, ai, index):
        role = self.role(txn, r.role)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        kept = [p for p in role.keyPermission if p.key != r.key or p.range_end != r.range_end]
        if len(kept) == len(role.keyPermission):
            raise errors.PERMISSION_NOT_GRANTED
        del role.keyPermission[:]
        role.keyPermission.extend(kept)
        self._put_role(txn, role)
        self._commit_revision(txn)
        return pb.AuthRoleRevokePermissionResponse()
