"""The live table holds revisions; a store written when it held KeyValues is upgraded
on open (and inside a snapshot's install) with every read unchanged."""

from __future__ import annotations

import lmdb
import pytest

from kubekv_server.backend import state_snapshot
from kubekv_server.backend.state_db import Backend
from kubekv_server.mvcc import CorruptStoreError, MVCCError, MVCCStore
from kubekv_server.mvcc.live_layout import LAYOUT_KEY, is_current
from kubekv_server.mvcc.revision import REV_BYTES_LEN
from tests.mvcc.conftest import open_env

LONG = b"l" * 500


def _fill(store: MVCCStore, env: lmdb.Environment) -> None:
    """Puts, overwrites, deletes and long keys over several revisions."""
    for batch in (
        [("put", b"a", b"1"), ("put", b"b", b"2"), ("put", LONG + b"1", b"x")],
        [("put", b"a", b"1b"), ("put", LONG + b"2", b"y")],
        [("delete", b"b"), ("put", b"c", b"3" * 3000)],
        [("put", b"b", b"again")],
    ):
        with env.begin(write=True) as txn, store.write(txn) as w:
            for op in batch:
                if op[0] == "put":
                    w.put(op[1], op[2])
                else:
                    w.delete_range(op[1], None)


def _reads(store: MVCCStore) -> list:
    """Everything a client could read: all keys now, at each revision, one by one."""
    with store.read() as r:
        current = r.current_revision
        out = [r.range(b"\x00", b"").raw_kvs, r.range(b"a", b"c").count]
        for rev in range(1, current + 1):
            out.append(r.range(b"\x00", b"", rev=rev).raw_kvs)
        for k in (b"a", b"b", b"c", LONG + b"1", LONG + b"2", b"absent"):
            out.append(r.range(k, None).raw_kvs)
    return out


def _to_old_layout(env: lmdb.Environment, store: MVCCStore) -> None:
    """Rewrite ``live`` as stores before the upgrade held it: the KeyValue itself."""
    d = store._dbs
    with env.begin(write=True) as txn:
        rows = [(sk, txn.get(rb, db=d.key)) for sk, rb in txn.cursor(db=d.live)]
        for sk, kv in rows:
            txn.put(sk, kv, db=d.live)
        txn.delete(LAYOUT_KEY, db=d.meta)


def test_live_holds_the_revision_of_each_current_row(store, env):
    _fill(store, env)
    d = store._dbs
    with env.begin() as txn:
        assert is_current(txn, d.meta)
        rows = list(txn.cursor(db=d.live))
        assert len(rows) == 5  # a, b, c and two long keys
        for _sk, rb in rows:
            assert len(rb) == REV_BYTES_LEN and txn.get(rb, db=d.key) is not None


def test_an_older_store_is_upgraded_on_open_and_reads_the_same(tmp_path, caplog):
    env = open_env(str(tmp_path / "db"))
    store = MVCCStore(env)
    _fill(store, env)
    before = _reads(store)
    _to_old_layout(env, store)
    with env.begin() as txn:
        assert not is_current(txn, store._dbs.meta)
    with caplog.at_level("INFO", logger="kubekv_server.mvcc.store"):
        upgraded = MVCCStore(env)
    assert "event=mvcc_layout_upgraded live_rows=5" in caplog.text
    with env.begin() as txn:
        assert is_current(txn, upgraded._dbs.meta)
        assert all(len(v) == REV_BYTES_LEN for _k, v in txn.cursor(db=upgraded._dbs.live))
    assert _reads(upgraded) == before
    caplog.clear()
    MVCCStore(env)  # a second open has nothing to do
    assert "mvcc_layout_upgraded" not in caplog.text
    env.close()


def test_a_live_row_that_contradicts_the_history_is_refused(tmp_path):
    env = open_env(str(tmp_path / "db"))
    store = MVCCStore(env)
    _fill(store, env)
    _to_old_layout(env, store)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"\n\x01anot what history holds", db=store._dbs.live)
    with pytest.raises(CorruptStoreError, match="differs from its newest history row"):
        MVCCStore(env)
    with env.begin() as txn:  # nothing was changed
        assert not is_current(txn, store._dbs.meta)
    env.close()


def test_a_read_only_opener_of_an_older_store_is_told_to_upgrade_it(tmp_path):
    path = str(tmp_path / "db")
    env = open_env(path)
    store = MVCCStore(env)
    _fill(store, env)
    _to_old_layout(env, store)
    env.close()
    ro = lmdb.open(path, max_dbs=16, map_size=1 << 30, readonly=True)
    with pytest.raises(MVCCError, match="older layout"):
        MVCCStore(ro)
    ro.close()


def test_a_snapshot_of_an_older_store_is_upgraded_as_it_is_installed(tmp_path):
    old = Backend(str(tmp_path / "old"))
    old_store = MVCCStore(old.env)
    _fill(old_store, old.env)
    before = _reads(old_store)
    _to_old_layout(old.env, old_store)
    snap = state_snapshot.create(old, str(tmp_path / "snaps"), term=2, index=9)
    old.close()

    member = Backend(str(tmp_path / "member"))
    store = MVCCStore(member.env)
    member.on_install.append(store.upgrade_layout)
    state_snapshot.install(member, snap)
    with member.env.begin() as txn:
        assert is_current(txn, store._dbs.meta)
    assert _reads(store) == before
    member.close()
