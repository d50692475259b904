"""Fixtures of the differential tests: one kubekv + etcd pair per module, a Differ per test."""

from __future__ import annotations

import pytest

from tests.differential.framework import ServerPair


@pytest.fixture(scope="module")
def server_pair(tmp_path_factory):
    """A kubekv and a real etcd for a whole module; tests use their own key prefixes."""
    pair = ServerPair(tmp_path_factory.mktemp("pair")).start()
    yield pair
    pair.stop()


@pytest.fixture
def differ(server_pair, request):
    """A Differ on the module's pair (restarted first if an earlier mismatch split it).

    `differ.prefix` is a key prefix of this test alone.
    """
    d = server_pair.differ()
    d.prefix = request.node.name.encode() + b"/"
    return d
