"""Revisions and their byte encoding, exactly as etcd's ``mvcc/revision.go``.

A revision key is 17 bytes: 8-byte big-endian main revision, ``_``, 8-byte
big-endian sub revision. A tombstone row's key has one more byte, ``t``
(etcd's ``appendMarkTombstone``), so it is 18 bytes long. Byte order equals
(main, sub) order, which is what the LMDB cursors rely on.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

REV_BYTES_LEN = 8 + 1 + 8
MARKED_REV_BYTES_LEN = REV_BYTES_LEN + 1
MARK_TOMBSTONE = b"t"

_REV = struct.Struct(">QcQ")
_pack = _REV.pack
_unpack_from = _REV.unpack_from


class Revision(NamedTuple):
    """A (main, sub) revision; tuple order is etcd's ``GreaterThan`` order."""

    main: int
    sub: int = 0

    def to_bytes(self, tombstone: bool = False) -> bytes:
        return rev_to_bytes(self.main, self.sub, tombstone)

    @classmethod
    def from_bytes(cls, b: bytes) -> Revision:
        main, sub = bytes_to_rev(b)
        return cls(main, sub)


def rev_to_bytes(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    """etcd's ``revToBytes`` (+ ``appendMarkTombstone`` when ``tombstone``)."""
    b = _pack(main, b"_", sub)
    return b + MARK_TOMBSTONE if tombstone else b


def bytes_to_rev(b: bytes) -> tuple[int, int]:
    """etcd's ``bytesToRev``: (main, sub) of 17- or 18-byte revision bytes."""
    main, _, sub = _unpack_from(b)
    return main, sub


def main_of(b: bytes) -> int:
    """The main revision of revision bytes."""
    return int.from_bytes(b[:8], "big")


def is_tombstone(b: bytes) -> bool:
    """etcd's ``isTombstone``."""
    return len(b) == MARKED_REV_BYTES_LEN and b[REV_BYTES_LEN] == MARK_TOMBSTONE[0]
