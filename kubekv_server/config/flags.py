"""The `kubekv` command line: etcd's flag names, defaults and Go-flag parsing rules.

Tools and tests start kubekv exactly as they start etcd, so the flags are an
interface: every etcd 3.5 server flag is accepted (those kubekv does not act on
yet are stored), and an unknown flag is refused with etcd's wording.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from collections.abc import Mapping, Sequence

from kubekv_server.config import sources as config_sources
from kubekv_server.config import tuning as config_tuning
from kubekv_server.tls.cipher_suites import openssl_cipher_list

# Flags whose value is a boolean: `--flag` alone means true, `--flag=false` false.
BOOL_FLAGS = {
    "strict-reconfig-check": True,
    "pre-vote": True,
    "enable-v2": False,
    "client-cert-auth": False,
    "auto-tls": False,
    "peer-client-cert-auth": False,
    "peer-auto-tls": False,
    "experimental-peer-skip-client-san-verification": False,
    "enable-pprof": False,
    "enable-log-rotation": False,
    "experimental-enable-distributed-tracing": False,
    "experimental-initial-corrupt-check": False,
    "experimental-enable-v2v3": False,
    "experimental-enable-lease-checkpoint": False,
    "experimental-txn-mode-write-with-shared-buffer": True,
    "force-new-cluster": False,
    "unsafe-no-fsync": False,
    "socket-reuse-port": False,
    "socket-reuse-address": False,
    "version": False,
    "help": False,
}

# Flags that take a value, with etcd's defaults (as strings, parsed below).
VALUE_FLAGS = {
    "name": "default",
    "data-dir": "",
    "wal-dir": "",
    "snapshot-count": "100000",
    "heartbeat-interval": "100",
    "election-timeout": "1000",
    "initial-election-tick-advance": "true",
    "listen-peer-urls": "http://localhost:2380",
    "listen-client-urls": "http://127.0.0.1:2379",
    "max-snapshots": "5",
    "max-wals": "5",
    "quota-backend-bytes": "0",
    "backend-bbolt-freelist-type": "map",
    "backend-batch-interval": "0",
    "backend-batch-limit": "0",
    "max-txn-ops": "128",
    "max-request-bytes": "1572864",
    "max-concurrent-streams": "4294967295",
    "grpc-keepalive-min-time": "5s",
    "grpc-keepalive-interval": "2h",
    "grpc-keepalive-timeout": "20s",
    "initial-advertise-peer-urls": "http://localhost:2380",
    "initial-cluster": "",
    "initial-cluster-state": "new",
    "initial-cluster-token": "etcd-cluster",
    "advertise-client-urls": "",
    "discovery": "",
    "discovery-fallback": "proxy",
    "discovery-proxy": "",
    "discovery-srv": "",
    "discovery-srv-name": "",
    "auto-compaction-retention": "0",
    "auto-compaction-mode": "periodic",
    "v2-deprecation": "not-yet",
    "cert-file": "",
    "key-file": "",
    "client-crl-file": "",
    "client-cert-allowed-hostname": "",
    "trusted-ca-file": "",
    "peer-cert-file": "",
    "peer-key-file": "",
    "peer-trusted-ca-file": "",
    "peer-cert-allowed-cn": "",
    "peer-cert-allowed-hostname": "",
    "self-signed-cert-validity": "1",
    "peer-crl-file": "",
    "cipher-suites": "",
    "cors": "*",
    "host-whitelist": "*",
    "auth-token": "simple",
    "bcrypt-cost": "10",
    "auth-token-ttl": "300",
    "metrics": "basic",
    "listen-metrics-urls": "",
    "logger": "zap",
    "log-outputs": "default",
    "log-level": "info",
    "log-rotation-config-json": "",
    "experimental-distributed-tracing-address": "",
    "experimental-distributed-tracing-service-name": "",
    "experimental-distributed-tracing-instance-id": "",
    "proxy": "off",
    "proxy-failure-wait": "5000",
    "proxy-refresh-interval": "30000",
    "proxy-dial-timeout": "1000",
    "proxy-write-timeout": "5000",
    "proxy-read-timeout": "0",
    "experimental-corrupt-check-time": "0s",
    "experimental-compaction-batch-limit": "1000",
    "experimental-watch-progress-notify-interval": "10m",
    "experimental-warning-apply-duration": "100ms",
    "experimental-bootstrap-defrag-threshold-megabytes": "0",
    "config-file": "",
}

USAGE = """Usage:

  kubekv [flags]
    Start a kubekv server (etcd v3 compatible).

  kubekv --version
    Show the version of kubekv.

  kubekv -h | --help
    Show the help information about kubekv.

