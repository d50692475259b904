"""etcdserverpb.Auth: users, roles, permissions, enable/disable, Authenticate (v3rpc/auth.go).

Every request goes through the log, as in etcd (the reads too, so they are
linearizable and checked where etcd checks them: in the applier). Passwords are
hashed here, on a worker thread, and only the hash is logged (etcd 3.5's
hashedPassword); Authenticate checks the password here and logs only the user
name and the random part of a simple token.
"""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from etcdproto.kubekvpb import internal_pb2
from kubekv_server.api.status import etcd_errors
from kubekv_server.auth.password import hash_password
from kubekv_server.member.member import Member
from kubekv_server.rpc.calls import inline


def _logged(kind: str):
    @inline
    @etcd_errors
    def handler(self, request, context):
        return self.member.propose_future(kind, request)

    handler.__name__ = kind
    return handler


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    AuthEnable = _logged("auth_enable")
    AuthDisable = _logged("auth_disable")
    AuthStatus = _logged("auth_status")
    UserGet = _logged("auth_user_get")
    UserList = _logged("auth_user_list")
    UserDelete = _logged("auth_user_delete")
    UserGrantRole = _logged("auth_user_grant_role")
    UserRevokeRole = _logged("auth_user_revoke_role")
    RoleAdd = _logged("auth_role_add")
    RoleGet = _logged("auth_role_get")
    RoleList = _logged("auth_role_list")
    RoleDelete = _logged("auth_role_delete")
    RoleGrantPermission = _logged("auth_role_grant_permission")
    RoleRevokePermission = _logged("auth_role_revoke_permission")

    @etcd_errors
    def UserAdd(self, request, context):
        """Worker thread: hashing takes tens of milliseconds."""
        r = pb.AuthUserAddRequest()
        r.CopyFrom(request)
        if not r.options.no_password:
            r.hashedPassword = hash_password(r.password, self.member.password_iterations)
            r.password = ""
        return self.member.propose("auth_user_add", r)

    @etcd_errors
    def UserChangePassword(self, request, context):
        r = pb.AuthUserChangePasswordRequest(name=request.name,
                                             hashedPassword=hash_password(
                                                 request.password,
                                                 self.member.password_iterations))
        return self.member.propose("auth_user_change_password", r)

    @etcd_errors
    def Authenticate(self, request, context):
        """etcd's Authenticate: a linearizable read, the password check, then the log (which
        issues the token on every member); again if the auth store changed meanwhile."""
        m = self.member
        store = m.auth
        m.wait_linearizable()
        while True:
            checked = store.check_password(request.name, request.password)
            r = internal_pb2.InternalAuthenticateRequest(
                name=request.name, simple_token=store.tokens.gen_prefix())
            resp = m.propose("authenticate", r)
            if checked == store.revision:
                return resp
