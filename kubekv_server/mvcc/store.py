"""etcd's MVCC key-value store on LMDB.

Sub-databases of the member's LMDB environment (see ``docs/mvcc.md``):

- ``key``: history, etcd's ``key`` bucket byte for byte: revision bytes
  (``revision.py``) -> serialized ``mvccpb.KeyValue``; tombstones have an 18-byte
  key and a KeyValue with only ``key`` set.
- ``key_index``: dupsort ``user key -> revision bytes`` (``key_index.py``).
- ``live``: ``user key -> revision bytes`` of its current ``key`` row; reads at the
  current revision find their keys here and their values with one ``get`` each
  (``live_layout.py``: why not the KeyValue itself, and the upgrade from that).
- ``long_keys``: stored key -> user key, for keys longer than ``stored_key.PREFIX``
  (``key_index`` and ``live`` are keyed by ``stored_key.stored(user key)``).
- ``meta``: current revision, compaction state (``meta.py``).

Semantics follow etcd 3.4's ``mvcc/kvstore_txn.go``: one ``WriteTxn`` is at most one
revision, every change in it has the same main revision and increasing sub
revisions, and a write txn reads its own writes.
"""

from __future__ import annotations

import itertools
import logging

import lmdb

from etcdproto.mvccpb.kv_pb2 import Event, KeyValue
from kubekv_server.mvcc import compaction, live_layout, meta
from kubekv_server.mvcc.errors import CompactedError, FutureRevError, InvalidKeyError, MVCCError
from kubekv_server.mvcc.hash import hash_history
from kubekv_server.mvcc.key_index import visible_at
from kubekv_server.mvcc.pending import EMPTY, Pending
from kubekv_server.mvcc.revision import MARK_TOMBSTONE, is_tombstone, main_of, rev_to_bytes
from kubekv_server.mvcc.stored_key import PREFIX, scan, stored

DB_KEY = b"key"
DB_KEY_INDEX = b"key_index"
DB_LIVE = b"live"
DB_META = b"meta"
DB_LONG_KEYS = b"long_keys"

log = logging.getLogger(__name__)

_PUT = Event.PUT
_DELETE = Event.DELETE
_parse_kv = KeyValue.FromString


class RangeResult:
    """Result of a range: etcd's ``RangeResult``.

    ``raw_kvs`` holds the serialized KeyValues as stored (a gRPC layer can splice
    them into a response without parsing); ``kvs`` parses them on first access.
    ``rev`` is the store's current revision, not the one read at (as etcd).
    """

    __slots__ = ("raw_kvs", "count", "rev", "_kvs")

    def __init__(self, raw_kvs: list[bytes], count: int, rev: int) -> None:
        self.raw_kvs = raw_kvs
        self.count = count
        self.rev = rev
        self._kvs: list[KeyValue] | None = None

    @property
    def kvs(self) -> list[KeyValue]:
        if self._kvs is None:
            self._kvs = [_parse_kv(b) for b in self.raw_kvs]
        return self._kvs

    def __repr__(self) -> str:
        return f"RangeResult(count={self.count}, rev={self.rev}, kvs={len(self.raw_kvs)})"


class _Dbs:
    """Handles of the store's sub-databases."""

    __slots__ = ("key", "key_index", "live", "meta", "long_keys")

    def __init__(self, env: lmdb.Environment) -> None:
        if env.flags()["readonly"]:
            # A handle opened in an explicit read txn dies with it; py-lmdb's own
            # internal txn makes it last (the store must already exist).
            self.key = env.open_db(DB_KEY, create=False)
            self.key_index = env.open_db(DB_KEY_INDEX, create=False, dupsort=True)
            self.live = env.open_db(DB_LIVE, create=False)
            self.meta = env.open_db(DB_META, create=False)
            try:
                self.long_keys = env.open_db(DB_LONG_KEYS, create=False)
            except lmdb.NotFoundError:  # a store written before long keys were kept
                self.long_keys = None
        else:
            with env.begin(write=True) as txn:
                self.key = env.open_db(DB_KEY, txn=txn)
                self.key_index = env.open_db(DB_KEY_INDEX, txn=txn, dupsort=True)
                self.live = env.open_db(DB_LIVE, txn=txn)
                self.meta = env.open_db(DB_META, txn=txn)
                self.long_keys = env.open_db(DB_LONG_KEYS, txn=txn)


