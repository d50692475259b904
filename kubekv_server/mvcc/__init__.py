"""etcd's MVCC key-value store on LMDB: revisions, key index, ranges at any
revision, compaction and hashes. See ``store.py`` for the layout."""

from kubekv_server.mvcc.errors import (
    CompactedError,
    CorruptStoreError,
    FutureRevError,
    InvalidKeyError,
    MVCCError,
)
from kubekv_server.mvcc.meta import NEVER_COMPACTED
from kubekv_server.mvcc.revision import Revision, bytes_to_rev, is_tombstone, rev_to_bytes
from kubekv_server.mvcc.store import MVCCStore, RangeResult, ReadTxn, WriteTxn

__all__ = [
    "NEVER_COMPACTED",
    "CompactedError",
    "CorruptStoreError",
    "FutureRevError",
    "InvalidKeyError",
    "MVCCError",
    "MVCCStore",
    "RangeResult",
    "ReadTxn",
    "Revision",
    "WriteTxn",
    "bytes_to_rev",
    "is_tombstone",
    "rev_to_bytes",
]