Flags are etcd's: --name, --data-dir, --listen-client-urls, --advertise-client-urls,
--listen-peer-urls, --initial-advertise-peer-urls, --initial-cluster,
--initial-cluster-state, --initial-cluster-token, --max-request-bytes,
--max-txn-ops, --quota-backend-bytes, --cert-file, --key-file, --trusted-ca-file,
--client-cert-auth, ... (every etcd 3.5 server flag is accepted).
"""


class FlagError(Exception):
    """A command line etcd would refuse; the message is etcd's (Go flag package) wording."""


def parse_duration(text: str) -> float:
    """Parse a Go duration ("5s", "2h", "100ms", "1m30s") into seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    s = text.strip()
    if s in ("0", ""):
        return 0.0
    total, i = 0.0, 0
    while i < len(s):
        j = i
        while j < len(s) and (s[j].isdigit() or s[j] == "."):
            j += 1
        if j == i:
            raise ValueError(f'time: invalid duration "{text}"')
        number = float(s[i:j])
        k = j
        while k < len(s) and not (s[k].isdigit() or s[k] == "."):
            k += 1
        unit = s[j:k]
        if unit not in units:
            raise ValueError(f'time: missing unit in duration "{text}"')
        total += number * units[unit]
        i = k
    return total


def parse_compaction_retention(mode: str, text: str) -> float:
    """etcd's parseCompactionRetention: a bare integer is hours (periodic mode, returned
    in seconds) or revisions (revision mode); anything else is a Go duration (for
    revision mode etcd then counts its nanoseconds as revisions, and so does this)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n >= 0:
        return n * 3600.0 if mode == "periodic" else float(n)
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise FlagError(f"error parsing CompactionRetention: {exc}") from None
    return seconds if mode == "periodic" else float(round(seconds * 1e9))


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"invalid boolean value {text!r}")


def parse_urls(text: str) -> list[str]:
    """A comma-separated URL list, each with a scheme and host:port."""
    urls = [u.strip() for u in text.split(",") if u.strip()]
    for u in urls:
        parsed = urllib.parse.urlsplit(u)
        if parsed.scheme not in ("http", "https", "unix", "unixs") or not parsed.netloc:
            raise ValueError(f"URL scheme must be http, https, unix, or unixs: {u}")
    return urls


def parse_initial_cluster(text: str) -> dict[str, list[str]]:
    """`name=url,name=url2,other=url3` → {name: [url, url2], other: [url3]}."""
    members: dict[str, list[str]] = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, url = item.partition("=")
        if not sep:
            raise ValueError(f"couldn't parse initial cluster entry {item!r}")
        members.setdefault(name, []).extend(parse_urls(url))
    return members


