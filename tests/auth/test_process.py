"""Auth on a real kubekv process, driven by etcdctl 3.5 and grpc clients."""

from __future__ import annotations

import subprocess
import threading
import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_testing import pki
from kubekv_testing.polling import wait_for
from tests.harness import etcd_binary, etcd_process, kubekv_process, running

from .conftest import ctl, ok, restart, setup_root

ROOT = "root:root"
USER = "test-user:pass"


def test_management_round_trip(kubekv):
    ep = kubekv.endpoint
    assert ok(ep, "user", "add", "alice:pw") == "User alice created"
    assert ok(ep, "user", "add", "bob", "--no-password") == "User bob created"
    assert ok(ep, "role", "add", "r1") == "Role r1 created"
    assert ok(ep, "user", "grant-role", "alice", "r1") == "Role r1 is granted to user alice"
    ok(ep, "role", "grant-permission", "r1", "read", "a", "c")
    ok(ep, "role", "grant-permission", "--prefix", "r1", "write", "p/")
    assert ok(ep, "role", "get", "r1").splitlines() == [
        "Role r1", "KV Read:", "\t[a, c)", "KV Write:", "\t[p/, p0) (prefix p/)"]
    assert ok(ep, "user", "get", "alice").splitlines() == ["User: alice", "Roles: r1"]
    assert ok(ep, "user", "list").split() == ["alice", "bob"]
    assert ok(ep, "role", "list").split() == ["r1"]
    assert ok(ep, "role", "revoke-permission", "r1", "a", "c") == \
        "Permission of range [a, c) is revoked from role r1"
    assert ok(ep, "user", "revoke-role", "alice", "r1") == "Role r1 is revoked from user alice"
    assert ok(ep, "role", "delete", "r1") == "Role r1 deleted"
    assert ok(ep, "user", "delete", "bob") == "User bob deleted"
    rc, out = ctl(ep, "user", "delete", "bob")
    assert rc != 0 and "etcdserver: user name not found" in out
    rc, out = ctl(ep, "user", "add", "alice:x")
    assert rc != 0 and "etcdserver: user name already exists" in out
    rc, out = ctl(ep, "auth", "enable")
    assert rc != 0 and "etcdserver: root user does not exist" in out
    ok(ep, "user", "add", "root:root")
    with grpc.insecure_channel(ep) as ch:  # etcdctl 3.5 would grant the role by itself
        with pytest.raises(grpc.RpcError) as err:
            rpc_pb2_grpc.AuthStub(ch).AuthEnable(pb.AuthEnableRequest())
    assert err.value.details() == "etcdserver: root user does not have root role"
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_permissions_enforced(authed):
    ep = authed.endpoint
    ok(ep, "put", "hoo", "x", user=ROOT)
    # no credentials at all
    rc, out = ctl(ep, "put", "foo", "x")
    assert rc != 0 and "etcdserver: user name is empty" in out
    rc, out = ctl(ep, "get", "foo")
    assert rc != 0 and "etcdserver: user name is empty" in out
    # wrong password / unknown user
    rc, out = ctl(ep, "put", "foo", "x", user="test-user:bad")
    assert rc != 0 and "authentication failed, invalid user ID or password" in out
    rc, out = ctl(ep, "put", "foo", "x", user="nobody:x")
    assert rc != 0 and "authentication failed" in out
    # granted key works, others are denied
    assert ok(ep, "put", "foo", "bar", user=USER) == "OK"
    assert ok(ep, "get", "foo", user=USER).split() == ["foo", "bar"]
    for args in (("put", "hoo", "y"), ("get", "hoo"), ("del", "hoo"), ("get", "f", "--prefix"),
                 ("del", "foo", "--prev-kv=false", "--from-key")):
        rc, out = ctl(ep, *args, user=USER)
        assert rc != 0 and "etcdserver: permission denied" in out, args
    # admin-only operations
    for args in (("user", "list"), ("role", "list"), ("user", "add", "x:y"),
                 ("auth", "disable"), ("endpoint", "hashkv"), ("member", "add", "m",
                 "--peer-urls=http://127.0.0.1:1")):
        rc, out = ctl(ep, *args, user=USER)
        assert rc != 0 and "permission denied" in out, (args, out)
    # a user sees itself and its roles, not others
    assert "Roles: test-role" in ok(ep, "user", "get", "test-user", user=USER)
    assert "Role test-role" in ok(ep, "role", "get", "test-role", user=USER)
    rc, out = ctl(ep, "role", "get", "root", user=USER)
    assert rc != 0 and "permission denied" in out
    # root may do anything; root cannot lose its role while auth is on
    assert ok(ep, "get", "hoo", user=ROOT).split() == ["hoo", "x"]
    for args in (("user", "delete", "root"), ("role", "delete", "root"),
                 ("user", "revoke-role", "root", "root")):
        rc, out = ctl(ep, *args, user=ROOT)
        assert rc != 0 and "etcdserver: invalid auth management" in out
    # a role change takes effect at once
    ok(ep, "role", "grant-permission", "test-role", "readwrite", "hoo", user=ROOT)
    assert ok(ep, "put", "hoo", "z", user=USER) == "OK"
    ok(ep, "user", "revoke-role", "test-user", "test-role", user=ROOT)
    rc, out = ctl(ep, "put", "foo", "x", user=USER)
    assert rc != 0 and "permission denied" in out
    # disabling auth opens everything again (Authenticate's "not enabled" is ignored)
    assert ok(ep, "auth", "disable", user=ROOT) == "Authentication Disabled"
    assert ok(ep, "put", "hoo", "free") == "OK"
    assert ok(ep, "put", "hoo", "free2", user=USER) == "OK"


