"""How a user key is stored as an LMDB key, so that keys of any length fit.

LMDB keys (and dupsort values) are at most 511 bytes; etcd takes any key that fits
in a request. A key of at most ``PREFIX`` bytes is stored as itself. A longer key is
stored as its first ``PREFIX`` bytes followed by a 32-byte BLAKE2b digest of the whole
key, and the ``long_keys`` table maps that stored form back to the key.

Byte order of stored keys is the order of the user keys, except among long keys that
share their first ``PREFIX`` bytes: such a run (a *group*) is contiguous but sorted by
digest, so scans re-sort each group (``scan``). For a bound of at most ``PREFIX``
bytes, ``stored >= bound`` holds exactly when ``user key >= bound``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from hashlib import blake2b

import lmdb

PREFIX = 448
DIGEST = 32


def stored(key: bytes) -> bytes:
    """The LMDB key under which ``key`` is stored."""
    if len(key) <= PREFIX:
        return key
    return key[:PREFIX] + blake2b(key, digest_size=DIGEST).digest()


def is_long(stored_key: bytes) -> bool:
    """Whether a stored key stands for a longer user key (``long_keys`` has it)."""
    return len(stored_key) > PREFIX


def scan(
    cur: lmdb.Cursor,
    key: bytes,
    end: bytes,
    resolve: Callable[[bytes], bytes],
    nodup: bool = False,
) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(user key, stored key, value) of the entries whose user key is in [key, end),
    in user-key order; ``end`` b"" means no upper bound.

    ``resolve`` maps a long stored key to its user key. ``nodup`` walks a dupsort
    database one key at a time (the value is the key's first duplicate).
    """
    if not cur.set_range(key[:PREFIX]):
        return
    entries = cur.iternext_nodup(values=True) if nodup else cur.iternext()
    group: list[tuple[bytes, bytes, bytes]] = []
    group_prefix = b""
    for s, v in entries:
        if len(s) <= PREFIX:
            if group:
                yield from _in_order(group, key, end)
                group = []
            if end and s >= end:
                return
            if s >= key:
                yield s, s, v
            continue
        p = s[:PREFIX]
        if group and p != group_prefix:
            yield from _in_order(group, key, end)
            group = []
        if end and p >= end:
            return  # every key of this group (p + more) and after it is >= end
        group_prefix = p
        group.append((resolve(s), s, v))
    if group:
        yield from _in_order(group, key, end)


def _in_order(
    group: list[tuple[bytes, bytes, bytes]], key: bytes, end: bytes
) -> Iterator[tuple[bytes, bytes, bytes]]:
    group.sort()
    for item in group:
        u = item[0]
        if u < key:
            continue
        if end and u >= end:
            return
        yield item
