"""The persistent key index: which revision of a key is visible at a revision.

etcd keeps a B-tree of ``keyIndex`` generations in memory and rebuilds it from the
whole history at startup. We keep the same information in LMDB instead, so that
startup is O(1) and any process that opens the environment can read it: a
``dupsort`` database ``key -> revision bytes``, whose duplicates are exactly the
history (``key`` database) keys of that user key, tombstones included (18 bytes,
trailing ``t``). Duplicates sort by (main, sub), so "newest entry with
main <= R" is one ``set_range_dup`` plus one ``prev_dup``.

A generation ends at a tombstone; a key is visible at R iff its newest entry with
main <= R exists and is not a tombstone. Version and create revision are read from
the stored KeyValue, as etcd does for everything but the index itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import lmdb

from kubekv_server.mvcc.revision import is_tombstone, rev_to_bytes


def newest_at(cur: lmdb.Cursor, key: bytes, at_main: int) -> bytes | None:
    """Revision bytes of ``key``'s newest index entry with main <= ``at_main``.

    ``cur`` is a cursor on the dupsort index. Returns None when the key has no
    entry at or below ``at_main``. The result may be a tombstone.
    """
    if cur.set_range_dup(key, rev_to_bytes(at_main + 1)):
        return cur.value() if cur.prev_dup() else None
    if cur.set_key(key):
        cur.last_dup()
        return cur.value()
    return None


def visible_at(cur: lmdb.Cursor, key: bytes, at_main: int) -> bytes | None:
    """History key of ``key``'s value visible at ``at_main``, or None if absent/deleted."""
    rb = newest_at(cur, key, at_main)
    if rb is None or is_tombstone(rb):
        return None
    return rb


def kept_entry(entries: Sequence[bytes], at_main: int) -> bytes | None:
    """Which of a key's sorted index entries survives a compaction at ``at_main``.

    etcd's ``keyIndex.compact`` keeps, of the revisions <= ``at_main``, only the
    newest one, and drops it too when it is a tombstone (the generation ended).
    Entries above ``at_main`` are never touched. Pure reference for the LMDB code.
    """
    newest = None
    for rb in entries:
        if int.from_bytes(rb[:8], "big") <= at_main:
            newest = rb
    if newest is None or is_tombstone(newest):
        return None
    return newest