def test_txn_with_mixed_permissions(authed):
    ep = authed.endpoint
    ok(ep, "role", "grant-permission", "test-role", "read", "r", user=ROOT)
    ok(ep, "role", "grant-permission", "test-role", "write", "w", user=ROOT)
    ok(ep, "put", "r", "1", user=ROOT)

    def txn(script: str) -> tuple[int, str]:
        rc, out = ctl(ep, "txn", user=USER, input=script)
        return rc, "\n".join(line for line in out.splitlines() if line)

    rc, out = txn('value("r") = "1"\n\nput w yes\n\nput w no\n\n')
    assert rc == 0 and out.splitlines()[:2] == ["SUCCESS", "OK"]
    # comparing on a key without read permission
    rc, out = txn('value("w") = "1"\n\nput w a\n\n\n')
    assert rc != 0 and "permission denied" in out
    # the branch not taken is checked too
    rc, out = txn('value("r") = "1"\n\nput w a\n\nput r b\n\n')
    assert rc != 0 and "permission denied" in out
    # reading a write-only key inside a txn
    rc, out = txn('value("r") = "1"\n\nget w\n\n\n')
    assert rc != 0 and "permission denied" in out
    rc, out = txn('value("r") = "1"\n\nget r\n\n\n')
    assert rc == 0 and out.splitlines() == ["SUCCESS", "r", "1"]
    assert ok(ep, "get", "w", "--print-value-only", user=ROOT) == "yes"


def _watch_lines(ep: str, *args: str, user: str, expect: tuple[str, ...],
                 timeout: float = 15.0) -> str:
    """Run `etcdctl watch` until its output holds every string in `expect` (or the
    timeout passes); returns what it printed."""
    p = subprocess.Popen([etcd_binary("etcdctl"), f"--endpoints={ep}", "--user", user,
                          "watch", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    out: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in p.stdout:
            out.append(line)
            if all(e in "".join(out) for e in expect):
                done.set()
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    done.wait(timeout)
    p.terminate()
    p.wait(10)
    reader.join(10)
    return "".join(out)


def test_watch_under_auth(authed):
    ep = authed.endpoint
    ok(ep, "role", "grant-permission", "test-role", "readwrite", "key", "key4", user=ROOT)
    ok(ep, "put", "key1", "v1", user=USER)
    ok(ep, "put", "key2", "v2", user=USER)
    out = _watch_lines(ep, "key", "key3", "--rev", "1", user=USER,
                       expect=("key1\nv1", "key2\nv2"))
    assert "key1\nv1" in out and "key2\nv2" in out
    out = _watch_lines(ep, "key5", "--rev", "1", user=USER,
                       expect=("etcdserver: permission denied",))
    assert "etcdserver: permission denied" in out
    # a raw stream: the refused watch is created and canceled at once, id -1
    ch = grpc.insecure_channel(ep)
    try:
        token = rpc_pb2_grpc.AuthStub(ch).Authenticate(
            pb.AuthenticateRequest(name="test-user", password="pass")).token
        reqs = iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"zzz"))])
        stream = rpc_pb2_grpc.WatchStub(ch).Watch(reqs, metadata=[("token", token)])
        first = next(stream)
        assert (first.watch_id, first.created, first.canceled) == (-1, True, True)
        assert first.cancel_reason == "etcdserver: permission denied"
        stream.cancel()
        reqs = iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"key1"))])
        stream = rpc_pb2_grpc.WatchStub(ch).Watch(reqs, metadata=[("token", "bad.1")])
        first = next(stream)
        assert first.canceled and first.cancel_reason == "etcdserver: invalid auth token"
        stream.cancel()
    finally:
        ch.close()


