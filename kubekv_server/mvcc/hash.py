"""etcd 3.4's ``HashByRev``: a CRC-32C over the history, for HashKV.

The hash covers the bucket name ``key`` and then, in revision order, the key and
value bytes of every history row with main revision <= ``rev``; of the rows at or
below the compact revision only those that a compaction at ``rev`` would keep
(etcd's ``kvindex.Keep(rev)``: each key's newest row <= rev unless it is a
tombstone), unless that keep set is empty, in which case all of them (etcd's
``len(keep) > 0`` test). Members with the same history and compact revision get
the same hash whatever their physical compaction progress (when keep is non-empty).
"""

from __future__ import annotations

import itertools

import lmdb
from crc32c import crc32c as _crc32c

from kubekv_server.mvcc.compaction import key_of
from kubekv_server.mvcc.key_index import newest_at, visible_at
from kubekv_server.mvcc.pending import Pending
from kubekv_server.mvcc.revision import is_tombstone, main_of, rev_to_bytes
from kubekv_server.mvcc.stored_key import stored


class Crc32c:
    """Incremental CRC-32C (Go's ``crc32.New(crc32.MakeTable(crc32.Castagnoli))``),
    computed by the ``crc32c`` package (SSE 4.2 where the CPU has it)."""

    __slots__ = ("_crc",)

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes) -> None:
        self._crc = _crc32c(data, self._crc)

    def value(self) -> int:
        return self._crc


def crc32c(data: bytes) -> int:
    return _crc32c(data)


def hash_history(
    txn: lmdb.Transaction,
    history: lmdb._Database,
    key_index: lmdb._Database,
    rev: int,
    compact_rev: int,
    pending: Pending | None = None,
) -> int:
    """The hash of the history up to ``rev`` (already validated) as etcd computes it.

    ``pending``: writes applied but not committed (their rows are all newer than the
    snapshot's and than the compact revision): hashed after the snapshot's rows, and
    counted in which row of a key is the newest at ``rev``, so a member hashes the
    same whatever it has committed."""
    h = Crc32c()
    h.update(b"key")
    seeker = txn.cursor(db=key_index)
    keep_nonempty: bool | None = None
    upper = rev_to_bytes(max(rev + 1, 0))  # etcd: a negative rev hashes no rows
    rows = txn.cursor(db=history)
    committed = rows.iternext() if rows.first() else ()
    for rb, v in itertools.chain(committed, pending.rows if pending else ()):
        if rb >= upper:
            break
        if main_of(rb) <= compact_rev:
            if keep_nonempty is None:
                keep_nonempty = _any_visible(txn, key_index, rev, pending)
            if keep_nonempty and (
                is_tombstone(rb) or _newest(seeker, stored(key_of(v)), rev, pending) != rb
            ):
                continue
        h.update(rb)
        h.update(v)
    return h.value()


def _newest(seeker: lmdb.Cursor, sk: bytes, rev: int, pending: Pending | None) -> bytes | None:
    """``newest_at`` with the pending rows first (they are newer than the snapshot's)."""
    rb = pending.newest_row(sk, rev) if pending else None
    return rb if rb is not None else newest_at(seeker, sk, rev)


def _any_visible(txn: lmdb.Transaction, key_index: lmdb._Database, rev: int,
                 pending: Pending | None = None) -> bool:
    keys = txn.cursor(db=key_index)
    seeker = txn.cursor(db=key_index)
    if pending:
        for sk in pending.index:
            rb = pending.newest_row(sk, rev)
            if rb is not None and not is_tombstone(rb):
                return True
    if not keys.first():
        return False
    for k in keys.iternext_nodup(keys=True, values=False):
        if pending and pending.newest_row(k, rev) is not None:
            continue  # decided above
        if visible_at(seeker, k, rev) is not None:
            return True
    return False
