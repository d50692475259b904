"""Errors raised by the MVCC store.

The messages are etcd's ``mvcc`` error texts; the gRPC layer prefixes them with
``etcdserver: `` as etcd's rpctypes do.
"""

from __future__ import annotations


class MVCCError(Exception):
    """Base class of the store's errors."""


class CompactedError(MVCCError):
    """The requested revision is below the compact revision."""

    def __init__(self, message: str = "mvcc: required revision has been compacted") -> None:
        super().__init__(message)


class FutureRevError(MVCCError):
    """The requested revision is above the current revision."""

    def __init__(self, message: str = "mvcc: required revision is a future revision") -> None:
        super().__init__(message)


class InvalidKeyError(MVCCError, ValueError):
    """The key cannot be stored: it is empty (etcd's API refuses that before)."""


class CorruptStoreError(MVCCError):
    """The store's tables contradict each other (found while upgrading its layout)."""