def test_lease_under_auth(authed):
    ep = authed.endpoint
    out = ok(ep, "lease", "grant", "60", user=USER)
    lease = out.split()[1]
    assert ok(ep, "put", "foo", "v", "--lease", lease, user=USER) == "OK"
    out = ok(ep, "lease", "timetolive", lease, "--keys", user=USER)
    assert "attached keys([foo])" in out
    # another user may not revoke a lease holding keys it cannot write
    ok(ep, "user", "add", "other:pw", user=ROOT)
    ok(ep, "role", "add", "other-role", user=ROOT)
    ok(ep, "user", "grant-role", "other", "other-role", user=ROOT)
    rc, out = ctl(ep, "lease", "revoke", lease, user="other:pw")
    assert rc != 0 and "permission denied" in out
    rc, out = ctl(ep, "lease", "timetolive", lease, "--keys", user="other:pw")
    assert rc != 0 and "permission denied" in out
    assert lease in ok(ep, "lease", "list", user=USER)
    assert "revoked" in ok(ep, "lease", "revoke", lease, user=USER)
    assert ok(ep, "get", "foo", user=USER) == ""
    # an expiring lease is revoked by the member itself, whatever auth says
    lease = ok(ep, "lease", "grant", "2", user=USER).split()[1]
    ok(ep, "put", "foo", "short", "--lease", lease, user=USER)
    wait_for(lambda: ok(ep, "get", "foo", user=USER) == "", 10, "the lease's key to go",
             interval=0.3)


def test_auth_state_survives_restart_and_tokens_do_not(authed):
    ep = authed.endpoint
    ch = grpc.insecure_channel(ep)
    token = rpc_pb2_grpc.AuthStub(ch).Authenticate(
        pb.AuthenticateRequest(name="test-user", password="pass")).token
    kv = rpc_pb2_grpc.KVStub(ch)
    kv.Put(pb.PutRequest(key=b"foo", value=b"1"), metadata=[("token", token)])
    ch.close()
    restart(authed)
    ch = grpc.insecure_channel(ep)
    kv = rpc_pb2_grpc.KVStub(ch)
    with pytest.raises(grpc.RpcError) as err:
        kv.Put(pb.PutRequest(key=b"foo", value=b"2"), metadata=[("token", token)])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "etcdserver: invalid auth token"
    ch.close()
    assert ok(ep, "put", "foo", "3", user=USER) == "OK"
    rc, out = ctl(ep, "put", "hoo", "3", user=USER)
    assert rc != 0 and "permission denied" in out
    st = ok(ep, "auth", "status", user=ROOT)
    assert "Authentication Status: true" in st


def test_password_change_invalidates_tokens(authed):
    ch = grpc.insecure_channel(authed.endpoint)
    try:
        auth = rpc_pb2_grpc.AuthStub(ch)
        token = auth.Authenticate(pb.AuthenticateRequest(name="test-user", password="pass")).token
        root = auth.Authenticate(pb.AuthenticateRequest(name="root", password="root")).token
        auth.UserChangePassword(pb.AuthUserChangePasswordRequest(name="test-user", password="n"),
                                metadata=[("token", root)])
        with pytest.raises(grpc.RpcError) as err:
            rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"foo"),
                                          metadata=[("token", token)])
        assert err.value.details() == "etcdserver: invalid auth token"
        with pytest.raises(grpc.RpcError) as err:
            auth.Authenticate(pb.AuthenticateRequest(name="test-user", password="pass"))
        assert "authentication failed" in err.value.details()
        assert auth.Authenticate(pb.AuthenticateRequest(name="test-user", password="n")).token
    finally:
        ch.close()


