"""The Auth API against real etcd 3.5: the same calls to both, responses and errors compared.

Each step is (service, method, request, caller); the caller's token comes from an
Authenticate made on the same server, so both servers see the same story. Headers
lose cluster_id, member_id and raft_term; Authenticate tokens are compared by shape.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import text_format

from etcdproto.authpb import auth_pb2
from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from tests.harness import etcd_process, kubekv_process

P = auth_pb2.Permission


def perm(t, key: bytes, end: bytes = b"") -> auth_pb2.Permission:
    return P(permType=t, key=key, range_end=end)


A, KV, M = "Auth", "KV", "Maintenance"
LONG = "l" * 500

# (service, method, request, caller): caller None = no token, "bad" = a bogus token
SCRIPT = [
    (A, "AuthStatus", pb.AuthStatusRequest(), None),
    (A, "UserList", pb.AuthUserListRequest(), None),
    (A, "UserAdd", pb.AuthUserAddRequest(name="", password="x"), None),
    (A, "UserAdd", pb.AuthUserAddRequest(name="root", password="rootpw"), None),
    (A, "UserAdd", pb.AuthUserAddRequest(name="root", password="again"), None),
    (A, "UserAdd", pb.AuthUserAddRequest(name="alice", password="alicepw"), None),
    (A, "UserAdd", pb.AuthUserAddRequest(name="nopw", options=auth_pb2.UserAddOptions(
        no_password=True)), None),
    (A, "UserAdd", pb.AuthUserAddRequest(name="empty", password=""), None),
    (A, "UserGet", pb.AuthUserGetRequest(name="nobody"), None),
    (A, "UserList", pb.AuthUserListRequest(), None),
    (A, "RoleAdd", pb.AuthRoleAddRequest(name=""), None),
    (A, "RoleAdd", pb.AuthRoleAddRequest(name="r"), None),
    (A, "RoleAdd", pb.AuthRoleAddRequest(name="r"), None),
    (A, "RoleAdd", pb.AuthRoleAddRequest(name="s"), None),
    (A, "RoleGet", pb.AuthRoleGetRequest(role="nope"), None),
    (A, "RoleGet", pb.AuthRoleGetRequest(role="root"), None),
    (A, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name="nope", perm=perm(P.READ, b"a")), None),
    (A, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name="r", perm=perm(P.READWRITE, b"foo")), None),
    (A, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name="r", perm=perm(P.READ, b"a", b"c")), None),
    (A, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name="r", perm=perm(P.WRITE, b"p/", b"p0")), None),
    (A, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name="r", perm=perm(P.WRITE, b"a", b"c")), None),  # updates the [a, c) grant
    (A, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name="r", perm=perm(P.READ, b"k", b"\x00")), None),
    (A, "RoleGet", pb.AuthRoleGetRequest(role="r"), None),
    (A, "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="r", key=b"zz"), None),
    (A, "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="x", key=b"a"), None),
    (A, "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(
        role="r", key=b"k", range_end=b"\x00"), None),
    (A, "RoleList", pb.AuthRoleListRequest(), None),
    (A, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="nobody", role="r"), None),
    (A, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="nope"), None),
    (A, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="s"), None),
    (A, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="r"), None),
    (A, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="r"), None),
    (A, "UserGet", pb.AuthUserGetRequest(name="alice"), None),
    (A, "UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="alice", role="x"), None),
    (A, "UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="nobody", role="x"), None),
    (A, "UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="alice", role="s"), None),
    (A, "UserChangePassword", pb.AuthUserChangePasswordRequest(name="nobody", password="x"),
     None),
    # names and keys longer than LMDB's 511-byte key limit, sharing a long prefix
    *[(A, "UserAdd", pb.AuthUserAddRequest(name=LONG + t, password="x"), None)
      for t in ("b", "a", "c" * 900)],
    *[(A, "RoleAdd", pb.AuthRoleAddRequest(name=LONG + t), None) for t in ("y", "x")],
    (A, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name=LONG + "x", perm=perm(P.READ, LONG.encode() + b"k", LONG.encode() + b"l")), None),
    (A, "UserGrantRole", pb.AuthUserGrantRoleRequest(user=LONG + "a", role=LONG + "x"), None),
    (A, "UserGrantRole", pb.AuthUserGrantRoleRequest(user=LONG + "a", role=LONG + "y"), None),
    (A, "UserList", pb.AuthUserListRequest(), None),
    (A, "RoleList", pb.AuthRoleListRequest(), None),
    (A, "UserGet", pb.AuthUserGetRequest(name=LONG + "a"), None),
    (A, "RoleGet", pb.AuthRoleGetRequest(role=LONG + "x"), None),
    (A, "RoleDelete", pb.AuthRoleDeleteRequest(role=LONG + "y"), None),
    (A, "UserGet", pb.AuthUserGetRequest(name=LONG + "a"), None),
    (A, "UserDelete", pb.AuthUserDeleteRequest(name=LONG + "c" * 900), None),
    (A, "UserList", pb.AuthUserListRequest(), None),
    (A, "AuthStatus", pb.AuthStatusRequest(), None),
    (A, "Authenticate", pb.AuthenticateRequest(name="alice", password="alicepw"), None),
    (A, "AuthEnable", pb.AuthEnableRequest(), None),  # root lacks the root role
    (A, "UserDelete", pb.AuthUserDeleteRequest(name="nobody"), None),
    (A, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"), None),
    (A, "AuthEnable", pb.AuthEnableRequest(), None),
    (A, "AuthEnable", pb.AuthEnableRequest(), "root"),
    (A, "Authenticate", pb.AuthenticateRequest(name="alice", password="bad"), None),
    (A, "Authenticate", pb.AuthenticateRequest(name="nobody", password="x"), None),
    (A, "Authenticate", pb.AuthenticateRequest(name="nopw", password=""), None),
    (A, "Authenticate", pb.AuthenticateRequest(name="alice", password="alicepw"), None),
    (A, "AuthStatus", pb.AuthStatusRequest(), None),
    (A, "UserList", pb.AuthUserListRequest(), None),
    (A, "UserList", pb.AuthUserListRequest(), "bad"),
    (A, "UserList", pb.AuthUserListRequest(), "alice"),
    (A, "UserList", pb.AuthUserListRequest(), "root"),
    (A, "UserGet", pb.AuthUserGetRequest(name="alice"), "alice"),
    (A, "UserGet", pb.AuthUserGetRequest(name="root"), "alice"),
    (A, "UserGet", pb.AuthUserGetRequest(name="nobody"), "alice"),
    (A, "RoleGet", pb.AuthRoleGetRequest(role="r"), "alice"),
    (A, "RoleGet", pb.AuthRoleGetRequest(role="root"), "alice"),
    (A, "UserAdd", pb.AuthUserAddRequest(name="bob", password="b"), "alice"),
    (A, "UserDelete", pb.AuthUserDeleteRequest(name="root"), "root"),
    (A, "RoleDelete", pb.AuthRoleDeleteRequest(role="root"), "root"),
    (A, "UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="root", role="root"), "root"),
    (KV, "Put", pb.PutRequest(key=b"foo", value=b"1"), None),
    (KV, "Put", pb.PutRequest(key=b"foo", value=b"1"), "bad"),
    (KV, "Put", pb.PutRequest(key=b"foo", value=b"1"), "alice"),
    (KV, "Put", pb.PutRequest(key=b"bar", value=b"1"), "alice"),
    (KV, "Put", pb.PutRequest(key=b"foo", value=b"2", prev_kv=True), "alice"),
    (KV, "Put", pb.PutRequest(key=b"b", value=b"1"), "alice"),
    (KV, "Range", pb.RangeRequest(key=b"foo"), "alice"),
    (KV, "Range", pb.RangeRequest(key=b"foo"), None),
    (KV, "Range", pb.RangeRequest(key=b"a", range_end=b"c"), "alice"),
    (KV, "Range", pb.RangeRequest(key=b"bar"), "alice"),
    (KV, "DeleteRange", pb.DeleteRangeRequest(key=b"p/", range_end=b"p0"), "alice"),
    (KV, "DeleteRange", pb.DeleteRangeRequest(key=b"p/", range_end=b"p0", prev_kv=True),
     "alice"),
    (KV, "Txn", pb.TxnRequest(compare=[pb.Compare(key=b"foo", target=pb.Compare.VERSION)],
                              success=[pb.RequestOp(request_put=pb.PutRequest(key=b"b"))],
                              failure=[pb.RequestOp(request_range=pb.RangeRequest(
                                  key=b"zz"))]), "alice"),
    (KV, "Txn", pb.TxnRequest(compare=[pb.Compare(key=b"foo", target=pb.Compare.VERSION)],
                              success=[pb.RequestOp(request_range=pb.RangeRequest(
                                  key=b"foo"))]), "alice"),
    (KV, "Range", pb.RangeRequest(key=b"foo"), "root"),
    (M, "HashKV", pb.HashKVRequest(), None),
    (M, "HashKV", pb.HashKVRequest(), "alice"),
    (A, "RoleDelete", pb.AuthRoleDeleteRequest(role="r"), "root"),
    (A, "UserGet", pb.AuthUserGetRequest(name="alice"), "root"),
    (KV, "Range", pb.RangeRequest(key=b"foo"), "alice"),
    (A, "UserChangePassword", pb.AuthUserChangePasswordRequest(name="alice", password="new"),
     "root"),
    (A, "Authenticate", pb.AuthenticateRequest(name="alice", password="alicepw"), None),
    (A, "Authenticate", pb.AuthenticateRequest(name="alice", password="new"), None),
    (A, "AuthDisable", pb.AuthDisableRequest(), "alice"),
    (A, "AuthDisable", pb.AuthDisableRequest(), "root"),
    (KV, "Range", pb.RangeRequest(key=b"foo"), "root"),  # a token from before: dropped
    (A, "AuthDisable", pb.AuthDisableRequest(), None),
    (A, "AuthStatus", pb.AuthStatusRequest(), None),
    (A, "Authenticate", pb.AuthenticateRequest(name="alice", password="new"), None),
    (KV, "Range", pb.RangeRequest(key=b"foo"), None),
    (A, "RoleDelete", pb.AuthRoleDeleteRequest(role="root"), None),
    (A, "UserDelete", pb.AuthUserDeleteRequest(name="root"), None),
    (A, "UserList", pb.AuthUserListRequest(), None),
]


class Client:
    """Runs the script on one server, authenticating users (once each) as the script needs."""

    PASSWORDS = {"root": "rootpw", "alice": "alicepw"}

    def __init__(self, endpoint: str) -> None:
        self.ch = grpc.insecure_channel(endpoint)
        self.stubs = {A: rpc_pb2_grpc.AuthStub(self.ch), KV: rpc_pb2_grpc.KVStub(self.ch),
                      M: rpc_pb2_grpc.MaintenanceStub(self.ch)}
        self.tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user == "bad":
            return "notatoken.1"
        if user not in self.tokens:
            resp = self.stubs[A].Authenticate(
                pb.AuthenticateRequest(name=user, password=self.PASSWORDS[user]), timeout=10)
            self.tokens[user] = resp.token
        return self.tokens[user]

    def call(self, service, method, request, caller) -> str:
        md = [("token", self.token(caller))] if caller else []
        try:
            resp = getattr(self.stubs[service], method)(request, metadata=md, timeout=10)
        except grpc.RpcError as exc:
            return f"error {exc.code().name}: {exc.details()}"
        if method == "Authenticate":
            assert resp.token
            resp.token = "<token>"
        if resp.HasField("header"):
            resp.header.cluster_id = resp.header.member_id = resp.header.raft_term = 0
        return f"{type(resp).__name__} {text_format.MessageToString(resp, as_one_line=True)}"

    def close(self) -> None:
        self.ch.close()


@pytest.fixture
def pair(tmp_path):
    k = kubekv_process(tmp_path / "k")
    e = etcd_process(tmp_path / "e")
    (tmp_path / "k").mkdir()
    (tmp_path / "e").mkdir()
    k.start()
    e.start()
    yield k, e
    k.stop()
    e.stop()


def test_auth_api_matches_etcd(pair):
    k, e = pair
    ck, ce = Client(k.endpoint), Client(e.endpoint)
    try:
        mismatches = []
        for i, step in enumerate(SCRIPT):
            got, want = ck.call(*step), ce.call(*step)
            if got != want:
                mismatches.append(f"#{i} {step[0]}.{step[1]} as {step[3]}:\n"
                                  f"  kubekv: {got}\n  etcd:   {want}")
        assert not mismatches, "\n".join(mismatches)
    finally:
        ck.close()
        ce.close()
