"""Model-based test: MVCCStore against a small pure-Python model of etcd's MVCC.

The model keeps every history row as (main, sub, key, tombstone, KeyValue bytes)
and answers reads by scanning them, with etcd 3.4's rules written out plainly.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from etcdproto.mvccpb.kv_pb2 import Event, KeyValue
from kubekv_server.mvcc import CompactedError, FutureRevError, MVCCStore, rev_to_bytes
from kubekv_server.mvcc.hash import crc32c
from kubekv_server.mvcc.stored_key import PREFIX, stored

from .conftest import open_env

# Long keys (more than PREFIX bytes) are stored as prefix + digest: a group sharing
# their first PREFIX bytes sorts by digest in LMDB and must come out in key order.
_P = b"a" * PREFIX
LONG_KEYS = [_P + b"\x00", _P + b"b", _P + b"bb", _P + b"\xff" * 40, b"b" * 600]
KEYS = [b"\x00", b"a", b"ab", b"abc", b"b", b"c", b"\xff",
        _P, _P[:-1] + b"b", *LONG_KEYS]
keys = st.sampled_from(KEYS)
ends = st.one_of(st.none(), st.just(b""), keys)
values = st.binary(max_size=8)
leases = st.sampled_from([0, 0, 7, 2**62])


@dataclass
class Row:
    main: int
    sub: int
    key: bytes
    tomb: bool
    data: bytes

    @property
    def rb(self) -> bytes:
        return rev_to_bytes(self.main, self.sub, self.tomb)


def in_range(k: bytes, key: bytes, end: bytes | None) -> bool:
    if end is None:
        return k == key
    if end == b"":
        return k >= key
    return key <= k < end


class Model:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.current = 1
        self.compact = -1
        self.finished = -1

    def newest(self, key: bytes, at: int) -> Row | None:
        found = None
        for r in self.rows:
            if r.key == key and r.main <= at:
                found = r
        return found

    def visible(self, key: bytes, at: int) -> Row | None:
        r = self.newest(key, at)
        return None if r is None or r.tomb else r

    def range(self, key: bytes, end: bytes | None, at: int) -> list[bytes]:
        out = []
        for k in sorted({r.key for r in self.rows}):
            if in_range(k, key, end):
                r = self.visible(k, at)
                if r is not None:
                    out.append(r.data)
        return out

    def kept(self, key: bytes, at: int) -> Row | None:
        """The row of ``key`` a compaction at ``at`` keeps (etcd's keyIndex.compact)."""
        return self.visible(key, at)

    def physical_rows(self) -> list[Row]:
        if self.finished < 0:
            return list(self.rows)
        keep = {id(self.kept(k, self.finished)) for k in {r.key for r in self.rows}}
        return [r for r in self.rows if r.main > self.finished or id(r) in keep]

    def hash(self, rev: int) -> int:
        keep = {id(self.visible(k, rev)) for k in {r.key for r in self.rows}} - {id(None)}
        data = bytearray(b"key")
        for r in self.physical_rows():
            if r.main > rev:
                continue
            if r.main <= self.compact and keep and id(r) not in keep:
                continue
            data += r.rb + r.data
        return crc32c(bytes(data))


class MVCCMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mvcc-model-")
        self.env = open_env(self.dir)
        self.store = MVCCStore(self.env)
        self.model = Model()
        self.pending = False  # a scheduled compaction still has rows to remove
        self.log: list[tuple] = []  # ("txn", ops) | ("compact", rev): replayed by same_hash

    def teardown(self) -> None:
        self.env.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- writes -------------------------------------------------------------

    def _apply(self, w, ops) -> None:
        """Apply ops to WriteTxn ``w`` and the model, checking every result."""
        m = self.model
        rev = m.current + 1
        sub = 0
        events = []
        for op in ops:
            if op[0] == "put":
                _, key, value, lease = op
                prev = m.visible(key, rev)
                prev_kv = KeyValue.FromString(prev.data) if prev else None
                kv = KeyValue(
                    key=key,
                    create_revision=prev_kv.create_revision if prev_kv else rev,
                    mod_revision=rev,
                    version=prev_kv.version + 1 if prev_kv else 1,
                    value=value,
                    lease=lease,
                )
                got = w.put(key, value, lease)
                assert got == prev_kv
                m.rows.append(Row(rev, sub, key, False, kv.SerializeToString()))
                events.append(Event(type=Event.PUT, kv=kv, prev_kv=prev_kv))
                sub += 1
            elif op[0] == "delete":
                _, key, end = op
                expect = [KeyValue.FromString(d) for d in m.range(key, end, rev)]
                got = w.delete_range(key, end)
                assert got == expect
                for kv in expect:
                    m.rows.append(
                        Row(rev, sub, kv.key, True, KeyValue(key=kv.key).SerializeToString())
                    )
                    events.append(
                        Event(
                            type=Event.DELETE, kv=KeyValue(key=kv.key, mod_revision=rev), prev_kv=kv
                        )
                    )
                    sub += 1
            else:
                _, key, end, delta = op
                cur = rev if sub else m.current
                want = cur + delta if delta > -2 else 0
                if want > cur:
                    self._raises(FutureRevError, w.range, key, end, rev=want)
                    continue
                at = want if want > 0 else cur
                if at < m.compact:
                    self._raises(CompactedError, w.range, key, end, rev=want)
                    continue
                res = w.range(key, end, rev=want)
                assert res.rev == cur
                assert res.raw_kvs == m.range(key, end, at)
        assert w.changes == events
        new = w.end()
        if sub:
            m.current = rev
        assert new == m.current

    @rule(key=keys, value=values, lease=leases)
    def put(self, key, value, lease):
        self.txn([("put", key, value, lease)])

    @rule(key=keys, end=ends)
    def delete_range(self, key, end):
        self.txn([("delete", key, end)])

    @rule(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("put"), keys, values, leases),
                st.tuples(st.just("delete"), keys, ends),
                st.tuples(st.just("range"), keys, ends, st.integers(min_value=-2, max_value=1)),
            ),
            max_size=6,
        )
    )
    def txn(self, ops):
        with self.env.begin(write=True) as t:
            self._apply(self.store.write(t), ops)
        self.log.append(("txn", ops))

    # -- reads --------------------------------------------------------------

    @rule(
        key=keys,
        end=ends,
        delta=st.integers(min_value=-12, max_value=2),
        limit=st.integers(min_value=0, max_value=3),
        count_only=st.booleans(),
    )
    def range(self, key, end, delta, limit, count_only):
        m = self.model
        rev = max(m.current + delta, -1) if delta != -12 else 0
        with self.store.read() as r:
            assert (r.current_revision, r.compact_revision) == (m.current, m.compact)
            if rev > m.current:
                self._raises(FutureRevError, r.range, key, end, rev=rev)
                return
            at = m.current if rev <= 0 else rev
            if at < m.compact:
                self._raises(CompactedError, r.range, key, end, rev=rev)
                return
            res = r.range(key, end, rev=rev, limit=limit, count_only=count_only)
            expect = m.range(key, end, at)
            assert res.rev == m.current
            assert res.count == len(expect)
            if count_only:
                assert res.raw_kvs == []
            else:
                assert res.raw_kvs == (expect[:limit] if limit else expect)
                assert [kv.SerializeToString() for kv in res.kvs] == res.raw_kvs

    @staticmethod
    def _raises(exc, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except exc:
            return
        raise AssertionError(f"expected {exc.__name__}")

    # -- compaction ---------------------------------------------------------

    @rule(
        delta=st.integers(min_value=-3, max_value=1),
        budget=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    )
    def compact(self, delta, budget):
        m = self.model
        rev = m.current + delta
        with self.env.begin(write=True) as t:
            if rev <= m.compact:
                self._raises(CompactedError, self.store.compact, t, rev)
                return
            if rev > m.current:
                self._raises(FutureRevError, self.store.compact, t, rev)
                return
            self.store.compact(t, rev)
        m.compact = rev
        self.pending = True
        self.log.append(("compact", rev))
        if budget is None:
            while self._step(1000):
                pass
        else:
            self._step(budget)

    @precondition(lambda self: self.pending)
    @rule(budget=st.integers(min_value=1, max_value=5))
    def compact_step(self, budget):
        self._step(budget)

    def _step(self, budget: int) -> bool:
        with self.env.begin(write=True) as t:
            more = self.store.compact_step(t, budget)
            assert self.store.compaction_pending(t) == more
        if not more:
            self.pending = False
            self.model.finished = self.model.compact
        return more

    # -- persistence and hashes ---------------------------------------------

    @rule()
    def reopen(self):
        self.env.close()
        self.env = open_env(self.dir)
        self.store = MVCCStore(self.env)

    @rule(rev=st.integers(min_value=-1, max_value=4))
    def hash_kv(self, rev):
        m = self.model
        rev = 0 if rev < 0 else m.current - rev
        if 0 < rev <= m.compact:
            self._raises(CompactedError, self.store.hash_kv, rev)
            return
        h, compact, current = self.store.hash_kv(rev)
        assert (compact, current) == (m.compact, m.current)
        at = rev or m.current
        keep_nonempty = any(m.visible(k, at) for k in {r.key for r in m.rows})
        if not self.pending or keep_nonempty:
            assert h == m.hash(at)

    @precondition(lambda self: not self.pending)
    @rule()
    def same_history_same_hash(self):
        d = tempfile.mkdtemp(prefix="mvcc-replay-")
        env = open_env(d)
        try:
            other = MVCCStore(env)
            for kind, arg in self.log:
                with env.begin(write=True) as t:
                    if kind == "txn":
                        w = other.write(t)
                        for op in arg:
                            if op[0] == "put":
                                w.put(*op[1:])
                            elif op[0] == "delete":
                                w.delete_range(*op[1:])
                        w.end()
                    else:
                        other.compact(t, arg)
                        while other.compact_step(t, 3):
                            pass
            for rev in {0, self.model.current} if self.model.current > self.model.compact else {0}:
                assert other.hash_kv(rev) == self.store.hash_kv(rev)
        finally:
            env.close()
            shutil.rmtree(d, ignore_errors=True)

    # -- invariants ---------------------------------------------------------

    @invariant()
    def physical_state_matches(self):
        """live -> the rows of the current values; key index == history keys; history ==
        model rows."""
        m = self.model
        s = self.store._dbs
        with self.env.begin() as t:
            live = sorted((k, t.get(rb, db=s.key)) for k, rb in t.cursor(db=s.live))
            current = m.range(b"\x00", b"", m.current)
            assert live == sorted((stored(KeyValue.FromString(d).key), d) for d in current)
            # long_keys holds exactly the long keys the index still has entries for
            indexed = {k for k in t.cursor(db=s.key_index).iternext_nodup(values=False)}
            longs = dict(t.cursor(db=s.long_keys).iternext())
            assert set(longs) == {k for k in indexed if len(k) > PREFIX}
            assert all(stored(u) == k for k, u in longs.items())
            hist = list(t.cursor(db=s.key).iternext())
            idx = sorted((v, k) for k, v in t.cursor(db=s.key_index).iternext())
            assert [k for k, _ in hist] == [rb for rb, _ in idx]
            if not self.pending:
                assert hist == [(r.rb, r.data) for r in m.physical_rows()]


MVCCMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMVCCModel = MVCCMachine.TestCase


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_model_soak():
    """A longer run of the same model (``pytest -m soak tests/mvcc``)."""
    run_state_machine_as_test(
        MVCCMachine,
        settings=settings(
            max_examples=1000,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
