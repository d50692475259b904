"""--wal-dir, --unsafe-no-fsync and --bcrypt-cost on a running kubekv."""

from __future__ import annotations

from etcdproto.authpb import auth_pb2
from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.auth.password import ITERATIONS, iterations_for_cost
from kubekv_server.backend.state_db import Backend
from tests.harness import kubekv_process, running


def test_wal_dir_holds_the_log_and_survives_restart(tmp_path):
    wal = tmp_path / "wal"
    proc = kubekv_process(tmp_path, "--wal-dir", str(wal), "--unsafe-no-fsync")
    with running(proc):
        proc.kv.Put(pb.PutRequest(key=b"k", value=b"v"))
    assert [p.suffix for p in wal.iterdir()] == [".wal"]  # the write-ahead log
    assert not (proc.data_dir / "member" / "log").exists()
    with running(proc):
        assert proc.kv.Range(pb.RangeRequest(key=b"k")).kvs[0].value == b"v"


def test_bcrypt_cost_scales_password_work():
    assert iterations_for_cost(10) == ITERATIONS
    assert iterations_for_cost(11) == 2 * ITERATIONS
    assert iterations_for_cost(4) == round(ITERATIONS / 64)
    assert iterations_for_cost(3) == iterations_for_cost(32) == ITERATIONS  # etcd: default


def test_bcrypt_cost_on_a_server(tmp_path):
    proc = kubekv_process(tmp_path, "--bcrypt-cost", "4")
    with running(proc):
        auth = rpc_pb2_grpc.AuthStub(proc.channel)
        auth.UserAdd(pb.AuthUserAddRequest(name="root", password="pw"))
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
        auth.AuthEnable(pb.AuthEnableRequest())
        assert auth.Authenticate(pb.AuthenticateRequest(name="root", password="pw")).token
    backend = Backend(str(proc.data_dir / "member" / "state"), readonly=True)
    try:
        users = backend.open_db(b"auth_users")
        with backend.env.begin() as txn:
            raw = txn.get(b"root", db=users)
    finally:
        backend.close()
    assert auth_pb2.User.FromString(raw).password.startswith(
        b"pbkdf2_sha256$%d$" % round(ITERATIONS / 64))
    bad = kubekv_process(tmp_path, "--bcrypt-cost", "99", name="bad")
    with running(bad):
        pass
    assert "use default bcrypt cost instead of the invalid given cost" in \
        bad.log_path.read_text()
