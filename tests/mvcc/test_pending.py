"""Reads through the pending view (writes applied but not committed) against a store
that commits every write: ranges, history, counts, revisions and HashKV must agree
whatever has been committed (mvcc/pending.py)."""

from __future__ import annotations

import random

import lmdb
import pytest

from kubekv_server.mvcc import MVCCStore
from kubekv_server.mvcc.errors import CompactedError, FutureRevError
from kubekv_server.mvcc.pending import EMPTY, Pending
from kubekv_server.mvcc.revision import rev_to_bytes
from kubekv_server.mvcc.stored_key import PREFIX


def _env(path) -> lmdb.Environment:
    return lmdb.open(str(path), map_size=1 << 28, max_dbs=16, sync=False)


class Batched:
    """An MVCC store whose writes stay in one open txn, as the applier keeps them."""

    def __init__(self, path) -> None:
        self.env = _env(path)
        self.store = MVCCStore(self.env)
        self.txn: lmdb.Transaction | None = None
        self.base: int | None = None

    def write(self, ops) -> None:
        if self.txn is None:
            self.txn = self.env.begin(write=True)
            self.base = self.store.current_revision(self.txn)
        w = self.store.write(self.txn)
        for op in ops:
            _do(w, op)
        w.end()
        self.store.pending = self.store.pending.extended(
            self.base, w.rows, self.store.current_revision(self.txn))

    def commit(self) -> None:
        if self.txn is not None:
            self.txn.commit()
            self.txn, self.base = None, None
            self.store.pending = EMPTY


class Committed:
    """The reference: every write committed at once."""

    def __init__(self, path) -> None:
        self.env = _env(path)
        self.store = MVCCStore(self.env)

    def write(self, ops) -> None:
        with self.env.begin(write=True) as txn:
            w = self.store.write(txn)
            for op in ops:
                _do(w, op)
            w.end()


def _do(w, op) -> None:
    if op[0] == "put":
        w.put(op[1], op[2])
    else:
        w.delete_range(op[1], op[2])


def _keys(rng: random.Random) -> list[bytes]:
    short = [b"k%02d" % i for i in range(24)]
    # long keys sharing their stored prefix: their order comes from the long_keys table
    long = [b"k1" + b"x" * (PREFIX + 10) + bytes([c]) for c in b"cab"]
    return short + long


def _read(store: MVCCStore, rng: random.Random, keys: list[bytes]):
    cur, compacted = store.revisions()
    out = [("revisions", cur, compacted), ("count", store.key_count())]
    with store.read() as r:
        assert r.current_revision == cur
        for _ in range(12):
            key = rng.choice(keys)
            end = rng.choice([None, b"", rng.choice(keys), key + b"\xff"])
            rev = rng.choice([0, cur, max(1, cur - rng.randint(0, 6)), rng.randint(1, cur)])
            limit = rng.choice([0, 0, 1, 3])
            count_only = rng.random() < 0.2
            try:
                res = r.range(key, end, rev=rev, limit=limit, count_only=count_only)
                out.append(("range", key, end, rev, limit, count_only, res.raw_kvs, res.count,
                            res.rev))
            except (CompactedError, FutureRevError) as exc:
                out.append(("range", key, end, rev, type(exc).__name__))
            out.append(("live", key, r.live_kv(key)))  # a Txn's one-key compare
        lo = rng.randint(max(compacted + 1, 1), max(compacted + 1, cur))  # compacted == cur: none
        out.append(("history", lo, [(e.type, e.kv.SerializeToString())
                                    for e in r.history(lo, cur)]))
    for rev in (0, cur, max(compacted + 1, cur - 3)):
        try:
            out.append(("hash", rev, store.hash_kv(rev)))
        except (CompactedError, FutureRevError) as exc:
            out.append(("hash", rev, type(exc).__name__))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_reads_through_the_pending_view_match_committed_reads(tmp_path, seed):
    rng = random.Random(seed)
    keys = _keys(rng)
    batched, ref = Batched(tmp_path / "b"), Committed(tmp_path / "r")
    for step in range(160):
        ops = []
        for _ in range(rng.randint(1, 3)):
            k = rng.choice(keys)
            if rng.random() < 0.7:
                ops.append(("put", k, b"v%d" % rng.randint(0, 999)))
            else:
                ops.append(("delete", k, rng.choice([None, None, rng.choice(keys)])))
        batched.write(ops)
        ref.write(ops)
        if rng.random() < 0.15:
            batched.commit()
        if step % 40 == 39:  # a compaction is only ever applied with a commit
            batched.commit()
            cur = ref.store.revisions()[0]
            rev = rng.randint(max(1, cur - 30), cur)
            for s in (batched, ref):
                with s.env.begin(write=True) as txn:
                    s.store.compact(txn, rev)
                    while s.store.compact_step(txn):
                        pass
        read_seed = rng.random()
        if seed % 2 and rng.random() < 0.6:
            continue  # unread Pendings: a later one builds its view past them
        assert _read(batched.store, random.Random(read_seed), keys) == \
            _read(ref.store, random.Random(read_seed), keys), f"step {step}"
    batched.commit()
    batched.env.close()
    ref.env.close()


def _tables(p: Pending) -> tuple:
    return p.live, p.row_of, p.index, p.live_delta, p.rows, bool(p)


def test_published_pendings_keep_what_they_saw_whatever_is_read_first():
    """The Pendings of a window share one list of changes: each still sees its own
    first n, whichever of them builds its view first, and one extended twice forks."""
    rng = random.Random(7)
    keys = [b"a", b"b", b"c"]
    batches, live = [], {}
    for rev in range(2, 12):
        batch = []
        for sub in range(rng.randint(0, 2)):
            k = rng.choice(keys)
            value = None if rng.random() < 0.3 else b"v%d" % rev
            rb = rev_to_bytes(rev, sub) + (b"t" if value is None else b"")
            batch.append((k, k, rb, b"row%d" % rev, value, live.get(k) is not None))
            live[k] = value
        batches.append(batch)

    def publish() -> list[Pending]:
        out, p = [], EMPTY
        for top, batch in enumerate(batches, start=2):
            p = p.extended(1, batch, top)
            out.append(p)
        return out

    one_by_one = [_tables(p) for p in publish()]  # each read as soon as published
    for order in (list(range(len(batches)))[::-1], rng.sample(range(len(batches)),
                                                             len(batches))):
        published = publish()
        assert [_tables(published[i]) for i in order] == [one_by_one[i] for i in order]
    published = publish()
    fork = published[3].extended(1, batches[5], 99)
    assert _tables(published[4]) == one_by_one[4]
    assert fork.rows == published[3].rows + [(c[2], c[3]) for c in batches[5]]


def test_a_view_of_an_older_commit_is_not_laid_over_a_newer_snapshot(tmp_path):
    """A reader that took the pending view just before a commit reads the snapshot
    alone: the view's writes are in it, and laying them again would count them twice."""
    b = Batched(tmp_path / "b")
    b.write([("put", b"a", b"1")])
    b.write([("put", b"b", b"2")])
    view = b.store.pending
    b.commit()
    from kubekv_server.mvcc.store import ReadTxn

    with ReadTxn(b.env, b.store._dbs, None, view) as r:
        assert r.current_revision == 3
        assert [e.kv.key for e in r.history(1, 3)] == [b"a", b"b"]
        assert r.range(b"a", b"").count == 2
    b.env.close()
