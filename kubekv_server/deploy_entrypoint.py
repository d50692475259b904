"""`kubekv-entrypoint`: turn a member's identity into etcd's flags, then exec kubekv.

The one entrypoint of deploy/ (the container image, the Kubernetes StatefulSet and the
compose file all run it). It lives in the package, exposed as a console script, so that
`pip install kubekv` puts it on PATH in the image and on a VM alike, and its logic is
tested by import as well as by process.

Two modes, chosen by ``KUBEKV_INITIAL_CLUSTER_SIZE``:

* unset: a single member (``--name default``) listening on all addresses, advertising
  the host's name, its data under ``/var/lib/kubekv/<name>.kubekv``;
* set to N: a member of a StatefulSet (or of any set of hosts named ``BASE-<ordinal>``).
  The ordinal comes from the host name (a StatefulSet pod's host name is its pod name,
  ``kubekv-2``), the peers' addresses from the headless Service's DNS names
  (``BASE-i.SERVICE.NAMESPACE.svc.CLUSTER_DOMAIN``), and ordinals ``0..N-1`` form the
  initial cluster. An ordinal ``>= N`` is a member added later with ``etcdctl member
  add``: it always starts with ``--initial-cluster-state existing`` and an initial
  cluster of ordinals ``0..ordinal`` (kubekv, like etcd, asks those peers for the
  cluster it was added to).

In both modes ``--initial-cluster-state existing`` is used once the member's data dir
holds a member (``<data-dir>/member`` exists: etcd's own test is that its WAL under
``member/`` exists), so a restarted pod rejoins with its data instead of bootstrapping.

The user's settings always win: a flag given on the command line (passed through to
kubekv as it is) or as an ``ETCD_*`` variable (read by kubekv itself, as etcd does) is
never computed here. That is also what kubekv requires: a flag given both ways is
refused ("conflicting environment variable is shadowed"). With ``--config-file`` (or
``ETCD_CONFIG_FILE``), which replaces every other source in etcd, nothing is computed.

``kubekv-entrypoint healthcheck`` is the container's HEALTHCHECK: a GET of
``KUBEKV_HEALTHCHECK_URL`` (default ``http://127.0.0.1:2381/livez``, the metrics
listener this entrypoint starts, plain HTTP whatever the client port's TLS).

The environment variables (documented in deploy/README.md) are ``ENV_DOCS`` below.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kubekv_server.config.flags import BOOL_FLAGS, VALUE_FLAGS
from kubekv_server.config.sources import env_key

log = logging.getLogger("kubekv.entrypoint")

# What each knob does; deploy/README.md lists the same (a test keeps them in step).
ENV_DOCS = {
    "KUBEKV_INITIAL_CLUSTER_SIZE": "members that bootstrap the cluster together (ordinals "
                                   "0..N-1); unset: a single member",
    "KUBEKV_PEER_SERVICE": "the headless Service whose DNS names the members use",
    "KUBEKV_NAMESPACE": "the Service's namespace (default: the pod's, else 'default')",
    "KUBEKV_CLUSTER_DOMAIN": "the cluster's DNS domain (default 'cluster.local')",
    "KUBEKV_PEER_DOMAIN": "the DNS suffix after 'BASE-i.' (replaces SERVICE.NAMESPACE.svc."
                          "DOMAIN; set empty for bare host names, as in compose)",
    "KUBEKV_HOSTNAME": "this member's host name (default: the system's)",
    "KUBEKV_ADVERTISE_HOST": "single member: the host in its advertised URLs "
                             "(default: the host name)",
    "KUBEKV_LISTEN_HOST": "the address listeners bind (default 0.0.0.0; '[::]' for IPv6)",
    "KUBEKV_CLIENT_PORT": "client port (default 2379)",
    "KUBEKV_PEER_PORT": "peer port (default 2380)",
    "KUBEKV_METRICS_PORT": "plain-HTTP /metrics and health port (default 2381; 'off': none)",
    "KUBEKV_DATA_ROOT": "where the data dir <name>.kubekv goes (default /var/lib/kubekv)",
    "KUBEKV_CLIENT_SCHEME": "http or https for client URLs (default: https when a client "
                            "certificate or --auto-tls is given)",
    "KUBEKV_PEER_SCHEME": "http or https for peer URLs (default: https when a peer "
                          "certificate or --peer-auto-tls is given)",
    "KUBEKV_ADDRESS_MAP": "host:port=host:port,... rewrites computed addresses (tests, NAT)",
    "KUBEKV_DRY_RUN": "1: print the kubekv command as JSON instead of running it",
    "KUBEKV_HEALTHCHECK_URL": "what 'kubekv-entrypoint healthcheck' fetches",
}

DEFAULT_DATA_ROOT = "/var/lib/kubekv"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_HEALTHCHECK_TIMEOUT = 5.0  # seconds; the container HEALTHCHECK's own timeout is longer
# The namespace file Kubernetes mounts into every pod with a service account token.
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# etcd's guidance is 3, 5 or 7 voting members; the bound only keeps a typo (an extra
# digit) from producing a megabyte-long --initial-cluster.
MAX_CLUSTER_SIZE = 255
MAX_ORDINAL = 1023
_ORDINAL = re.compile(r"^(?P<base>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>[0-9]+)$")
_SCHEMES = ("http", "https")


class EntrypointError(Exception):
    """A setting the entrypoint cannot act on (reported in one line, exit status 2)."""


@dataclass
class Plan:
    """What the entrypoint decided: the kubekv arguments and why."""

    args: list[str]
    name: str
    data_dir: str
    state: str
    notes: list[str] = field(default_factory=list)


def user_flags(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The etcd flags the user set, on the command line (Go's flag forms, read with
    kubekv's own flag tables) or as ``ETCD_*`` variables, by flag name."""
    given: dict[str, str] = {}
    for flag in (*BOOL_FLAGS, *VALUE_FLAGS):
        key = env_key(flag)
        if key in environ:  # present, even empty: kubekv refuses a flag given twice
            given[flag] = environ[key]
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue  # kubekv reports it
        name, has_value, value = arg.lstrip("-").partition("=")
        if name == "h":
            name = "help"
        if name in VALUE_FLAGS and not has_value:
            value = argv[i] if i < len(argv) else ""
            i += 1
        elif name in BOOL_FLAGS and not has_value:
            value = "true"
        given[name] = value
    return given