class OpCounts:
    """etcd's mvcc operation counters (etcd_mvcc_{range,put,delete,txn}_total): calls per
    txn, added when the txn ends; a txn of more than one call also counts as a txn."""

    __slots__ = ("range", "put", "delete", "txn")

    def __init__(self) -> None:
        self.range = self.put = self.delete = self.txn = 0

    def add(self, ranges: int, puts: int, deletes: int) -> None:
        self.range += ranges
        self.put += puts
        self.delete += deletes
        if ranges + puts + deletes > 1:
            self.txn += 1


class _Reader:
    """The read half shared by ``ReadTxn`` and ``WriteTxn``."""

    _txn: lmdb.Transaction
    _dbs: _Dbs
    current_revision: int
    compact_revision: int
    _ranges: int = 0
    # writes applied but not committed, laid over the snapshot (None: nothing to lay)
    _p: Pending | None = None

    def _range_rev(self) -> int:
        """The revision a range with ``rev <= 0`` reads at (the live revision)."""
        return self.current_revision

    def range(
        self,
        key: bytes,
        end: bytes | None,
        *,
        rev: int = 0,
        limit: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        """etcd's ``rangeKeys``: keys in [key, end) (``end=b""``: all >= key) at ``rev``."""
        self._ranges += 1
        cur_rev = self._range_rev()
        if rev > cur_rev:
            raise FutureRevError()
        if rev <= 0:
            rev = cur_rev
        if rev < self.compact_revision:
            raise CompactedError()
        if rev == cur_rev:
            raw, count = self._range_live(key, end, limit, count_only)
        else:
            raw, count = self._range_history(key, end, rev, limit, count_only)
        return RangeResult(raw, count, cur_rev)

    def live_kv(self, key: bytes) -> bytes | None:
        """The serialized live KeyValue of one key, None if absent: what ``range(key,
        None)`` reads, without its RangeResult (a Txn's compare on one key)."""
        self._ranges += 1
        raw = self._range_live(key, None, 0, False)[0]
        return raw[0] if raw else None

    def _live_row(self, sk: bytes) -> bytes | None:
        """The current row (serialized KeyValue) of stored key ``sk`` in the snapshot or
        txn, None if it is not live: ``live`` holds its revision, ``key`` the row."""
        rb = self._txn.get(sk, db=self._dbs.live)
        return None if rb is None else self._txn.get(rb, db=self._dbs.key)

    def _user_key(self, stored_key: bytes) -> bytes:
        """The user key of a long stored key."""
        return self._txn.get(stored_key, db=self._dbs.long_keys)

    def _range_live(
        self, key: bytes, end: bytes | None, limit: int, count_only: bool
    ) -> tuple[list[bytes], int]:
        if end is None:
            if not key:
                return [], 0
            sk = key if len(key) <= PREFIX else stored(key)
            p = self._p
            e = None if p is None else p.live.get(sk)
            v = self._live_row(sk) if e is None else e[1]
            if v is None:
                return [], 0
            return ([] if count_only else [v]), 1
        if end and end <= key:
            return [], 0
        if self._p is not None:
            return self._range_live_pending(key, end, limit, count_only)
        return self._range_live_snapshot(key, end, limit, count_only)

    def _range_live_snapshot(
        self, key: bytes, end: bytes, limit: int, count_only: bool
    ) -> tuple[list[bytes], int]:
        """``_range_live`` of a key range in the LMDB snapshot alone."""
        txn, dbs = self._txn, self._dbs
        if len(key) > PREFIX or len(end) > PREFIX:
            return self._range_live_ordered(key, end, limit, count_only)
        # Both bounds are exact on stored keys: only a long key's position in the output
        # needs the ordered scan, counting does not.
        cur = txn.cursor(db=dbs.live)
        if not cur.set_range(key):
            return [], 0
        raw: list[bytes] = []
        if not count_only:
            want = limit if limit > 0 else -1
            row = txn.cursor(db=dbs.key).get  # one cursor: half a txn.get's cost per row
            for k, v in cur.iternext():
                if end and k >= end:
                    return raw, len(raw)
                if len(k) > PREFIX:
                    return self._range_live_ordered(key, end, limit, count_only)
                raw.append(row(v))
                if len(raw) == want:
                    break
            else:
                return raw, len(raw)
            if not cur.next():
                return raw, len(raw)
        elif not end and cur.key() == _first_key(txn, dbs.live):
            return raw, txn.stat(dbs.live)["entries"]
        count = len(raw)
        if end:
            for k in cur.iternext(keys=True, values=False):
                if k >= end:
                    break
                count += 1
        else:
            for _ in cur.iternext(keys=True, values=False):
                count += 1
        return raw, count

    def _range_live_ordered(
        self, key: bytes, end: bytes, limit: int, count_only: bool
    ) -> tuple[list[bytes], int]:
        """``_range_live`` for any bounds and any keys, in user-key order."""
        cur = self._txn.cursor(db=self._dbs.live)
        row = self._txn.cursor(db=self._dbs.key).get
        raw: list[bytes] = []
        count = 0
        want = 0 if count_only else (limit if limit > 0 else -1)
        for _u, _s, v in scan(cur, key, end, self._user_key):
            count += 1
            if len(raw) != want:
                raw.append(row(v))
        return raw, count

    def _range_live_pending(
        self, key: bytes, end: bytes, limit: int, count_only: bool
    ) -> tuple[list[bytes], int]:
        """``_range_live`` with uncommitted writes laid over the snapshot: the snapshot's
        keys in range, each replaced by its pending value (or dropped if deleted), merged
        in user-key order with the pending keys the snapshot lacks, read only as far as
        the limit needs. The count is the snapshot's, plus the pending keys that became
        live, minus those that stopped being live."""
        pend = self._p.live_in_range(key, end)
        count = self._range_live_snapshot(key, end, 0, True)[1]
        for _u, v, was in pend:
            count += (v is not None) - was
        want = 0 if count_only else (limit if limit > 0 else -1)
        raw: list[bytes] = []
        if want == 0:
            return raw, count
        changed = {u for u, _, _ in pend}
        ins = iter([(u, v) for u, v, _ in pend if v is not None])
        nxt = next(ins, None)
        row = self._txn.cursor(db=self._dbs.key).get
        for u, _s, rb in scan(self._txn.cursor(db=self._dbs.live), key, end, self._user_key):
            while nxt is not None and nxt[0] < u and len(raw) != want:
                raw.append(nxt[1])
                nxt = next(ins, None)
            if len(raw) == want:
                return raw, count
            if u not in changed:
                raw.append(row(rb))
                if len(raw) == want:
                    return raw, count
        while nxt is not None and len(raw) != want:
            raw.append(nxt[1])
            nxt = next(ins, None)
        return raw, count

    def _visible(self, seeker: lmdb.Cursor, sk: bytes, rev: int) -> bytes | None:
        """The history row of stored key ``sk`` visible at ``rev`` (pending ones first)."""
        p = self._p
        if p is not None:
            found, rb = p.newest_at(sk, rev)
            if found:
                return rb
        return visible_at(seeker, sk, rev)

    def _row(self, rb: bytes) -> bytes:
        p = self._p
        if p is not None:
            v = p.row_of.get(rb)
            if v is not None:
                return v
        return self._txn.get(rb, db=self._dbs.key)

    def _range_history(
        self, key: bytes, end: bytes | None, rev: int, limit: int, count_only: bool
    ) -> tuple[list[bytes], int]:
        txn, dbs = self._txn, self._dbs
        seeker = txn.cursor(db=dbs.key_index)
        if end is None:
            if not key:
                return [], 0
            rb = self._visible(seeker, key if len(key) <= PREFIX else stored(key), rev)
            if rb is None:
                return [], 0
            return ([] if count_only else [self._row(rb)]), 1
        if end and end <= key:
            return [], 0
        if self._p is not None and rev > self._p.base:
            return self._range_history_pending(key, end, rev, limit, count_only)
        keys = txn.cursor(db=dbs.key_index)
        raw: list[bytes] = []
        count = 0
        want = 0 if count_only else (limit if limit > 0 else -1)
        for _u, k, _v in scan(keys, key, end, self._user_key, nodup=True):
            rb = visible_at(seeker, k, rev)
            if rb is None:
                continue
            count += 1
            if len(raw) != want:
                raw.append(txn.get(rb, db=dbs.key))
        return raw, count

    def _range_history_pending(
        self, key: bytes, end: bytes, rev: int, limit: int, count_only: bool
    ) -> tuple[list[bytes], int]:
        """``_range_history`` at a revision some uncommitted writes are at or below:
        the snapshot's keys and the pending ones, merged in user-key order."""
        seeker = self._txn.cursor(db=self._dbs.key_index)
        pend = self._p.index_in_range(key, end)
        known = {u for u, _ in pend}
        keys = [(u, k) for u, k, _v in scan(self._txn.cursor(db=self._dbs.key_index), key,
                                              end, self._user_key, nodup=True)
                if u not in known]
        keys.extend(pend)
        keys.sort()
        raw: list[bytes] = []
        count = 0
        want = 0 if count_only else (limit if limit > 0 else -1)
        for _u, k in keys:
            rb = self._visible(seeker, k, rev)
            if rb is None:
                continue
            count += 1
            if len(raw) != want:
                raw.append(self._row(rb))
        return raw, count

    def history(self, from_rev: int, to_rev: int):
        """Every change with main revision in [from_rev, to_rev], in revision order, as Events.

        etcd's ``kvsToEvents`` over the ``key`` bucket: a tombstone row becomes a DELETE
        whose kv holds only ``key`` and ``mod_revision``. ``prev_kv`` is not set.
        The caller checks ``from_rev`` against the compact revision first.
        """
        if to_rev < from_rev:
            return
        txn, dbs = self._txn, self._dbs
        cur = txn.cursor(db=dbs.key)
        stop = rev_to_bytes(to_rev + 1)
        rows = cur.iternext() if cur.set_range(rev_to_bytes(max(from_rev, 0))) else ()
        if self._p is not None:  # the pending rows all come after the snapshot's
            rows = itertools.chain(rows, self._p.rows_between(from_rev, to_rev))
        for rb, raw in rows:
            if rb >= stop:
                return
            kv = _parse_kv(raw)
            if is_tombstone(rb):
                yield Event(type=_DELETE, kv=KeyValue(key=kv.key, mod_revision=main_of(rb)))
            else:
                yield Event(type=_PUT, kv=kv)


def _field_size(n: int) -> int:
    """Bytes of a length-delimited field of n bytes with a one-byte tag in an Event."""
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


def _first_key(txn: lmdb.Transaction, db: lmdb._Database) -> bytes:
    cur = txn.cursor(db=db)
    return cur.key() if cur.first() else b""


class ReadTxn(_Reader):
    """A consistent read view: a context manager around an LMDB read txn.

    ``current_revision`` and ``compact_revision`` are read from ``meta`` in the same
    LMDB transaction, so the view is consistent in any thread or process.
    """

    def __init__(self, env: lmdb.Environment, dbs: _Dbs, counts: OpCounts | None = None,
                 pending: Pending = EMPTY) -> None:
        # `pending` was taken before the snapshot begins (see pending.py)
        self._env = env
        self._dbs = dbs
        self._counts = counts
        self._txn = env.begin(write=False)
        self.current_revision, self.compact_revision = meta.revisions(self._txn, dbs.meta)
        p = pending.for_snapshot(self.current_revision)
        if p:
            self._p = p
            self.current_revision = p.top

    def close(self) -> None:
        self._txn.abort()
        if self._counts is not None and self._ranges:
            self._counts.add(self._ranges, 0, 0)
            self._ranges = 0

    def __enter__(self) -> ReadTxn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WriteTxn(_Reader):
    """etcd's ``storeTxnWrite`` over a caller-owned LMDB write txn.

    All changes get main revision ``current_revision + 1`` and sub revisions
    0, 1, ...; ``end()`` stores the new current revision. The caller commits.
    """

    def __init__(self, txn: lmdb.Transaction, dbs: _Dbs, counts: OpCounts | None = None,
                 revisions: tuple[int, int] | None = None) -> None:
        self._txn = txn
        # what the changes are written into (None: nowhere yet, overlay.py)
        self._writes: lmdb.Transaction | None = txn
        self._dbs = dbs
        self._counts = counts
        self._puts = self._deletes = 0
        # (current, compact revision) as `txn` holds them, if the caller knows them: then
        # the caller also stores the new current revision (MVCCStore.write)
        self._own_meta = revisions is None
        self.current_revision, self.compact_revision = \
            meta.revisions(txn, dbs.meta) if revisions is None else revisions
        # one Event per change, in order: each change's kv and prev kv are built inside
        # its Event, so the watchers get them without a copy
        self._changes: list[Event] = []
        # the same changes as rows written (pending.Change), for readers until they commit
        self.rows: list[tuple] = []
        # the encoded size of those Events, what sum(ev.ByteSize()) gives without encoding
        # them again (the watch hub's log budget)
        self.changes_bytes = 0
        self._ended = False
        # whether it wrote anything yet (set before its first LMDB write): a request that
        # fails before then needs nothing undone
        self.dirty = False
        # whether a change attached a key to a lease or detached one (its lease differs
        # from the one it had): only then have the lease records anything to follow
        self.leases_moved = False

    # (stored key, its live value or None) as this txn last read or wrote it: a put
    # after a read of its key (a Txn's compare, a put's prev_kv) reads it no second time
    _seen: tuple[bytes, bytes | None] | None = None

    def _range_rev(self) -> int:
        return self.current_revision + 1 if self._changes else self.current_revision

    def _range_live(
        self, key: bytes, end: bytes | None, limit: int, count_only: bool
    ) -> tuple[list[bytes], int]:
        if end is None and key:  # one key, remembered (a write txn has no pending view)
            sk = key if len(key) <= PREFIX else stored(key)
            v = self._live_row(sk)
            self._seen = sk, v
            if v is None:
                return [], 0
            return ([] if count_only else [v]), 1
        return super()._range_live(key, end, limit, count_only)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> KeyValue | None:
        """Put ``key``; returns the previous KeyValue (None if absent)."""
        dbs, txn = self._dbs, self._writes
        self._puts += 1
        if not key:
            raise InvalidKeyError("empty key")
        rev = self.current_revision + 1
        self.dirty = True
        if len(key) <= PREFIX:
            sk = key
        else:
            sk = stored(key)
            if txn is not None:
                txn.put(sk, key, db=dbs.long_keys)
        seen = self._seen
        prev_raw = seen[1] if seen is not None and seen[0] == sk else self._live_row(sk)
        ev = Event()  # type PUT, the default
        kv = ev.kv
        kv.key = key
        kv.mod_revision = rev
        kv.value = value
        kv.lease = lease
        if prev_raw is None:
            prev = None
            kv.create_revision = rev
            kv.version = 1
            if lease:
                self.leases_moved = True
        else:
            prev = ev.prev_kv
            prev.ParseFromString(prev_raw)
            kv.create_revision = prev.create_revision
            kv.version = prev.version + 1
            if prev.lease != lease:
                self.leases_moved = True
        data = kv.SerializeToString()
        rb = rev_to_bytes(rev, len(self._changes))
        if txn is not None:  # (an OverlayWriteTxn writes its rows later: write_rows)
            txn.put(rb, data, db=dbs.key, append=True)
            txn.put(sk, rb, db=dbs.key_index, dupdata=True)
            txn.put(sk, rb, db=dbs.live)
        else:
            self._wrote(sk, data)
        self._seen = sk, data
        self._changes.append(ev)
        self.rows.append((sk, key, rb, data, data, prev_raw is not None))
        self.changes_bytes += _field_size(len(data)) + (
            0 if prev_raw is None else _field_size(len(prev_raw)))
        return prev

    def delete_range(self, key: bytes, end: bytes | None) -> list[KeyValue]:
        """Delete the live keys in [key, end) (see ``range``); returns their previous kvs."""
        dbs, txn = self._dbs, self._writes
        self._deletes += 1
        if end is None:
            if not key:
                return []
            sk = key if len(key) <= PREFIX else stored(key)
            v = self._live_row(sk)
            items = [] if v is None else [(key, sk, v)]
        elif end and end <= key:
            return []
        else:
            items = self._live_items(key, end)
        rev = self.current_revision + 1
        deleted = []
        self.dirty = True
        self._seen = None
        for k, sk, v in items:
            rb = rev_to_bytes(rev, len(self._changes)) + MARK_TOMBSTONE
            tomb = KeyValue(key=k).SerializeToString()
            self.rows.append((sk, k, rb, tomb, None, True))
            if txn is not None:
                txn.put(rb, tomb, db=dbs.key, append=True)
                txn.put(sk, rb, db=dbs.key_index, dupdata=True)
                txn.delete(sk, db=dbs.live)
            else:
                self._wrote(sk, None)
            ev = Event(type=_DELETE)
            ev.kv.key = k
            ev.kv.mod_revision = rev
            prev = ev.prev_kv
            prev.ParseFromString(v)
            if prev.lease:
                self.leases_moved = True
            deleted.append(prev)
            self._changes.append(ev)
            self.changes_bytes += 2 + _field_size(ev.kv.ByteSize()) + _field_size(len(v))
        return deleted

    def _live_items(self, key: bytes, end: bytes) -> list[tuple[bytes, bytes, bytes]]:
        """(user key, stored key, current row) of the live keys in [key, end)."""
        txn, dbs = self._txn, self._dbs
        row = txn.cursor(db=dbs.key).get
        return [(k, sk, row(rb))
                for k, sk, rb in scan(txn.cursor(db=dbs.live), key, end, self._user_key)]

    def _wrote(self, sk: bytes, row: bytes | None) -> None:
        """A change made with nothing written (an OverlayWriteTxn's): `row` is the key's
        current row now, None once deleted."""
        raise NotImplementedError

    @property
    def changes(self) -> list[Event]:
        """The mvccpb Events of this txn, in order (``prev_kv`` set when there was one)."""
        return self._changes

    @property
    def changed(self) -> bool:
        return bool(self._changes)

    def end(self) -> int:
        """Finish: store the new current revision if anything changed; return it."""
        if not self._ended:
            self._ended = True
            if self._counts is not None:
                self._counts.add(self._ranges, self._puts, self._deletes)
            if self._changes and self._own_meta:
                meta.put_current_revision(self._txn, self._dbs.meta, self.current_revision + 1)
        return self._range_rev()

    def __enter__(self) -> WriteTxn:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.end()


class MVCCStore:
    """etcd's MVCC store on one LMDB environment (opened and owned by the caller).

    The environment needs ``max_dbs`` >= 5 for the store's own databases. Opening is
    O(1): all state lives in LMDB, nothing is rebuilt in memory.
    """

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self._dbs = _Dbs(env)
        if env.flags()["readonly"]:
            with env.begin() as txn:
                if not live_layout.is_current(txn, self._dbs.meta) and \
                        txn.stat(self._dbs.live)["entries"]:
                    raise MVCCError("the state db has an older layout: start a member "
                                    "on it once to upgrade it")
        else:
            with env.begin(write=True) as txn:
                self.upgrade_layout(txn)
        self.counts = OpCounts()
        # writes the applier applied but did not commit yet (published per apply batch,
        # EMPTY after each commit): readers lay them over their snapshot (pending.py)
        self.pending: Pending = EMPTY

    def upgrade_layout(self, txn: lmdb.Transaction) -> None:
        """Bring the tables `txn` sees to this layout (a store opened for writing, a
        snapshot just installed); CorruptStoreError if they contradict each other."""
        d = self._dbs
        n = live_layout.upgrade(txn, d.live, d.key_index, d.key, d.meta)
        if n:
            log.info("event=mvcc_layout_upgraded live_rows=%d", n)

    def rebind(self, env: lmdb.Environment) -> None:
        """Use another environment holding the same data (after a defragmentation)."""
        dbs = _Dbs(env)
        self.env, self._dbs = env, dbs

    @property
    def meta_db(self) -> lmdb._Database:
        """The ``meta`` database (etcd's meta bucket; the applier may keep its index there)."""
        return self._dbs.meta

    def read(self) -> ReadTxn:
        """A read view at the current revision; use as a context manager."""
        return ReadTxn(self.env, self._dbs, self.counts, self.pending)

    def write(self, txn: lmdb.Transaction,
              revisions: tuple[int, int] | None = None) -> WriteTxn:
        """Wrap a caller-owned LMDB write txn as one etcd write txn (at most one revision).

        A caller running many in one LMDB txn may pass the (current, compact revision)
        `txn` holds (after the previous ones), saving their reads from ``meta``; it then
        stores the current revision itself (``store_revision``) before anything else
        reads it from `txn`."""
        return WriteTxn(txn, self._dbs, self.counts, revisions)

    def write_rows(self, txn: lmdb.Transaction, rows: list[tuple]) -> None:
        """Write changes an OverlayWriteTxn made (pending.Change rows, in revision order,
        after everything `txn` holds) as WriteTxn.put and delete_range write theirs."""
        dbs = self._dbs
        for sk, key, rb, data, value, _existed in rows:
            if value is not None and len(key) > PREFIX:
                txn.put(sk, key, db=dbs.long_keys)
            txn.put(rb, data, db=dbs.key, append=True)
            txn.put(sk, rb, db=dbs.key_index, dupdata=True)
            if value is None:
                txn.delete(sk, db=dbs.live)
            else:
                txn.put(sk, rb, db=dbs.live)

    def store_revision(self, txn: lmdb.Transaction, rev: int) -> None:
        """Record `rev` as the current revision in `txn` (see ``write``)."""
        meta.put_current_revision(txn, self._dbs.meta, rev)

    def key_count(self) -> int:
        """Keys that exist now (etcd's keys_total), from the live table's size."""
        p = self.pending
        with self.env.begin() as txn:
            n = txn.stat(self._dbs.live)["entries"]
            p = p.for_snapshot(meta.revisions(txn, self._dbs.meta)[0])
            if p:
                n += p.live_delta
        return n

    def current_revision(self, txn: lmdb.Transaction) -> int:
        """The current revision as `txn` sees it."""
        return meta.revisions(txn, self._dbs.meta)[0]

    def revisions_in(self, txn: lmdb.Transaction) -> tuple[int, int]:
        """(current revision, compact revision) as `txn` sees them."""
        return meta.revisions(txn, self._dbs.meta)

    def revisions(self) -> tuple[int, int]:
        """(current revision, compact revision) in a fresh read txn."""
        p = self.pending
        with self.env.begin() as txn:
            current, compacted = meta.revisions(txn, self._dbs.meta)
        p = p.for_snapshot(current)
        if p:
            current = p.top
        return current, compacted

    def compact(self, txn: lmdb.Transaction, rev: int) -> None:
        """etcd's ``Compact``: record ``rev`` as the compact revision and schedule removal.

        Raises CompactedError if ``rev`` <= the compact revision, FutureRevError if
        ``rev`` > the current revision. Reads below ``rev`` fail as soon as ``txn``
        commits; ``compact_step`` does the physical work.
        """
        current, compacted = meta.revisions(txn, self._dbs.meta)
        if rev <= compacted:
            raise CompactedError()
        if rev > current:
            raise FutureRevError()
        meta.schedule_compaction(txn, self._dbs.meta, rev)

    def compact_step(self, txn: lmdb.Transaction, budget: int = 1000) -> bool:
        """Remove obsolete rows of the scheduled compaction, examining at most ``budget``.

        Returns True while work remains.
        """
        d = self._dbs
        return compaction.compact_step(txn, d.key, d.key_index, d.meta, budget, d.long_keys)

    def compaction_pending(self, txn: lmdb.Transaction) -> bool:
        """Whether a scheduled compaction still has rows to remove."""
        return meta.compact_cursor(txn, self._dbs.meta) is not None

    def hash_kv(self, rev: int = 0) -> tuple[int, int, int]:
        """etcd's ``HashByRev``: (hash, compact revision, current revision).

        ``rev`` 0 means the current revision. Raises CompactedError if
        0 < ``rev`` <= compact revision (etcd's boundary for hashes), FutureRevError
        if ``rev`` > current revision.
        """
        d = self._dbs
        p = self.pending
        with self.env.begin() as txn:
            current, compacted = meta.revisions(txn, d.meta)
            laid = p.for_snapshot(current) or None
            if laid is not None:
                current = laid.top
            if 0 < rev <= compacted:
                raise CompactedError()
            if rev > 0 and rev > current:
                raise FutureRevError()
            if rev == 0:
                rev = current
            h = hash_history(txn, d.key, d.key_index, rev, compacted, laid)
        return h, compacted, current

    def db_size(self) -> int:
        """Bytes of the environment's data file in use up to its high-water mark."""
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def db_size_in_use(self) -> int:
        """Bytes of the pages held by the store's databases and the main database."""
        with self.env.begin() as txn:
            stats = [self.env.stat()] + [
                txn.stat(db)
                for db in (self._dbs.key, self._dbs.key_index, self._dbs.live, self._dbs.meta)
            ]
        return sum(
            (s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]) * s["psize"] for s in stats
        )
