"""kubekv-entrypoint's decisions, by import: which etcd flags a member's identity gives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from kubekv_server import deploy_entrypoint as ep
from kubekv_server.config.flags import parse_args
from tests.deploy.conftest import DEPLOY
from tests.harness import ROOT

STS = {"KUBEKV_INITIAL_CLUSTER_SIZE": "3", "KUBEKV_PEER_SERVICE": "kubekv-peer",
       "KUBEKV_NAMESPACE": "db"}


def flags(p: ep.Plan, argv: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The --flag=value arguments the entrypoint added (before the user's argv), by name."""
    assert p.args[len(p.args) - len(argv):] == list(argv)
    out = {}
    for arg in p.args[:len(p.args) - len(argv)]:
        name, eq, value = arg.removeprefix("--").partition("=")
        if eq:
            out[name] = value
    return out


def fqdn(i: int) -> str:
    return f"kubekv-{i}.kubekv-peer.db.svc.cluster.local"


def test_single_member_defaults(tmp_path):
    env = {"KUBEKV_DATA_ROOT": str(tmp_path)}
    p = ep.plan([], env, hostname="box")
    f = flags(p)
    assert f == {
        "name": "default",
        "data-dir": str(tmp_path / "default.kubekv"),
        "listen-client-urls": "http://0.0.0.0:2379",
        "advertise-client-urls": "http://box:2379",
        "listen-peer-urls": "http://0.0.0.0:2380",
        "initial-advertise-peer-urls": "http://box:2380",
        "initial-cluster": "default=http://box:2380",
        "listen-metrics-urls": "http://0.0.0.0:2381",
        "initial-cluster-state": "new",
    }
    # what it hands to kubekv is a command line kubekv accepts
    cfg = parse_args(p.args, {})
    assert cfg.name == "default" and cfg.initial_cluster == {"default": ["http://box:2380"]}
    assert cfg.initial_cluster_state == "new"


def test_statefulset_member_flags(tmp_path):
    env = {**STS, "KUBEKV_DATA_ROOT": str(tmp_path)}
    p = ep.plan(["--log-level", "debug"], env, hostname="kubekv-1")
    f = flags(p, ["--log-level", "debug"])
    assert f["name"] == "kubekv-1"
    assert f["data-dir"] == str(tmp_path / "kubekv-1.kubekv")
    assert f["advertise-client-urls"] == f"http://{fqdn(1)}:2379"
    assert f["initial-advertise-peer-urls"] == f"http://{fqdn(1)}:2380"
    assert f["listen-peer-urls"] == "http://0.0.0.0:2380"
    assert f["initial-cluster"] == ",".join(f"kubekv-{i}=http://{fqdn(i)}:2380"
                                            for i in range(3))
    assert f["initial-cluster-state"] == "new"
    assert p.args[-2:] == ["--log-level", "debug"]  # the user's flags pass through
    cfg = parse_args(p.args, {})
    assert sorted(cfg.initial_cluster) == ["kubekv-0", "kubekv-1", "kubekv-2"]
    assert cfg.log_level == "debug"


def test_existing_state_once_the_data_dir_holds_a_member(tmp_path):
    env = {**STS, "KUBEKV_DATA_ROOT": str(tmp_path)}
    (tmp_path / "kubekv-2.kubekv").mkdir()
    assert flags(ep.plan([], env, hostname="kubekv-2"))["initial-cluster-state"] == "new"
    (tmp_path / "kubekv-2.kubekv" / "member").mkdir()
    p = ep.plan([], env, hostname="kubekv-2")
    assert flags(p)["initial-cluster-state"] == "existing"
    assert p.state == "existing"


def test_ordinal_beyond_the_initial_size_joins(tmp_path):
    env = {**STS, "KUBEKV_DATA_ROOT": str(tmp_path)}
    f = flags(ep.plan([], env, hostname="kubekv-4"))
    assert f["initial-cluster-state"] == "existing"
    assert f["initial-cluster"].split(",") == [f"kubekv-{i}=http://{fqdn(i)}:2380"
                                               for i in range(5)]


def test_the_users_flags_and_variables_win(tmp_path):
    env = {**STS, "KUBEKV_DATA_ROOT": str(tmp_path), "ETCD_INITIAL_CLUSTER_STATE": "existing",
           "ETCD_LISTEN_CLIENT_URLS": "http://0.0.0.0:3379"}
    argv = ["--data-dir", str(tmp_path / "mine"), "--advertise-client-urls=http://x:1"]
    p = ep.plan(argv, env, hostname="kubekv-0")
    f = flags(p, argv)
    for given in ("initial-cluster-state", "listen-client-urls", "data-dir",
                  "advertise-client-urls"):
        assert given not in f
    assert p.data_dir == str(tmp_path / "mine") and p.state == "existing"
    # kubekv refuses a flag given both ways; the plan never does that
    cfg = parse_args(p.args, env)
    assert cfg.listen_client_urls == ["http://0.0.0.0:3379"]
    assert cfg.initial_cluster_state == "existing"


def test_config_file_help_and_version_pass_through():
    for argv in (["--config-file", "/etc/kubekv.yaml"], ["--version"], ["-h"]):
        assert ep.plan(argv, dict(STS), hostname="kubekv-0").args == argv
    assert ep.plan([], {**STS, "ETCD_CONFIG_FILE": "/x.yaml"}, hostname="kubekv-0").args == []


