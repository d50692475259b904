"""etcd's MVCC key-value store on LMDB: revisions, key index, ranges at any
revision, compaction and hashes. See ``store.py`` for the layout."""

from .errors import (
    CompactedError,
    FutureRevError,
    InvalidKeyError,
    MVCCError,
)
from .meta import NEVER_COMPACTED
from .revision import Revision, bytes_to_rev, is_tombstone, rev_to_bytes
from .store import MVCCStore, RangeResult, ReadTxn, WriteTxn

__all__ = [
    "NEVER_COMPACTED",
    "CompactedError",
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
