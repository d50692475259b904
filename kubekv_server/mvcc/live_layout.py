"""What the ``live`` table holds, and the upgrade from the layout that held values.

``live`` maps a stored key to the revision bytes of its current history row; the row
itself (the serialized KeyValue) is only in ``key``. Stores written before this layout
held the KeyValue itself in ``live``: a second copy of every current value, written
again on every put. Random-key writes dirtied pages of that copy all over the table,
so the state db's batch commit, which the apply stage waits for, wrote twice as much
(``bench/commit_cost.py``: 9.6 -> 4.7 ms and 4.9 -> 2.6 MB per 1,000 random Puts).

``meta`` records the layout (``liveLayout``); a store without the record is upgraded
when a member opens it for writing, and when a snapshot from such a store is installed.
"""

from __future__ import annotations

import lmdb

from kubekv_server.mvcc.errors import CorruptStoreError

LAYOUT_KEY = b"liveLayout"
REVISIONS = b"revisions"


def is_current(txn: lmdb.Transaction, meta_db: lmdb._Database) -> bool:
    """Whether ``live`` holds revisions (recorded when the store was made or upgraded)."""
    return txn.get(LAYOUT_KEY, db=meta_db) == REVISIONS


def upgrade(txn: lmdb.Transaction, live: lmdb._Database, key_index: lmdb._Database,
            history: lmdb._Database, meta_db: lmdb._Database) -> int:
    """Replace every KeyValue in ``live`` by its history row's revision bytes and record
    the layout, in ``txn`` (a crash leaves the store as it was). Returns the rows
    converted (0 if the store already has this layout).

    A live key's newest ``key_index`` entry is its current row, and that row must hold
    exactly the bytes ``live`` held: anything else is a corrupt store, reported rather
    than guessed at.
    """
    if is_current(txn, meta_db):
        return 0
    seeker = txn.cursor(db=key_index)
    todo: list[tuple[bytes, bytes]] = []
    for sk, value in txn.cursor(db=live):
        if not seeker.set_key(sk) or not seeker.last_dup():
            raise CorruptStoreError(f"a live key ({len(sk)} bytes) has no key index entry")
        rb = seeker.value()
        if txn.get(rb, db=history) != value:
            raise CorruptStoreError(
                f"a live key ({len(sk)} bytes) differs from its newest history row")
        todo.append((sk, rb))
    for sk, rb in todo:
        txn.put(sk, rb, db=live)
    txn.put(LAYOUT_KEY, REVISIONS, db=meta_db)
    return len(todo)