def test_tls_flags_make_https_urls(tmp_path):
    env = {**STS, "KUBEKV_DATA_ROOT": str(tmp_path), "ETCD_CERT_FILE": "/tls/tls.crt",
           "ETCD_PEER_AUTO_TLS": "true"}
    f = flags(ep.plan([], env, hostname="kubekv-0"))
    assert f["advertise-client-urls"] == f"https://{fqdn(0)}:2379"
    assert f["listen-client-urls"] == "https://0.0.0.0:2379"
    assert f["initial-advertise-peer-urls"] == f"https://{fqdn(0)}:2380"
    assert f["listen-metrics-urls"] == "http://0.0.0.0:2381"  # probes stay plain HTTP
    f = flags(ep.plan([], {**env, "KUBEKV_PEER_SCHEME": "http"}, hostname="kubekv-0"))
    assert f["initial-advertise-peer-urls"] == f"http://{fqdn(0)}:2380"


def test_peer_domain_cluster_domain_ports_and_metrics_off(tmp_path):
    env = {**STS, "KUBEKV_DATA_ROOT": str(tmp_path), "KUBEKV_PEER_DOMAIN": "",
           "KUBEKV_PEER_PORT": "12380", "KUBEKV_METRICS_PORT": "off"}
    f = flags(ep.plan([], env, hostname="kv-1"))
    assert f["initial-cluster"] == "kv-0=http://kv-0:12380,kv-1=http://kv-1:12380,kv-2=http://kv-2:12380"
    assert "listen-metrics-urls" not in f
    env = {**STS, "KUBEKV_DATA_ROOT": str(tmp_path), "KUBEKV_CLUSTER_DOMAIN": "corp.example"}
    f = flags(ep.plan([], env, hostname="kubekv-0"))
    assert f["advertise-client-urls"] == "http://kubekv-0.kubekv-peer.db.svc.corp.example:2379"


def test_address_map_rewrites_urls_and_binds_the_mapped_own_address(tmp_path):
    mapping = {f"{fqdn(i)}:{port}": f"127.0.0.1:{10000 + 10 * i + port % 10}"
               for i in range(3) for port in (2379, 2380, 2381)}
    env = {**STS, "KUBEKV_DATA_ROOT": str(tmp_path),
           "KUBEKV_ADDRESS_MAP": ",".join(f"{k}={v}" for k, v in mapping.items())}
    f = flags(ep.plan([], env, hostname="kubekv-1"))
    assert f["listen-client-urls"] == "http://127.0.0.1:10019"
    assert f["advertise-client-urls"] == "http://127.0.0.1:10019"
    assert f["listen-peer-urls"] == f["initial-advertise-peer-urls"] == "http://127.0.0.1:10010"
    assert f["listen-metrics-urls"] == "http://127.0.0.1:10011"
    assert f["initial-cluster"] == ("kubekv-0=http://127.0.0.1:10000,"
                                    "kubekv-1=http://127.0.0.1:10010,"
                                    "kubekv-2=http://127.0.0.1:10020")


@pytest.mark.parametrize("env,host,message", [
    ({**STS}, "kubekv", "does not end in -<ordinal>"),
    ({"KUBEKV_INITIAL_CLUSTER_SIZE": "3"}, "kubekv-0", "KUBEKV_PEER_SERVICE"),
    ({**STS, "KUBEKV_INITIAL_CLUSTER_SIZE": "three"}, "kubekv-0", "is not a number"),
    ({**STS, "KUBEKV_INITIAL_CLUSTER_SIZE": "0"}, "kubekv-0", "out of range"),
    ({**STS, "KUBEKV_INITIAL_CLUSTER_SIZE": "100000"}, "kubekv-0", "out of range"),
    ({**STS}, "kubekv-99999", "above"),
    ({**STS, "KUBEKV_CLIENT_PORT": "70000"}, "kubekv-0", "out of range"),
    ({**STS, "KUBEKV_CLIENT_SCHEME": "ftp"}, "kubekv-0", "expected http or https"),
    ({**STS, "KUBEKV_ADDRESS_MAP": "a=b"}, "kubekv-0", "is not host:port=host:port"),
])
def test_bad_settings_are_one_line_errors(env, host, message):
    with pytest.raises(ep.EntrypointError, match=re.escape(message)):
        ep.plan([], env, hostname=host)


def _run(args, env):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "kubekv_server.deploy_entrypoint", *args],
                          capture_output=True, text=True, env=full, timeout=60)


def test_dry_run_prints_the_command_and_errors_exit_2(tmp_path):
    res = _run(["--log-level=warn"], {**STS, "KUBEKV_HOSTNAME": "kubekv-2",
                                      "KUBEKV_DATA_ROOT": str(tmp_path), "KUBEKV_DRY_RUN": "1"})
    assert res.returncode == 0, res.stderr
    args = json.loads(res.stdout)
    assert "--name=kubekv-2" in args and args[-1] == "--log-level=warn"
    res = _run([], {**STS, "KUBEKV_HOSTNAME": "nohyphen"})
    assert res.returncode == 2
    assert res.stderr.startswith("kubekv-entrypoint: host name 'nohyphen'")
    assert "Traceback" not in res.stderr


def test_every_knob_is_documented_in_the_readme():
    readme = (DEPLOY / "README.md").read_text()
    code = (ROOT / "kubekv_server" / "deploy_entrypoint.py").read_text()
    used = set(re.findall(r'"(KUBEKV_[A-Z_]+)"', code))
    assert used == set(ep.ENV_DOCS)
    for key in ep.ENV_DOCS:
        assert f"| `{key}` |" in readme, f"{key} missing from deploy/README.md's table"