@dataclasses.dataclass
class Config:
    """A kubekv member's configuration, with etcd's semantics for each flag."""

    name: str
    data_dir: str
    wal_dir: str  # "": the Raft log lives under data_dir
    unsafe_no_fsync: bool
    listen_client_urls: list[str]
    metrics_urls: list[str]
    advertise_client_urls: list[str]
    listen_peer_urls: list[str]
    initial_advertise_peer_urls: list[str]
    initial_cluster: dict[str, list[str]]
    initial_cluster_state: str
    initial_cluster_token: str
    max_request_bytes: int
    max_concurrent_streams: int
    max_txn_ops: int
    quota_backend_bytes: int
    # --backend-batch-interval (seconds) and --backend-batch-limit (entries): how long
    # and how many applied entries the state db's apply txn may stay uncommitted;
    # 0 means etcd's defaults (100ms, 10000), a limit below 0 commits every batch
    backend_batch_interval: float
    backend_batch_limit: int
    snapshot_count: int
    heartbeat_interval_ms: int
    election_timeout_ms: int
    cert_file: str
    key_file: str
    trusted_ca_file: str
    client_cert_auth: bool
    client_crl_file: str
    client_cert_allowed_hostname: str
    auto_tls: bool
    openssl_ciphers: str  # --cipher-suites as an OpenSSL cipher string; "": unrestricted
    peer_cert_file: str
    peer_key_file: str
    peer_trusted_ca_file: str
    peer_client_cert_auth: bool
    peer_crl_file: str
    peer_cert_allowed_cn: str
    peer_cert_allowed_hostname: str
    peer_auto_tls: bool
    self_signed_cert_validity: int  # years, of --auto-tls/--peer-auto-tls certificates
    grpc_keepalive_min_time: float
    grpc_keepalive_interval: float
    grpc_keepalive_timeout: float
    watch_progress_notify_interval: float
    log_level: str
    auto_compaction_mode: str
    auto_compaction_retention: float  # seconds (periodic) or revisions; 0: off
    corrupt_check_interval: float  # --experimental-corrupt-check-time, seconds; 0: off
    initial_corrupt_check: bool
    strict_reconfig_check: bool
    force_new_cluster: bool
    lease_checkpoint: bool  # --experimental-enable-lease-checkpoint
    warning_apply_duration: float  # --experimental-warning-apply-duration, seconds
    auth_token: str
    auth_token_ttl: int  # seconds
    bcrypt_cost: str  # as given: an invalid cost is logged at start and the default used
    metrics: str  # "basic" or "extensive"
    cors: str
    host_whitelist: str
    tuning: config_tuning.Tuning = dataclasses.field(default_factory=config_tuning.Tuning)
    show_version: bool = False
    show_help: bool = False
    # (level, line) to log at startup: environment/file use, flags without effect
    notes: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def _defaults() -> dict[str, str]:
    """Every flag's default, as the raw string the command line would give."""
    raw = {k: ("true" if v else "false") for k, v in BOOL_FLAGS.items()}
    raw.update(VALUE_FLAGS)
    return raw


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse a command line with Go's flag rules (`-f`, `--f`, `--f=v`, `--f v`), then
    take `--config-file` or the `ETCD_*` environment as etcd does."""
    raw = _defaults()
    given: set[str] = set()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            if arg == "--":
                break
            raise FlagError(f"'{arg}' is not a valid flag")
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, has_value, value = body.partition("=")
        if name in ("h",):
            name = "help"
        if name in BOOL_FLAGS:
            if has_value:
                try:
                    value = "true" if parse_bool(value) else "false"
                except ValueError:
                    raise FlagError(
                        f'invalid boolean value "{value}" for -{name}: parse error'
                    ) from None
            else:
                value = "true"
        elif name in VALUE_FLAGS:
            if not has_value:
                if i >= len(args):
                    raise FlagError(f"flag needs an argument: -{name}")
                value = args[i]
                i += 1
        else:
            raise FlagError(f"flag provided but not defined: -{name}")
        raw[name] = value
        given.add(name)
    notes: list[tuple[int, str]] = []
    if raw["help"] != "true" and raw["version"] != "true":
        environ = os.environ if environ is None else environ
        try:
            raw, given, notes = _other_sources(raw, given, environ)
        except config_sources.SourceError as exc:
            raise FlagError(str(exc)) from None
    cfg = _build(raw, given)
    if not cfg.show_help and not cfg.show_version:
        try:
            cfg.tuning = config_tuning.from_environment(environ)
        except ValueError as exc:
            raise FlagError(f"invalid KUBEKV_* tuning variable: {exc}") from None
    cfg.notes = notes + _no_effect(raw, given)
    return cfg


def _other_sources(
    raw: dict[str, str], given: set[str], environ: Mapping[str, str]
) -> tuple[dict[str, str], set[str], list[tuple[int, str]]]:
    """etcd's order: a config file (flag or ETCD_CONFIG_FILE) replaces everything else;
    otherwise ETCD_* variables fill the flags the command line did not give."""
    names = [*BOOL_FLAGS, *VALUE_FLAGS]
    path = raw["config-file"] or environ.get(config_sources.env_key("config-file"), "")
    if path:
        values = config_sources.from_file(path, names)
        fresh = _defaults()
        fresh.update(_bools(values, "config file"))
        fresh["config-file"] = path
        return fresh, set(values), [(logging.INFO,
            'msg="loaded server configuration, other configuration command line flags and '
            f'environment variables will be ignored if provided" path={path}')]
    values, notes = config_sources.from_environment(environ, names, given)
    raw = dict(raw)
    raw.update(_bools(values, "env"))
    return raw, given | set(values), notes


def _bools(values: dict[str, str], source: str) -> dict[str, str]:
    """Boolean flags in their canonical spelling; Go's ParseBool error otherwise."""
    out = dict(values)
    for name, value in values.items():
        if name in BOOL_FLAGS:
            try:
                out[name] = "true" if parse_bool(value) else "false"
            except ValueError:
                where = config_sources.env_key(name) if source == "env" else name
                raise FlagError(f'invalid value "{value}" for {where}: parse error') from None
    return out


