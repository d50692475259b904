"""Process plumbing for `kubekv.embed`: free loopback ports, the server's
environment, and reaping a member's process and temporary directory even when its owner
never closes it. Stdlib only; polling is `kubekv_testing.polling`'s."""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping

import kubekv_server
from kubekv_server import EXIT_WITH_PARENT_ENV

HOST = "127.0.0.1"
# etcd stops within a second or two on SIGTERM; past this a member is SIGKILLed.
DEFAULT_STOP_TIMEOUT = 15.0
# Environment the server must not inherit: etcd's flag variables (read as flags) and the
# protobuf implementation switch some clients (python-etcd3) need but the server does not.
_STRIPPED_ENV_PREFIX = "ETCD_"
_STRIPPED_ENV = ("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION",)


# ----------------------------------------------------------------------------- ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_rng = random.Random()
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has
    not handed out before, chosen below the kernel's ephemeral range: a port from that
    range can be handed to an outgoing connection's source (peer links, clients) between
    the pick and the server's bind."""
    lo = 10000
    hi = _EPHEMERAL[0] - 1 if _EPHEMERAL[0] > lo + 1000 else 0
    with _ports_lock:
        for _ in range(200 if hi else 0):
            port = _rng.randrange(lo, hi)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # no room below the ephemeral range: let the kernel pick
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- process plumbing


def _package_root() -> str:
    """The sys.path entry this process imports kubekv_server from."""
    return str(pathlib.Path(kubekv_server.__file__).resolve().parent.parent)


def _site_dirs() -> set[str]:
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    with contextlib.suppress(AttributeError):
        dirs.append(site.getusersitepackages())
    return {str(pathlib.Path(d).resolve()) for d in dirs}


def server_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment an embedded member runs with: this process's, without etcd's flag
    variables, with kubekv's import root on PYTHONPATH when it is not an installed
    site-packages (a source checkout run from its root), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_STRIPPED_ENV_PREFIX) and k not in _STRIPPED_ENV}
    root = _package_root()
    if root not in _site_dirs():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def exit_with_parent_env() -> dict[str, str]:
    """The environment that makes a server die with this process (Linux): the server
    sets PR_SET_PDEATHSIG itself (kubekv_server/cli.py). PR_SET_PDEATHSIG fires when the
    *thread* that forked the child exits, so only a start from the main thread (which
    lives as long as the process) asks for it."""
    if not sys.platform.startswith("linux"):
        return {}
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {EXIT_WITH_PARENT_ENV: str(os.getpid())}


class Resources:
    """What a member must give back even if its owner is never closed: the process and
    the temporary directory. Holds no reference to the member, so the member can be
    garbage collected and this finalized."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.tmpdir: str | None = None

    def release(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()  # SIGKILL also ends a SIGSTOPped member
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(DEFAULT_STOP_TIMEOUT)
        tmpdir, self.tmpdir = self.tmpdir, None
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def owned_dir(base_dir: str | os.PathLike | None, res: Resources) -> pathlib.Path:
    if base_dir is not None:
        path = pathlib.Path(base_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    res.tmpdir = tempfile.mkdtemp(prefix="kubekv-embed-")
    return pathlib.Path(res.tmpdir)
