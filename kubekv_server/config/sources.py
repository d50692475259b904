"""Where flag values come from besides the command line, as in etcd: ``ETCD_*``
environment variables and the YAML file of ``--config-file``.

Both produce raw flag strings (the command line's form), so one parser (``config.py``)
validates everything. etcd's rules: a file replaces the command line and the
environment entirely; an environment variable fills a flag not given on the command
line, and one shadowed by a given flag is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import yaml

PREFIX = "ETCD_"

# etcd's YAML transport-security blocks: their keys and the flags they stand for.
_SECURITY = {
    "client-transport-security": {
        "cert-file": "cert-file", "key-file": "key-file", "client-cert-auth": "client-cert-auth",
        "trusted-ca-file": "trusted-ca-file", "auto-tls": "auto-tls",
        "allowed-hostname": "client-cert-allowed-hostname",
    },
    "peer-transport-security": {
        "cert-file": "peer-cert-file", "key-file": "peer-key-file",
        "client-cert-auth": "peer-client-cert-auth", "trusted-ca-file": "peer-trusted-ca-file",
        "auto-tls": "peer-auto-tls", "allowed-cn": "peer-cert-allowed-cn",
        "allowed-hostname": "peer-cert-allowed-hostname",
    },
}
# time.Duration fields: a number of nanoseconds in etcd's YAML.
_DURATIONS = {"backend-batch-interval", "grpc-keepalive-min-time", "grpc-keepalive-interval",
              "grpc-keepalive-timeout", "experimental-corrupt-check-time",
              "experimental-watch-progress-notify-interval",
              "experimental-warning-apply-duration"}
# YAML keys that differ from the flag name.
_RENAMED = {"experimental-backend-bbolt-freelist-type": "backend-bbolt-freelist-type"}


class SourceError(Exception):
    """An environment variable or config file etcd would refuse (etcd's wording)."""


def env_key(flag: str) -> str:
    """etcd's FlagToEnv: ``--initial-cluster-state`` → ``ETCD_INITIAL_CLUSTER_STATE``."""
    return PREFIX + flag.upper().replace("-", "_")


def from_environment(
    environ: Mapping[str, str], flags: Iterable[str], given: set[str]
) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """Flag values from ``ETCD_*`` variables for flags not given on the command line,
    and the log lines etcd writes about them (used, unrecognized)."""
    keys = {env_key(f): f for f in flags}
    values: dict[str, str] = {}
    notes: list[tuple[int, str]] = []
    for key in sorted(k for k in environ if k.startswith(PREFIX)):
        value = environ[key]
        flag = keys.get(key)
        if flag is None:
            notes.append((logging.WARNING,
                          f'msg="unrecognized environment variable" environment-variable={key}'))
        elif flag in given:
            raise SourceError(
                "conflicting environment variable is shadowed by corresponding command-line "
                f"flag (either unset environment variable or disable flag)): {key}")
        elif value:
            values[flag] = value
            notes.append((logging.INFO, f'msg="recognized and used environment variable" '
                          f'variable-name={key} variable-value="{value}"'))
    return values, notes


def from_file(path: str, flags: Iterable[str]) -> dict[str, str]:
    """Flag values from an etcd YAML config file (unknown keys are ignored, as etcd's
    JSON-based decoding does)."""
    try:
        with open(path, "rb") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise SourceError(f"open {path}: {exc.strerror.lower()}") from None
    except yaml.YAMLError as exc:
        raise SourceError(f"error converting YAML to JSON: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SourceError("error unmarshaling JSON: cannot unmarshal into Go value of type "
                          "embed.configYAML")
    known = set(flags)
    out: dict[str, str] = {}
    for key, value in doc.items():
        key = str(key)
        if key in _SECURITY:
            for sub, name in _SECURITY[key].items():
                if isinstance(value, dict) and value.get(sub) is not None and name in known:
                    out[name] = _text(value[sub], False)
            continue
        name = _RENAMED.get(key, key)
        if name in known and value is not None:
            out[name] = _text(value, name in _DURATIONS)
    return out


def _text(value: object, duration: bool) -> str:
    """A YAML value as the command line would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v, False) for v in value)
    if duration and isinstance(value, int):
        return f"{value}ns"
    return str(value)