def test_jwt_tokens_expire(tmp_path):
    # a certificate as pub-key, as etcd's e2e suite passes server.crt
    pki.self_signed(tmp_path, "jwt", pki.rsa_key())
    key, cert = tmp_path / "jwt.key", tmp_path / "jwt.pem"
    proc = kubekv_process(tmp_path, "--auth-token",
                          f"jwt,pub-key={cert},priv-key={key},sign-method=RS256,ttl=1s")
    proc.start()
    try:
        ep = proc.endpoint
        setup_root(ep)
        assert ok(ep, "put", "foo", "1", user=USER) == "OK"
        ch = grpc.insecure_channel(ep)
        auth = rpc_pb2_grpc.AuthStub(ch)
        kv = rpc_pb2_grpc.KVStub(ch)
        token = auth.Authenticate(pb.AuthenticateRequest(name="test-user", password="pass")).token
        assert token.count(".") == 2
        kv.Put(pb.PutRequest(key=b"foo", value=b"2"), metadata=[("token", token)])
        time.sleep(2.2)
        with pytest.raises(grpc.RpcError) as err:
            kv.Put(pb.PutRequest(key=b"foo", value=b"3"), metadata=[("token", token)])
        assert err.value.details() == "etcdserver: invalid auth token"
        # a JWT carries the auth revision: any auth change makes older tokens stale
        root = auth.Authenticate(pb.AuthenticateRequest(name="root", password="root")).token
        token = auth.Authenticate(pb.AuthenticateRequest(name="test-user", password="pass")).token
        auth.RoleAdd(pb.AuthRoleAddRequest(name="another"), metadata=[("token", root)])
        with pytest.raises(grpc.RpcError) as err:
            kv.Range(pb.RangeRequest(key=b"foo"), metadata=[("token", token)])
        assert err.value.details() == "etcdserver: revision of auth store is old"
        ch.close()
        assert ok(ep, "put", "foo", "4", user=USER) == "OK"  # etcdctl authenticates afresh
    finally:
        proc.stop()


def _token(endpoint: str, name: str, password: str) -> str:
    with grpc.insecure_channel(endpoint) as ch:
        return rpc_pb2_grpc.AuthStub(ch).Authenticate(
            pb.AuthenticateRequest(name=name, password=password)).token


def _put_with(endpoint: str, token: str) -> str:
    """"ok" or the error a Put with ``token`` gets."""
    with grpc.insecure_channel(endpoint) as ch:
        try:
            rpc_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"foo", value=b"x"),
                                        metadata=[("token", token)], timeout=10)
            return "ok"
        except grpc.RpcError as exc:
            return exc.details()


@pytest.mark.parametrize("method", ["RS256", "PS384", "ES256"])
def test_jwt_tokens_of_etcd_and_kubekv_are_interchangeable(tmp_path, method):
    """etcd 3.5.1 and kubekv with the same --auth-token jwt flags and the same auth
    history: a token either one signs is accepted by the other."""
    key = ec.generate_private_key(ec.SECP256R1()) if method == "ES256" else pki.rsa_key()
    pki.self_signed(tmp_path, "jwt", key)
    opts = (f"jwt,pub-key={tmp_path / 'jwt.pem'},priv-key={tmp_path / 'jwt.key'},"
            f"sign-method={method},ttl=5m")
    etcd = etcd_process(tmp_path, "--auth-token", opts)
    kubekv = kubekv_process(tmp_path, "--auth-token", opts)
    with running(etcd), running(kubekv):
        for proc in (etcd, kubekv):
            setup_root(proc.endpoint)
        from_etcd = _token(etcd.endpoint, "test-user", "pass")
        from_kubekv = _token(kubekv.endpoint, "test-user", "pass")
        assert from_etcd.split(".")[0] == from_kubekv.split(".")[0]  # the same header
        assert _put_with(kubekv.endpoint, from_etcd) == "ok"
        assert _put_with(etcd.endpoint, from_kubekv) == "ok"
        assert _put_with(kubekv.endpoint, from_etcd[:-4] + "AAAA") == \
            _put_with(etcd.endpoint, from_kubekv[:-4] + "AAAA") == \
            "etcdserver: invalid auth token"
