"""The store's state in the ``meta`` database: O(1) to read at startup.

Keys (etcd's names where etcd has the key, its encodings too):

- ``currentRev``: 8-byte big-endian current revision (ours; etcd derives it by
  replaying the whole history at startup). Absent: 1, an empty store.
- ``scheduledCompactRev``: revision bytes of the latest requested compaction
  (etcd). It is the compact revision: reads below it fail at once.
- ``finishedCompactRev``: revision bytes of the last compaction whose physical
  removal finished (etcd).
- ``compactCursor``: history key where the scheduled compaction's physical removal
  resumes (ours), absent when none is in progress.

The compact revision is -1 when the store was never compacted, as etcd's
``compactMainRev``.
"""

from __future__ import annotations

import lmdb

from kubekv_server.mvcc.revision import rev_to_bytes

CURRENT_REV = b"currentRev"
SCHEDULED_COMPACT_REV = b"scheduledCompactRev"
FINISHED_COMPACT_REV = b"finishedCompactRev"
COMPACT_CURSOR = b"compactCursor"

NEVER_COMPACTED = -1


def _main(b: bytes | None, default: int) -> int:
    return default if b is None else int.from_bytes(b[:8], "big")


def revisions(txn: lmdb.Transaction, db: lmdb._Database) -> tuple[int, int]:
    """(current revision, compact revision) as seen by ``txn``."""
    return (
        _main(txn.get(CURRENT_REV, db=db), 1),
        _main(txn.get(SCHEDULED_COMPACT_REV, db=db), NEVER_COMPACTED),
    )


def put_current_revision(txn: lmdb.Transaction, db: lmdb._Database, rev: int) -> None:
    txn.put(CURRENT_REV, rev.to_bytes(8, "big"), db=db)


def finished_compact_revision(txn: lmdb.Transaction, db: lmdb._Database) -> int:
    return _main(txn.get(FINISHED_COMPACT_REV, db=db), NEVER_COMPACTED)


def schedule_compaction(txn: lmdb.Transaction, db: lmdb._Database, rev: int) -> None:
    """Record a compaction at ``rev`` and restart physical removal from the oldest row."""
    txn.put(SCHEDULED_COMPACT_REV, rev_to_bytes(rev), db=db)
    txn.put(COMPACT_CURSOR, rev_to_bytes(0), db=db)


def compact_cursor(txn: lmdb.Transaction, db: lmdb._Database) -> bytes | None:
    return txn.get(COMPACT_CURSOR, db=db)


def save_compact_cursor(txn: lmdb.Transaction, db: lmdb._Database, at: bytes) -> None:
    txn.put(COMPACT_CURSOR, at, db=db)


def finish_compaction(txn: lmdb.Transaction, db: lmdb._Database, rev: int) -> None:
    txn.put(FINISHED_COMPACT_REV, rev_to_bytes(rev), db=db)
    txn.delete(COMPACT_CURSOR, db=db)
