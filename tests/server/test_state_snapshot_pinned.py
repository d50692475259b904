"""A snapshot copies the read view pinned at its index, not what was applied later: the
apply stage goes on while the snapshot thread copies (RaftNode._snapshot)."""

from __future__ import annotations

import lmdb

from kubekv_server.backend import state_snapshot
from kubekv_server.backend.state_db import Backend


def _apply(backend: Backend, index: int, key: bytes) -> None:
    db = backend.open_db(b"test")
    txn = backend.apply_txn()
    txn.put(key, b"v", db=db)
    backend.set_applied_index(txn, index)
    backend.commit()


def test_snapshot_holds_the_pinned_view_not_later_writes(tmp_path):
    backend = Backend(str(tmp_path / "state"))
    _apply(backend, 5, b"a")
    view = backend.env.begin()  # what _pin_snapshot pins, right after its commit
    _apply(backend, 6, b"b")  # applied while the copy has not begun yet
    path = state_snapshot.create(backend, str(tmp_path / "snap"), term=2, index=5, txn=view)
    _apply(backend, 7, b"c")
    view.abort()

    env = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=32)
    try:
        with env.begin() as txn:
            keys = [k for k, _ in txn.cursor(db=env.open_db(b"test", txn=txn, create=False))]
            applied = txn.get(Backend.APPLIED_INDEX, db=env.open_db(b"meta", txn=txn,
                                                                     create=False))
    finally:
        env.close()
    assert keys == [b"a"]
    assert int.from_bytes(applied, "big") == 5
    assert backend.applied_index() == 7
    backend.close()
