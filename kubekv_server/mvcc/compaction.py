"""Physical removal of compacted history, in bounded steps.

``compact`` only records the compact revision (reads below it fail at once);
``compact_step`` then walks the history rows with main revision <= the compact
revision in revision order and deletes, together with their key-index entries,
all rows that etcd's ``keyIndex.compact`` would not keep: for each key only the
newest row at or below the compact revision survives, and not even that one when
it is a tombstone. Progress is stored in ``meta`` in the caller's txn, so it
survives restarts and never holds a write txn for long.
"""

from __future__ import annotations

import lmdb

from kubekv_server.mvcc import meta
from kubekv_server.mvcc.key_index import newest_at
from kubekv_server.mvcc.revision import is_tombstone, rev_to_bytes
from kubekv_server.mvcc.stored_key import PREFIX, stored


def key_of(raw_kv: bytes) -> bytes:
    """The ``key`` field of a serialized KeyValue (field 1, always first; no parse)."""
    if not raw_kv or raw_kv[0] != 0x0A:
        return b""
    n = shift = 0
    i = 1
    while True:
        b = raw_kv[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            break
        shift += 7
    return raw_kv[i : i + n]


def compact_step(
    txn: lmdb.Transaction,
    history: lmdb._Database,
    key_index: lmdb._Database,
    meta_db: lmdb._Database,
    budget: int,
    long_keys: lmdb._Database | None = None,
) -> bool:
    """Examine up to ``budget`` history rows of the scheduled compaction.

    A long key whose last index entry goes is dropped from ``long_keys`` too.
    Returns True while rows remain to examine.
    """
    at = meta.compact_cursor(txn, meta_db)
    if at is None:
        return False
    _, compact_rev = meta.revisions(txn, meta_db)
    stop = rev_to_bytes(compact_rev + 1)
    rows = txn.cursor(db=history)
    seeker = txn.cursor(db=key_index)
    positioned = rows.set_range(at)
    examined = 0
    while positioned and examined < budget:
        rb = rows.key()
        if rb >= stop:
            positioned = False
            break
        examined += 1
        ukey = key_of(rows.value())
        sk = ukey if len(ukey) <= PREFIX else stored(ukey)
        newest = newest_at(seeker, sk, compact_rev)
        if newest == rb and not is_tombstone(rb):
            positioned = rows.next()
            continue
        if seeker.set_key_dup(sk, rb):
            seeker.delete()
            if long_keys is not None and len(ukey) > PREFIX and not seeker.set_key(sk):
                txn.delete(sk, db=long_keys)
        rows.delete()
        positioned = rows.key() != b""
    if positioned and rows.key() < stop:
        meta.save_compact_cursor(txn, meta_db, rows.key())
        return True
    meta.finish_compaction(txn, meta_db, compact_rev)
    return False