def _int_env(environ: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    text = environ.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        raise EntrypointError(f"{key}={text!r} is not a number") from None
    if not lo <= value <= hi:
        raise EntrypointError(f"{key}={value} is out of range [{lo}, {hi}]")
    return value


def parse_address_map(text: str) -> dict[str, str]:
    """``KUBEKV_ADDRESS_MAP``: ``host:port=host:port`` pairs, comma-separated."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        src, eq, dst = item.partition("=")
        if not eq or ":" not in src or ":" not in dst:
            raise EntrypointError(
                f"KUBEKV_ADDRESS_MAP entry {item!r} is not host:port=host:port")
        out[src.strip()] = dst.strip()
    return out


def _scheme(environ: Mapping[str, str], key: str, tls: bool) -> str:
    scheme = environ.get(key, "").strip() or ("https" if tls else "http")
    if scheme not in _SCHEMES:
        raise EntrypointError(f"{key}={scheme!r}: expected http or https")
    return scheme


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "t", "true")


def _namespace(environ: Mapping[str, str]) -> str:
    if environ.get("KUBEKV_NAMESPACE"):
        return environ["KUBEKV_NAMESPACE"]
    try:
        with open(NAMESPACE_FILE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def plan(argv: Sequence[str], environ: Mapping[str, str], hostname: str | None = None) -> Plan:
    """The kubekv command line for this member: the user's arguments plus every flag
    the user left to us. Pure but for reading the data dir's existence (and the pod's
    namespace file when ``KUBEKV_NAMESPACE`` is unset)."""
    given = user_flags(argv, environ)
    if _true(given.get("help")) or _true(given.get("version")) or given.get("config-file"):
        # --config-file replaces every flag and variable in etcd: nothing to add.
        return Plan(list(argv), given.get("name", "default"), given.get("data-dir", ""), "",
                    ["config file, --help or --version given: flags passed through as they are"])
    host = (environ.get("KUBEKV_HOSTNAME") or hostname or socket.gethostname()).split(".")[0]
    client_port = _int_env(environ, "KUBEKV_CLIENT_PORT", 2379, 1, 65535)
    peer_port = _int_env(environ, "KUBEKV_PEER_PORT", 2380, 1, 65535)
    metrics_text = environ.get("KUBEKV_METRICS_PORT", "").strip().lower()
    metrics_port = None if metrics_text == "off" else _int_env(
        environ, "KUBEKV_METRICS_PORT", 2381, 1, 65535)
    listen_host = environ.get("KUBEKV_LISTEN_HOST", "").strip() or "0.0.0.0"
    addr_map = parse_address_map(environ.get("KUBEKV_ADDRESS_MAP", ""))
    client_scheme = _scheme(environ, "KUBEKV_CLIENT_SCHEME",
                            bool(given.get("cert-file")) or _true(given.get("auto-tls")))
    peer_scheme = _scheme(environ, "KUBEKV_PEER_SCHEME",
                          bool(given.get("peer-cert-file")) or _true(given.get("peer-auto-tls")))

    def url(scheme: str, hostport: str) -> str:
        return f"{scheme}://{addr_map.get(hostport, hostport)}"

    def listen(scheme: str, own_host: str, port: int) -> str:
        # A mapped own address is also where to listen (tests: a loopback port each).
        return f"{scheme}://{addr_map.get(f'{own_host}:{port}', f'{listen_host}:{port}')}"

    notes: list[str] = []
    size_text = environ.get("KUBEKV_INITIAL_CLUSTER_SIZE", "").strip()
    if size_text:
        size = _int_env(environ, "KUBEKV_INITIAL_CLUSTER_SIZE", 1, 1, MAX_CLUSTER_SIZE)
        m = _ORDINAL.match(host)
        if m is None:
            raise EntrypointError(
                f"host name {host!r} does not end in -<ordinal> (a StatefulSet pod's name); "
                "set KUBEKV_HOSTNAME or unset KUBEKV_INITIAL_CLUSTER_SIZE")
        base, ordinal = m["base"], int(m["ordinal"])
        if ordinal > MAX_ORDINAL:
            raise EntrypointError(f"ordinal {ordinal} is above {MAX_ORDINAL}")
        if "KUBEKV_PEER_DOMAIN" in environ:
            domain = environ["KUBEKV_PEER_DOMAIN"].strip().strip(".")
        elif environ.get("KUBEKV_PEER_SERVICE"):
            cluster_domain = (environ.get("KUBEKV_CLUSTER_DOMAIN", "").strip().strip(".")
                              or DEFAULT_CLUSTER_DOMAIN)
            domain = f"{environ['KUBEKV_PEER_SERVICE']}.{_namespace(environ)}.svc.{cluster_domain}"
        else:
            raise EntrypointError("KUBEKV_INITIAL_CLUSTER_SIZE is set: set KUBEKV_PEER_SERVICE "
                                  "(the headless Service) or KUBEKV_PEER_DOMAIN")

        def fqdn(i: int) -> str:
            return f"{base}-{i}.{domain}" if domain else f"{base}-{i}"

        name = given.get("name") or host
        own = fqdn(ordinal)
        computed = {
            "listen-client-urls": listen(client_scheme, own, client_port),
            "advertise-client-urls": url(client_scheme, f"{own}:{client_port}"),
            "listen-peer-urls": listen(peer_scheme, own, peer_port),
            "initial-advertise-peer-urls": url(peer_scheme, f"{own}:{peer_port}"),
            "initial-cluster": ",".join(
                f"{base}-{i}={url(peer_scheme, f'{fqdn(i)}:{peer_port}')}"
                for i in range(max(size, ordinal + 1))),
        }
        joiner = ordinal >= size
        if joiner:
            notes.append(f"ordinal {ordinal} >= KUBEKV_INITIAL_CLUSTER_SIZE {size}: joining an "
                         "existing cluster (add it first with etcdctl member add)")
    else:
        name = given.get("name") or "default"
        own = environ.get("KUBEKV_ADVERTISE_HOST", "").strip() or host
        adv_peer = given.get("initial-advertise-peer-urls") or url(peer_scheme,
                                                                   f"{own}:{peer_port}")
        computed = {
            "listen-client-urls": listen(client_scheme, own, client_port),
            "advertise-client-urls": url(client_scheme, f"{own}:{client_port}"),
            "listen-peer-urls": listen(peer_scheme, own, peer_port),
            "initial-advertise-peer-urls": adv_peer,
            "initial-cluster": f"{name}={adv_peer}",
        }
        joiner = False
    if metrics_port is not None:
        computed["listen-metrics-urls"] = listen("http", own, metrics_port)
    data_root = environ.get("KUBEKV_DATA_ROOT", "").strip() or DEFAULT_DATA_ROOT
    data_dir = given.get("data-dir") or os.path.join(data_root, f"{name}.kubekv")
    # etcd bootstraps only when it finds no WAL under <data-dir>/member; kubekv keeps its
    # state and log there too. Once it exists, the member restarts from it.
    has_data = os.path.isdir(os.path.join(data_dir, "member"))
    state = "existing" if (has_data or joiner) else "new"
    if has_data:
        notes.append(f"data dir {data_dir} holds a member: restarting it")
    computed = {"name": name, "data-dir": data_dir, **computed, "initial-cluster-state": state}
    added = [f"--{flag}={value}" for flag, value in computed.items() if flag not in given]
    state = given.get("initial-cluster-state") or state
    return Plan([*added, *argv], name, data_dir, state, notes)


def healthcheck_url(environ: Mapping[str, str]) -> str:
    """What the HEALTHCHECK fetches: KUBEKV_HEALTHCHECK_URL, else etcd's /livez on the
    metrics listener this entrypoint starts (plain HTTP, whatever the client TLS)."""
    port = environ.get("KUBEKV_METRICS_PORT", "").strip()
    default = f"http://127.0.0.1:{port if port and port != 'off' else 2381}/livez"
    return environ.get("KUBEKV_HEALTHCHECK_URL", "").strip() or default


def healthcheck(environ: Mapping[str, str]) -> int:
    """GET the health URL: 0 when it answers 200, 1 otherwise (Docker's HEALTHCHECK)."""
    target = healthcheck_url(environ)
    try:
        with urllib.request.urlopen(target, timeout=DEFAULT_HEALTHCHECK_TIMEOUT) as resp:
            body = resp.read(4096)
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(4096), exc.code
    except (OSError, ValueError) as exc:
        print(f"kubekv-entrypoint: healthcheck {target}: {exc}", file=sys.stderr)
        return 1
    text = body.decode("utf-8", "replace").strip()
    print(f"{target}: {status} {text[:200]}")
    return 0 if status == 200 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Compute the flags, log them on one line, exec kubekv in this process (so it is
    PID 1 in a container and gets the stop signal itself)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["healthcheck"]:
        return healthcheck(os.environ)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    try:
        p = plan(argv, os.environ)
    except EntrypointError as exc:
        print(f"kubekv-entrypoint: {exc}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "kubekv_server", *p.args]
    if _true(os.environ.get("KUBEKV_DRY_RUN")):
        print(json.dumps(command[3:]))
        return 0
    for note in p.notes:
        log.info('msg="%s"', note)
    log.info('msg="starting kubekv" name=%s data-dir=%s initial-cluster-state=%s args=%s',
             p.name, p.data_dir, p.state or "-", json.dumps(p.args))
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