# etcd flags kubekv accepts without acting on them (a non-default value is logged).
NO_EFFECT = (
    "enable-v2", "experimental-peer-skip-client-san-verification", "enable-pprof",
    "enable-log-rotation", "experimental-enable-distributed-tracing",
    "experimental-enable-v2v3",
    "socket-reuse-port", "socket-reuse-address", "max-snapshots", "max-wals",
    "discovery", "discovery-fallback", "discovery-proxy", "discovery-srv",
    "discovery-srv-name",
    "log-rotation-config-json",
    "experimental-distributed-tracing-address", "proxy",
    "experimental-compaction-batch-limit",
    "experimental-bootstrap-defrag-threshold-megabytes",
)


def _no_effect(raw: dict[str, str], given: set[str]) -> list[tuple[int, str]]:
    defaults = _defaults()
    return [(logging.WARNING,
             f'msg="flag accepted but not acted on by kubekv" flag=--{name} value="{raw[name]}"')
            for name in NO_EFFECT if name in given and raw[name] != defaults[name]]


def _int_flag(raw: dict[str, str], name: str) -> int:
    try:
        return int(raw[name], 0)
    except ValueError:
        raise FlagError(
            f'invalid value "{raw[name]}" for flag -{name}: parse error'
        ) from None


def _uint_flag(raw: dict[str, str], name: str) -> int:
    """A flag Go declares as uint: a negative number is a parse error too."""
    value = _int_flag(raw, name)
    if value < 0:
        raise FlagError(f'invalid value "{raw[name]}" for flag -{name}: parse error')
    return value


def _duration_flag(raw: dict[str, str], name: str) -> float:
    try:
        return parse_duration(raw[name])
    except ValueError:
        raise FlagError(
            f'invalid value "{raw[name]}" for flag -{name}: parse error'
        ) from None


def _batch_interval(raw: dict[str, str]) -> float:
    """--backend-batch-interval in seconds. etcd starts a ticker with it, which panics on
    a negative duration ("non-positive interval for NewTicker"): refused here instead."""
    seconds = _duration_flag(raw, "backend-batch-interval")
    if seconds < 0:
        raise FlagError(f'invalid value "{raw["backend-batch-interval"]}" for flag '
                        "-backend-batch-interval: must not be negative")
    return seconds


def _has_port(url: str) -> bool:
    try:
        return urllib.parse.urlsplit(url).port is not None
    except ValueError:
        return False


def _compaction_retention(raw: dict[str, str]) -> float:
    mode = raw["auto-compaction-mode"]
    if mode not in ("", "periodic", "revision"):
        raise FlagError(f'unknown auto-compaction-mode "{mode}"')
    retention = parse_compaction_retention(mode, raw["auto-compaction-retention"] or "0")
    if retention and not mode:
        raise FlagError("unsupported compaction mode ")
    return retention


