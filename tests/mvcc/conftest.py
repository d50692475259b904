from __future__ import annotations

import lmdb
import pytest

from kubekv_server.mvcc import MVCCStore


def open_env(path: str) -> lmdb.Environment:
    return lmdb.open(path, max_dbs=16, map_size=1 << 30)


@pytest.fixture
def env(tmp_path):
    e = open_env(str(tmp_path / "db"))
    yield e
    e.close()


@pytest.fixture
def store(env) -> MVCCStore:
    return MVCCStore(env)
