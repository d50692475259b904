"""deploy/ must not drift from the flags the binary takes: every etcd flag and ETCD_*
variable named anywhere in deploy/ is one kubekv accepts, and every kubekv command line
written there parses."""

from __future__ import annotations

import re
import shlex

from kubekv_server.config.flags import BOOL_FLAGS, VALUE_FLAGS, parse_args
from kubekv_server.config.sources import env_key
from tests.deploy.conftest import DEPLOY, deploy_files
from tests.harness import ROOT

KUBEKV_FLAGS = set(BOOL_FLAGS) | set(VALUE_FLAGS)
ETCD_VARS = {env_key(f) for f in KUBEKV_FLAGS}

# Flags of other programs that deploy/ shows, by program: a flag named in deploy/ is
# either kubekv's or one of these (a new one must be added here, with its program).
OTHER_TOOLS = {
    "k3s": {"datastore-endpoint", "datastore-cafile", "datastore-certfile",
            "datastore-keyfile", "token", "cluster-init"},
    "kube-apiserver": {"etcd-servers", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
                       "etcd-compaction-interval", "storage-backend"},
    "kubeadm": {"config", "control-plane"},
    "etcdctl": {"endpoints", "cacert", "cert", "key", "peer-urls"},
    "kubectl": {"replicas"},
    "systemctl": {"now"},
    "docker/podman (build, run, compose)": {"format", "name", "build"},
    "Containerfile HEALTHCHECK": {"interval", "timeout", "start-period", "retries"},
    "groupadd/useradd": {"system", "gid", "uid", "home-dir", "no-create-home", "shell"},
}
OTHER_FLAGS = set().union(*OTHER_TOOLS.values())

_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(-\*)?")
_ENV = re.compile(r"\bETCD_([A-Z0-9]+(?:_[A-Z0-9]+)*)(_\*)?")


def _texts():
    files = [*deploy_files(), ROOT / "kubekv_server" / "deploy_entrypoint.py"]
    return [(p.relative_to(ROOT), p.read_text()) for p in files]


def test_every_etcd_variable_named_is_a_kubekv_flag():
    bad, seen = [], set()
    for path, text in _texts():
        for m in _ENV.finditer(text):
            name = "ETCD_" + m[1]
            seen.add(name)
            ok = (any(v.startswith(name + "_") for v in ETCD_VARS) if m[2]
                  else name in ETCD_VARS)
            if not ok:
                bad.append(f"{path}: {m[0]}")
    assert not bad, "not kubekv flags: " + ", ".join(bad)
    assert {"ETCD_CERT_FILE", "ETCD_INITIAL_CLUSTER", "ETCD_DATA_DIR"} <= seen  # it looked


def test_every_flag_named_is_kubekv_s_or_another_known_tool_s():
    bad, kubekv_seen = [], set()
    for path, text in _texts():
        for m in _FLAG.finditer(text):
            name = m[1]
            if m[2]:
                ok = any(f.startswith(name + "-") for f in KUBEKV_FLAGS)
            else:
                ok = name in KUBEKV_FLAGS or name in OTHER_FLAGS
            if not ok:
                bad.append(f"{path}: --{name}{m[2] or ''}")
            kubekv_seen.add(name)
    assert not bad, "neither kubekv's nor a listed tool's flags: " + ", ".join(bad)
    assert {"trusted-ca-file", "client-cert-auth", "initial-cluster-state"} <= kubekv_seen


def _kubekv_commands(text: str) -> list[list[str]]:
    """Every shell command in the text's code blocks whose program is kubekv."""
    commands = []
    for block in re.findall(r"```(?:sh|text)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n", " ", block)  # backslash continuations
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "kubekv":
                commands.append(words[1:])
    return commands


def test_kubekv_command_lines_in_the_docs_parse():
    commands = []
    for path in (DEPLOY / "k3s.md", DEPLOY / "README.md"):
        for args in _kubekv_commands(path.read_text()):
            commands.append(args)
            # only kubekv's flags on a kubekv command line (not merely some tool's)
            names = {m[1] for a in args for m in [_FLAG.match(a)] if m}
            assert names <= KUBEKV_FLAGS, (path, names - KUBEKV_FLAGS)
            parse_args(args, {})  # FlagError if kubekv would refuse it
    assert len(commands) >= 2


def _env_file(include_commented: bool) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / "kubekv.env").read_text().splitlines():
        if include_commented:
            line = line.removeprefix("#")
        m = re.fullmatch(r"(ETCD_[A-Z0-9_]+)=(.*)", line.strip())
        if m:
            env[m[1]] = m[2]
    return env


def test_the_systemd_environment_file_is_a_working_configuration():
    cfg = parse_args([], _env_file(False))
    assert cfg.name == "kv1" and cfg.data_dir.startswith("/var/lib/kubekv/")
    assert cfg.metrics_urls == ["http://127.0.0.1:2381"]
    # its commented blocks too (one of three VMs, with TLS)
    cfg = parse_args([], _env_file(True))
    assert sorted(cfg.initial_cluster) == ["kv1", "kv2", "kv3"]
    assert cfg.client_cert_auth and cfg.trusted_ca_file == "/etc/kubekv/tls/ca.crt"