def _build(raw: dict[str, str], given: set[str]) -> Config:
    name = raw["name"]
    try:
        ciphers = openssl_cipher_list(raw["cipher-suites"])
    except ValueError as exc:
        raise FlagError(str(exc)) from None
    for origin in (o.strip() for o in raw["cors"].split(",")):
        if origin and origin != "*" and not _has_port(origin):
            raise FlagError(f'invalid value "{raw["cors"]}" for flag -cors: URL address does '
                            f'not have the form "host:port": {origin}')
    try:
        listen_client = parse_urls(raw["listen-client-urls"])
        listen_peer = parse_urls(raw["listen-peer-urls"])
        adv_peer = parse_urls(raw["initial-advertise-peer-urls"])
        adv_client = parse_urls(raw["advertise-client-urls"]) or list(listen_client)
        metrics_urls = parse_urls(raw["listen-metrics-urls"])
        if raw["initial-cluster"]:
            cluster = parse_initial_cluster(raw["initial-cluster"])
        else:
            cluster = {name: list(adv_peer)}
    except ValueError as exc:
        raise FlagError(str(exc)) from None
    if "advertise-client-urls" in given and not raw["advertise-client-urls"]:
        raise FlagError("--advertise-client-urls is required when --listen-client-urls is set")
    state = raw["initial-cluster-state"]
    if state not in ("new", "existing"):
        raise FlagError(f'invalid value "{state}" for flag -initial-cluster-state: '
                        'valid values are "new", "existing"')
    if name not in cluster:
        raise FlagError(
            f"couldn't find local name {name!r} in the initial cluster configuration"
        )
    warning_apply_duration = _duration_flag(raw, "experimental-warning-apply-duration")
    return Config(
        name=name,
        data_dir=raw["data-dir"] or f"{name}.kubekv",
        wal_dir=raw["wal-dir"],
        unsafe_no_fsync=raw["unsafe-no-fsync"] == "true",
        listen_client_urls=listen_client,
        metrics_urls=metrics_urls,
        advertise_client_urls=adv_client,
        listen_peer_urls=listen_peer,
        initial_advertise_peer_urls=adv_peer,
        initial_cluster=cluster,
        initial_cluster_state=state,
        initial_cluster_token=raw["initial-cluster-token"],
        max_request_bytes=_int_flag(raw, "max-request-bytes"),
        max_concurrent_streams=_int_flag(raw, "max-concurrent-streams"),
        max_txn_ops=_int_flag(raw, "max-txn-ops"),
        quota_backend_bytes=_int_flag(raw, "quota-backend-bytes"),
        backend_batch_interval=_batch_interval(raw),
        backend_batch_limit=_int_flag(raw, "backend-batch-limit"),
        snapshot_count=_int_flag(raw, "snapshot-count"),
        heartbeat_interval_ms=_int_flag(raw, "heartbeat-interval"),
        election_timeout_ms=_int_flag(raw, "election-timeout"),
        cert_file=raw["cert-file"],
        key_file=raw["key-file"],
        trusted_ca_file=raw["trusted-ca-file"],
        client_cert_auth=raw["client-cert-auth"] == "true",
        client_crl_file=raw["client-crl-file"],
        client_cert_allowed_hostname=raw["client-cert-allowed-hostname"],
        auto_tls=raw["auto-tls"] == "true",
        openssl_ciphers=ciphers,
        peer_cert_file=raw["peer-cert-file"],
        peer_key_file=raw["peer-key-file"],
        peer_trusted_ca_file=raw["peer-trusted-ca-file"],
        peer_client_cert_auth=raw["peer-client-cert-auth"] == "true",
        peer_crl_file=raw["peer-crl-file"],
        peer_cert_allowed_cn=raw["peer-cert-allowed-cn"],
        peer_cert_allowed_hostname=raw["peer-cert-allowed-hostname"],
        peer_auto_tls=raw["peer-auto-tls"] == "true",
        self_signed_cert_validity=_uint_flag(raw, "self-signed-cert-validity"),
        grpc_keepalive_min_time=_duration_flag(raw, "grpc-keepalive-min-time"),
        grpc_keepalive_interval=_duration_flag(raw, "grpc-keepalive-interval"),
        grpc_keepalive_timeout=_duration_flag(raw, "grpc-keepalive-timeout"),
        watch_progress_notify_interval=_duration_flag(
            raw, "experimental-watch-progress-notify-interval"
        ),
        log_level=raw["log-level"],
        auto_compaction_mode=raw["auto-compaction-mode"],
        auto_compaction_retention=_compaction_retention(raw),
        corrupt_check_interval=_duration_flag(raw, "experimental-corrupt-check-time"),
        initial_corrupt_check=raw["experimental-initial-corrupt-check"] == "true",
        strict_reconfig_check=raw["strict-reconfig-check"] == "true",
        force_new_cluster=raw["force-new-cluster"] == "true",
        lease_checkpoint=raw["experimental-enable-lease-checkpoint"] == "true",
        warning_apply_duration=warning_apply_duration,
        auth_token=raw["auth-token"],
        auth_token_ttl=_int_flag(raw, "auth-token-ttl"),
        bcrypt_cost=raw["bcrypt-cost"],
        metrics=raw["metrics"],
        cors=raw["cors"],
        host_whitelist=raw["host-whitelist"],
        show_version=raw["version"] == "true",
        show_help=raw["help"] == "true",
    )
