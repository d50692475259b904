"""The kubekv command line: etcd's flags, defaults, Go-flag syntax and error wording."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubekv_server.config.flags import FlagError, parse_args, parse_duration
from kubekv_server.member.cluster_ids import cluster_id, member_id


def test_defaults_match_etcd_except_loopback_and_data_dir():
    cfg = parse_args([])
    assert cfg.name == "default"
    assert cfg.data_dir == "default.kubekv"
    assert cfg.listen_client_urls == ["http://127.0.0.1:2379"]
    assert cfg.advertise_client_urls == ["http://127.0.0.1:2379"]
    assert cfg.initial_cluster == {"default": ["http://localhost:2380"]}
    assert cfg.max_request_bytes == 1572864
    assert cfg.max_txn_ops == 128
    assert cfg.grpc_keepalive_min_time == 5.0


def test_default_ids_are_etcds():
    cfg = parse_args([])
    mid = member_id(cfg.initial_cluster["default"], cfg.initial_cluster_token)
    assert f"{mid:x}" == "8e9e05c52164694d"
    assert f"{cluster_id([mid]):x}" == "cdf818194e3a8c32"


def test_go_flag_forms():
    cfg = parse_args(["-name", "a", "--data-dir=/tmp/x", "--client-cert-auth",
                      "--strict-reconfig-check=false", "--max-txn-ops", "5",
                      "--initial-cluster", "a=http://h:1,b=http://h:2"])
    assert cfg.name == "a" and cfg.data_dir == "/tmp/x"
    assert cfg.client_cert_auth is True
    assert not cfg.strict_reconfig_check
    assert cfg.max_txn_ops == 5
    assert cfg.initial_cluster == {"a": ["http://h:1"], "b": ["http://h:2"]}


def test_every_e2e_flag_is_accepted():
    parse_args([
        "--name", "testname0", "--listen-client-urls", "http://localhost:20000",
        "--advertise-client-urls", "http://localhost:20000",
        "--listen-peer-urls", "https://localhost:20001",
        "--initial-advertise-peer-urls", "https://localhost:20001",
        "--initial-cluster-token", "new", "--data-dir", "/tmp/d", "--snapshot-count", "100000",
        "--initial-cluster", "testname0=https://localhost:20001",
        "--experimental-initial-corrupt-check", "--peer-auto-tls", "--auto-tls",
        "--client-cert-auth", "--client-cert-auth", "--quota-backend-bytes", "53248",
        "--strict-reconfig-check=false", "--initial-cluster-state", "existing",
        "--auth-token", "jwt,pub-key=a,priv-key=b,sign-method=RS256,ttl=1s",
        "--peer-cert-file", "f", "--peer-key-file", "f", "--peer-trusted-ca-file", "f",
        "--cert-file", "f", "--key-file", "f", "--trusted-ca-file", "f", "--client-crl-file", "f",
    ])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--foo"], "flag provided but not defined: -foo"),
        (["--name"], "flag needs an argument: -name"),
        (["--auto-tls=maybe"], 'invalid boolean value "maybe" for -auto-tls: parse error'),
        (["--max-txn-ops", "x"], 'invalid value "x" for flag -max-txn-ops: parse error'),
        (["--name", "a", "--initial-cluster", "b=http://h:1"],
         "couldn't find local name 'a' in the initial cluster configuration"),
    ],
)
def test_bad_flags_are_refused(argv, message):
    with pytest.raises(FlagError) as err:
        parse_args(argv)
    assert str(err.value) == message


def test_unknown_flag_exits_2_with_etcds_wording():
    res = subprocess.run([sys.executable, "-m", "kubekv_server", "--foo"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.startswith("flag provided but not defined: -foo\n")


def test_durations():
    assert parse_duration("5s") == 5.0
    assert parse_duration("2h") == 7200.0
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m30s") == 90.0


def test_backend_batch_flags():
    """etcd's backend batching flags: 0 keeps etcd's defaults (the member uses 100ms and
    10000); a negative interval is refused (etcd's ticker panics on it)."""
    cfg = parse_args([])
    assert (cfg.backend_batch_interval, cfg.backend_batch_limit) == (0.0, 0)
    cfg = parse_args(["--backend-batch-interval=250ms", "--backend-batch-limit", "500"])
    assert cfg.backend_batch_interval == pytest.approx(0.25)
    assert cfg.backend_batch_limit == 500
    with pytest.raises(FlagError, match="backend-batch-interval"):
        parse_args(["--backend-batch-interval=-1s"])
