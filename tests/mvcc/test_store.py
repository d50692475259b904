"""Example-based tests of MVCCStore: etcd scenarios, limits, other processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from etcdproto.mvccpb.kv_pb2 import Event, KeyValue
from kubekv_server.mvcc import (
    NEVER_COMPACTED,
    CompactedError,
    FutureRevError,
    InvalidKeyError,
    MVCCStore,
    rev_to_bytes,
)
from kubekv_server.mvcc.stored_key import PREFIX

from .conftest import open_env


def put(store, env, *kvs):
    with env.begin(write=True) as t:
        w = store.write(t)
        for k, v in kvs:
            w.put(k, v, 0)
        return w.end()


def test_empty_store(store):
    with store.read() as r:
        assert r.current_revision == 1
        assert r.compact_revision == NEVER_COMPACTED == -1
        res = r.range(b"a", b"")
        assert (res.kvs, res.count, res.rev) == ([], 0, 1)
        with pytest.raises(FutureRevError):
            r.range(b"a", None, rev=2)
    assert store.hash_kv(0)[1:] == (-1, 1)


def test_generations_after_delete(store, env):
    """etcd: a put after a delete starts a new generation (version 1, new create rev)."""
    assert put(store, env, (b"k", b"1")) == 2
    assert put(store, env, (b"k", b"2")) == 3
    with env.begin(write=True) as t:
        w = store.write(t)
        (prev,) = w.delete_range(b"k", None)
        assert (prev.value, prev.version, prev.create_revision) == (b"2", 2, 2)
        assert w.changes == [
            Event(type=Event.DELETE, kv=KeyValue(key=b"k", mod_revision=4), prev_kv=prev)
        ]
        assert w.end() == 4
    assert put(store, env, (b"k", b"3")) == 5
    with store.read() as r:
        (kv,) = r.range(b"k", None).kvs
        assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)
        assert r.range(b"k", None, rev=4).count == 0
        assert r.range(b"k", None, rev=3).kvs[0].version == 2


def test_write_txn_reads_own_writes_and_is_one_revision(store, env):
    put(store, env, (b"a", b"0"))
    with env.begin(write=True) as t:
        w = store.write(t)
        assert w.range(b"a", None).rev == 2
        w.put(b"a", b"1", 0)
        w.put(b"b", b"1", 5)
        res = w.range(b"a", b"c")
        assert res.rev == 3 and [kv.value for kv in res.kvs] == [b"1", b"1"]
        assert [kv.value for kv in w.range(b"a", b"c", rev=2).kvs] == [b"0"]
        assert w.delete_range(b"zz", None) == []
        w.delete_range(b"b", None)
        assert w.end() == 3
    with env.begin() as t:
        hist = list(t.cursor(db=store._dbs.key).iternext(values=False))
    assert hist == [rev_to_bytes(2, 0), rev_to_bytes(3, 0), rev_to_bytes(3, 1),
                    rev_to_bytes(3, 2, tombstone=True)]  # fmt: skip


class _CountingTxn:
    """An LMDB write txn that counts reads of the live table (the rest passes through)."""

    def __init__(self, txn, live) -> None:
        self._txn, self._live, self.live_gets = txn, live, 0

    def get(self, key, db=None):
        self.live_gets += db is self._live
        return self._txn.get(key, db=db)

    def __getattr__(self, name):
        return getattr(self._txn, name)


def test_a_put_after_a_read_of_its_key_reads_it_no_second_time(store, env):
    """A Txn's compare reads the key its put then writes: the put takes that read's
    value as its previous one; any write of the key in between replaces what was read."""
    put(store, env, (b"a", b"0"), (b"a", b"1"), (b"b", b"0"))
    with env.begin(write=True) as raw:
        t = _CountingTxn(raw, store._dbs.live)
        w = store.write(t)
        assert [kv.version for kv in w.range(b"a", None).kvs] == [2]
        assert t.live_gets == 1
        assert w.put(b"a", b"2", 0).version == 2  # the read's value, no second read
        assert t.live_gets == 1
        assert w.put(b"a", b"3", 0).version == 3  # after its own write: what it wrote
        w.range(b"b", None)
        w.delete_range(b"b", None)
        assert w.put(b"b", b"1", 0) is None  # the delete forgot the read
        w.range(b"c", None)
        assert w.put(b"a", b"4", 0).version == 4  # another key's read: a read of its own
        assert t.live_gets == 6  # a, b, the delete of b, put b, c, put a
        w.end()
    with store.read() as r:
        assert [(kv.key, kv.version, kv.create_revision) for kv in r.range(b"a", b"c").kvs] \
            == [(b"a", 5, 2), (b"b", 1, 3)]


def test_live_kv_reads_what_a_range_of_one_key_reads(store, env):
    """A Txn's compare on one key reads its live row through live_kv: the row
    range(key, None) gives (None if absent), in a write txn and a read view alike."""
    long_key = b"k" * (PREFIX + 5)
    put(store, env, (b"a", b"0"), (b"a", b"1"), (long_key, b"L"), (b"b", b"0"))
    keys = (b"a", long_key, b"b", b"zz", b"")

    def same(txn) -> None:
        for key in keys:
            raw = txn.range(key, None).raw_kvs
            assert txn.live_kv(key) == (raw[0] if raw else None)

    with env.begin(write=True) as t:
        w = store.write(t)
        w.delete_range(b"b", None)
        same(w)
        assert w.live_kv(b"b") is None
        assert KeyValue.FromString(w.live_kv(b"a")).version == 2
        w.end()
    with store.read() as r:
        same(r)
        assert KeyValue.FromString(r.live_kv(long_key)).value == b"L"


def test_noop_write_txn_keeps_revision(store, env):
    with env.begin(write=True) as t:
        w = store.write(t)
        assert w.delete_range(b"a", b"") == []
        assert w.end() == 1


def test_compaction_boundaries(store, env):
    for i in range(5):
        put(store, env, (b"k", b"%d" % i))  # revs 2..6
    with env.begin(write=True) as t:
        with pytest.raises(FutureRevError):
            store.compact(t, 7)
        store.compact(t, 4)
        with pytest.raises(CompactedError):
            store.compact(t, 4)
    with store.read() as r:
        assert r.compact_revision == 4
        assert r.range(b"k", None, rev=4).kvs[0].value == b"2"  # rev == compact is readable
        with pytest.raises(CompactedError):
            r.range(b"k", None, rev=3)
    with pytest.raises(CompactedError):
        store.hash_kv(4)  # HashKV's boundary is rev <= compact, as etcd's HashByRev
    with env.begin(write=True) as t:
        assert store.compaction_pending(t)
        assert store.compact_step(t, 1) is True
    path = env.path()
    env.close()
    env = open_env(path)  # progress survives restart
    store = MVCCStore(env)
    with env.begin(write=True) as t:
        while store.compact_step(t, 1):
            pass
        assert not store.compaction_pending(t)
        hist = list(t.cursor(db=store._dbs.key).iternext(values=False))
        assert hist == [rev_to_bytes(r) for r in (4, 5, 6)]
    env.close()


def test_long_keys(store, env):
    """Keys longer than LMDB's 511-byte limit, sharing a stored prefix, come back whole
    and in key order; the empty key is refused."""
    p = b"k" * PREFIX
    longs = [p + b"z" * 600, p + b"\x00", p + b"b", p + b"bb" * 300]
    with env.begin(write=True) as t:
        w = store.write(t)
        with pytest.raises(InvalidKeyError):
            w.put(b"", b"v", 0)
        w.put(b"k", b"v", 0)
        for i, k in enumerate(longs):
            w.put(k, b"%d" % i, 0)
        assert w.delete_range(p + b"q", None) == []
        assert w.delete_range(b"", None) == []
        assert w.range(b"", None).count == 0
        assert w.range(b"", b"").count == 5
        w.end()
    with env.begin(write=True) as t:
        w = store.write(t)
        assert w.put(longs[0], b"again", 0).value == b"0"
        w.end()
    with store.read() as r:
        assert [kv.key for kv in r.range(b"k", b"").kvs] == [b"k", *sorted(longs)]
        assert r.range(longs[0], None).kvs[0].value == b"again"
        assert r.range(longs[0], None, rev=2).kvs[0].value == b"0"
        assert [kv.key for kv in r.range(p + b"b", p + b"c", rev=2).kvs] == sorted(longs[2:])
        assert r.range(p + b"b", p + b"c", limit=1).kvs[0].key == p + b"b"
        assert r.range(p + b"\x00\x00", p + b"bb").count == 1
    with env.begin(write=True) as t:
        w = store.write(t)
        deleted = w.delete_range(p, b"")
        assert [kv.key for kv in deleted] == sorted(longs)
        assert [e.kv.key for e in w.changes] == sorted(longs)
        w.end()
    with env.begin(write=True) as t:  # compaction forgets long keys nothing refers to
        store.compact(t, 4)
        while store.compact_step(t):
            pass
        assert t.stat(store._dbs.long_keys)["entries"] == 0


def test_other_process_reads_readonly(store, env, tmp_path):
    put(store, env, (b"a", b"1"), (b"b", b"2"))
    env.sync(True)
    code = textwrap.dedent(f"""
        import lmdb
        from kubekv_server.mvcc import MVCCStore
        env = lmdb.open({env.path()!r}, max_dbs=16, readonly=True, lock=True)
        with MVCCStore(env).read() as r:
            print(r.current_revision, r.range(b"a", b"").count)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]


