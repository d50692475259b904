"""ETCD_* environment variables and --config-file: etcd's precedence rules and wording,
and a kubekv configured each way next to a real etcd configured the same way."""

from __future__ import annotations

import logging
import os
import sys

import grpc
import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.config.flags import FlagError, parse_args
from tests.harness import ROOT, ServerProcess, etcd_binary, free_port, running

SAMPLE = """\
name: 'from-file'
max-txn-ops: 7
heartbeat-interval: 50
election-timeout: 500
initial-cluster-state: 'new'
strict-reconfig-check: false
grpc-keepalive-min-time: 2000000000
auto-compaction-mode: revision
auto-compaction-retention: "10"
log-outputs: [stderr]
client-transport-security:
  client-cert-auth: true
  trusted-ca-file: /x/ca.pem
peer-transport-security:
  allowed-cn: etcd-peer
enable-grpc-gateway: true
something-etcd-does-not-know: 1
"""


def test_environment_fills_flags_not_given():
    cfg = parse_args(["--max-txn-ops", "5"], environ={
        "ETCD_NAME": "envname", "ETCD_INITIAL_CLUSTER": "envname=http://127.0.0.1:2380",
        "ETCD_CLIENT_CERT_AUTH": "1", "ETCD_SNAPSHOT_COUNT": "", "ETCD_NO_SUCH_THING": "x",
        "PATH": "/bin"})
    assert cfg.name == "envname" and cfg.client_cert_auth is True
    assert cfg.max_txn_ops == 5 and cfg.snapshot_count == 100000  # empty value: unused
    lines = [line for _, line in cfg.notes]
    assert 'msg="recognized and used environment variable" variable-name=ETCD_NAME ' \
           'variable-value="envname"' in lines
    assert (logging.WARNING, 'msg="unrecognized environment variable" '
            "environment-variable=ETCD_NO_SUCH_THING") in cfg.notes


def test_environment_shadowed_by_a_flag_is_refused():
    with pytest.raises(FlagError, match="conflicting environment variable is shadowed by "
                       "corresponding command-line flag.*ETCD_MAX_TXN_OPS"):
        parse_args(["--max-txn-ops", "5"], environ={"ETCD_MAX_TXN_OPS": "6"})
    with pytest.raises(FlagError, match='invalid value "maybe" for ETCD_PRE_VOTE: parse error'):
        parse_args([], environ={"ETCD_PRE_VOTE": "maybe"})


def test_config_file_replaces_flags_and_environment(tmp_path):
    f = tmp_path / "etcd.conf.yml"
    f.write_text(SAMPLE)
    cfg = parse_args(["--config-file", str(f), "--max-txn-ops", "2"],
                     environ={"ETCD_SNAPSHOT_COUNT": "5"})
    assert cfg.name == "from-file" and cfg.max_txn_ops == 7
    assert cfg.snapshot_count == 100000  # the environment is ignored too
    assert (cfg.heartbeat_interval_ms, cfg.election_timeout_ms) == (50, 500)
    assert not cfg.strict_reconfig_check
    assert cfg.grpc_keepalive_min_time == 2.0  # durations are nanoseconds in the file
    assert (cfg.auto_compaction_mode, cfg.auto_compaction_retention) == ("revision", 10.0)
    assert cfg.client_cert_auth is True and cfg.trusted_ca_file == "/x/ca.pem"
    assert cfg.peer_cert_allowed_cn == "etcd-peer"
    assert cfg.data_dir == "from-file.kubekv"
    assert "loaded server configuration" in cfg.notes[0][1]
    # ETCD_CONFIG_FILE names the file when the flag does not
    assert parse_args([], environ={"ETCD_CONFIG_FILE": str(f)}).name == "from-file"


def test_unreadable_config_file(tmp_path):
    with pytest.raises(FlagError, match="open .*missing.yml: no such file or directory"):
        parse_args(["--config-file", str(tmp_path / "missing.yml")], environ={})
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(FlagError, match="error converting YAML to JSON"):
        parse_args(["--config-file", str(bad)], environ={})


def test_flags_without_effect_are_logged():
    cfg = parse_args(["--enable-pprof", "--max-wals", "5", "--discovery-srv", "x.example"],
                     environ={})
    warned = [line for level, line in cfg.notes if level == logging.WARNING]
    assert warned == ['msg="flag accepted but not acted on by kubekv" flag=--enable-pprof '
                      'value="true"',  # --max-wals 5 is the default: not logged
                      'msg="flag accepted but not acted on by kubekv" flag=--discovery-srv '
                      'value="x.example"']


def _settings(tmp_path, name: str) -> tuple[dict[str, str], int]:
    port, peer = free_port(), f"http://127.0.0.1:{free_port()}"
    url = f"http://127.0.0.1:{port}"
    return {"name": name, "data-dir": str(tmp_path / name), "listen-client-urls": url,
            "advertise-client-urls": url, "listen-peer-urls": peer,
            "initial-advertise-peer-urls": peer, "initial-cluster": f"{name}={peer}",
            "initial-cluster-token": "tok", "max-txn-ops": "2"}, port


def _process(tmp_path, name: str, argv: list[str], env: dict[str, str], port: int,
             kubekv: bool) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")} | env
    if kubekv:
        argv = [sys.executable, "-m", "kubekv_server", *argv]
        env["PYTHONPATH"] = str(ROOT)
        env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    else:
        argv = [etcd_binary("etcd"), *argv]
    return ServerProcess(argv, tmp_path / name, port, tmp_path / f"{name}.log", env)


def _observe(proc: ServerProcess) -> list[str]:
    """What a client sees of the configuration: member name and URLs, max-txn-ops."""
    m = proc.cluster.MemberList(pb.MemberListRequest(), timeout=5).members[0]
    ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"k%d" % i)) for i in range(3)]
    try:
        proc.kv.Txn(pb.TxnRequest(success=ops), timeout=5)
        txn = "ok"
    except grpc.RpcError as exc:
        txn = f"{exc.code().name} {exc.details()}"
    return [m.name, str(len(m.peerURLs)), str(len(m.clientURLs)), txn]


@pytest.mark.parametrize("how", ["environment", "config-file"])
def test_configured_like_etcd(tmp_path, how):
    seen = []
    for kubekv in (False, True):
        name = "kubekv" if kubekv else "etcd"
        settings, port = _settings(tmp_path, name)
        (tmp_path / name).mkdir()
        if how == "environment":
            env = {"ETCD_" + k.upper().replace("-", "_"): v for k, v in settings.items()}
            argv: list[str] = []
        else:
            f = tmp_path / f"{name}.yml"
            f.write_text("".join(f"{k}: '{v}'\n" if k != "max-txn-ops" else f"{k}: {v}\n"
                                 for k, v in settings.items()))
            env, argv = {}, ["--config-file", str(f)]
        with running(_process(tmp_path, name, argv, env, port, kubekv)) as proc:
            seen.append(_observe(proc)[1:])
            assert _observe(proc)[0] == name
    assert seen[1] == seen[0]
    assert seen[0][-1] == "INVALID_ARGUMENT etcdserver: too many operations in txn request"
