"""MVCC writes applied but not committed yet: what readers lay over their LMDB snapshot.

The state db commits every `--backend-batch-interval` or `--backend-batch-limit`
writes, not every apply batch (etcd's batchTx; the fsynced log is the durability
point). A reader must still see every write whose response was sent, so after each
apply batch the applier publishes a `Pending`: the changes since the last commit, as
etcd's txReadBuffer. A `Pending` is immutable once published (a batch makes a new
one), so readers on any thread use it without a lock.

A reader takes the published `Pending` *before* it begins its LMDB read txn, and
uses it only if the snapshot's current revision is the `Pending`'s `base` (the
revision of the commit it extends). A commit takes everything published so far, so
a snapshot newer than `base` already holds all of it, and a snapshot cannot be
older than `base` (commits only move forward).
"""

from __future__ import annotations

from collections.abc import Iterable

from kubekv_server.mvcc.revision import is_tombstone, main_of

# One change as the write txn made it: (stored key, user key, history row key,
# history row value, the live value after it or None for a delete, whether the key
# was live just before it).
Change = tuple[bytes, bytes, bytes, bytes, "bytes | None", bool]


class Pending:
    """The changes since the commit at revision `base`, up to revision `top`."""

    __slots__ = ("base", "top", "live", "rows", "row_of", "index", "live_delta")

    def __init__(self, base: int, top: int, live: dict, rows: list, row_of: dict,
                 index: dict, live_delta: int) -> None:
        self.base = base
        self.top = top
        # stored key -> (user key, live value or None if deleted, live in the commit)
        self.live = live
        # (history row key, value) in revision order, and the same as a dict
        self.rows = rows
        self.row_of = row_of
        # stored key -> (user key, its new history row keys in order)
        self.index = index
        # live keys added minus removed since the commit (keys_total)
        self.live_delta = live_delta

    def __bool__(self) -> bool:
        return bool(self.rows)

    def extended(self, base: int, changes: Iterable[Change], top: int) -> Pending:
        """A new Pending: this one (if it extends the same commit) plus `changes`."""
        if self.base != base or not self.rows:
            live, rows, row_of, index, delta = {}, [], {}, {}, 0
        else:
            live, rows, row_of = dict(self.live), list(self.rows), dict(self.row_of)
            index, delta = dict(self.index), self.live_delta
        fresh: set[bytes] = set()  # index lists already copied for this version
        for sk, user_key, rb, data, value, existed in changes:
            old = live.get(sk)
            if old is None:
                committed = before = existed
            else:
                committed, before = old[2], old[1] is not None
            live[sk] = (user_key, value, committed)
            delta += (value is not None) - before
            rows.append((rb, data))
            row_of[rb] = data
            entry = index.get(sk)
            if sk in fresh:
                entry[1].append(rb)
            else:
                fresh.add(sk)
                index[sk] = (user_key, ([] if entry is None else list(entry[1])) + [rb])
        return Pending(base, top, live, rows, row_of, index, delta)

    # -- what readers ask ------------------------------------------------------------------
    def live_in_range(self, key: bytes, end: bytes) -> list[tuple[bytes, bytes | None]]:
        """(user key, live value or None if deleted) of changed keys in [key, end),
        sorted by user key; `end` b"" means no upper bound."""
        return sorted((u, v) for u, v, _ in self.live.values()
                      if u >= key and (not end or u < end))

    def newest_row(self, stored_key: bytes, rev: int) -> bytes | None:
        """The key's newest history row key here with main revision <= `rev` (maybe a
        tombstone), or None if it has none here."""
        entry = self.index.get(stored_key)
        if entry is not None:
            for rb in reversed(entry[1]):
                if main_of(rb) <= rev:
                    return rb
        return None

    def newest_at(self, stored_key: bytes, rev: int) -> tuple[bool, bytes | None]:
        """(whether a change of the key at or below `rev` is here, the history row key
        visible at `rev` or None if that change deleted it)."""
        rb = self.newest_row(stored_key, rev)
        if rb is None:
            return False, None
        return True, None if is_tombstone(rb) else rb

    def index_in_range(self, key: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
        """(user key, stored key) of keys with changes here, in [key, end), sorted."""
        return sorted((u, sk) for sk, (u, _) in self.index.items()
                      if u >= key and (not end or u < end))

    def rows_between(self, from_rev: int, to_rev: int) -> list[tuple[bytes, bytes]]:
        """History rows with main revision in [from_rev, to_rev], in revision order."""
        return [(rb, v) for rb, v in self.rows if from_rev <= main_of(rb) <= to_rev]


EMPTY = Pending(0, 0, {}, [], {}, {}, 0)