def test_db_size(store, env):
    put(store, env, (b"a", b"1"))
    assert store.db_size() >= store.db_size_in_use() > 0


def test_changes_are_the_events_with_their_encoded_size(store, env):
    """WriteTxn.changes: one Event per change (prev_kv when there was one) and
    changes_bytes, their encoded size, what the watch hub budgets its log with."""
    long_key = b"L" * (PREFIX + 10)
    put(store, env, (b"a", b"1"), (long_key, b"x" * 300))
    with env.begin(write=True) as t:
        w = store.write(t)
        w.put(b"a", b"2" * 200, 7)
        w.put(b"new", b"")
        w.put(long_key, b"y" * 70000)
        w.delete_range(b"a", None)
        w.delete_range(b"n", b"o")
        rev = w.end()
        events = w.changes
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (Event.PUT, b"a", rev), (Event.PUT, b"new", rev), (Event.PUT, long_key, rev),
        (Event.DELETE, b"a", rev), (Event.DELETE, b"new", rev)]
    assert events[0].prev_kv == KeyValue(key=b"a", value=b"1", create_revision=2,
                                         mod_revision=2, version=1)
    assert events[0].kv.version == 2 and events[0].kv.lease == 7
    assert not events[1].HasField("prev_kv")
    assert events[3].prev_kv.value == b"2" * 200
    assert w.changes_bytes == sum(e.ByteSize() for e in events)
