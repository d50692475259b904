"""pytest fixtures giving a project's tests an etcd v3 endpoint served by kubekv.

Registered through the `pytest11` entry point `kubekv`, so installing kubekv is enough
(`-p no:kubekv` turns it off). Every fixture starts real `kubekv_server` processes with
`kubekv.embed` on free 127.0.0.1 ports, data under pytest's temporary directory (kept
for the last runs, as pytest keeps its tmp dirs, so logs can be read after a failure),
and stops them when its scope ends.

- `kubekv_member` (session): a single running `kubekv.embed.Member`, shared by the
  whole session: tests should use their own key prefixes and must not stop it.
- `etcd_endpoint` (session): that member's `"127.0.0.1:PORT"` (python-etcd3, aetcd,
  etcdctl `--endpoints`); `etcd_url` (session): `"http://127.0.0.1:PORT"`.
- `kubekv_cluster` (function): a fresh 3-member `kubekv.embed.Cluster` per test, with a
  leader elected, for failover tests (`c.wait_leader().kill()`, `c.wait_leader()`).

A project's own fixture of the same name (in a conftest.py) overrides these, as pytest
gives local fixtures precedence over a plugin's.

Options: `--kubekv-flags="..."` or the ini option `kubekv_flags` (extra server flags for
every fixture's members, shell-quoted, e.g. `--unsafe-no-fsync`), and the ini option
`kubekv_start_timeout` (seconds, default 60).

This module imports nothing heavy at collection time: a project that never asks for
these fixtures does not import grpc through it.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kubekv.embed import Cluster, Member

CLUSTER_SIZE = 3  # the smallest cluster that survives a member's loss


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubekv", "kubekv (embedded etcd-compatible server)")
    group.addoption(
        "--kubekv-flags", dest="kubekv_flags", default=None, metavar="FLAGS",
        help="extra etcd flags for the kubekv fixtures' servers, shell-quoted "
             "(overrides the kubekv_flags ini option)",
    )
    parser.addini("kubekv_flags", "extra etcd flags for the kubekv fixtures' servers, "
                  "shell-quoted", default="")
    parser.addini("kubekv_start_timeout", "seconds a kubekv fixture waits for its servers "
                  "to be ready", default="60")


def _flags(config: pytest.Config) -> list[str]:
    cli = config.getoption("kubekv_flags")
    return shlex.split(cli if cli is not None else str(config.getini("kubekv_flags")))


def _start_timeout(config: pytest.Config) -> float:
    raw = str(config.getini("kubekv_start_timeout"))
    try:
        return float(raw)
    except ValueError:
        raise pytest.UsageError(
            f"kubekv_start_timeout: not a number of seconds: {raw!r}") from None


@pytest.fixture(scope="session")
def kubekv_member(pytestconfig: pytest.Config,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Member]:
    """A single-member kubekv server for the whole session (a `kubekv.embed.Member`)."""
    from kubekv.embed import Member

    member = Member(base_dir=tmp_path_factory.mktemp("kubekv"), flags=_flags(pytestconfig),
                    start_timeout=_start_timeout(pytestconfig))
    with member:
        yield member


@pytest.fixture(scope="session")
def etcd_endpoint(kubekv_member: Member) -> str:
    """`"127.0.0.1:PORT"` of the session's kubekv member."""
    return kubekv_member.endpoint


@pytest.fixture(scope="session")
def etcd_url(kubekv_member: Member) -> str:
    """`"http://127.0.0.1:PORT"` of the session's kubekv member."""
    return kubekv_member.url


@pytest.fixture
def kubekv_cluster(pytestconfig: pytest.Config,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A fresh 3-member kubekv cluster (a `kubekv.embed.Cluster`) for one test, stopped
    after it whatever the test did to its members."""
    from kubekv.embed import Cluster

    cluster = Cluster(CLUSTER_SIZE, base_dir=tmp_path_factory.mktemp("kubekv-cluster"),
                      flags=_flags(pytestconfig), start_timeout=_start_timeout(pytestconfig))
    with cluster:
        yield cluster
