"""MVCC writes applied but not committed yet: what readers lay over their LMDB snapshot.

The state db commits every `--backend-batch-interval` or `--backend-batch-limit`
writes, not every apply batch (etcd's batchTx; the fsynced log is the durability
point). A reader must still see every write whose response was sent, so after each
apply batch the applier publishes a `Pending`: the changes since the last commit, as
etcd's txReadBuffer. What a `Pending` holds is fixed once published (a batch makes a
new one), so readers on any thread use it without a lock.

A reader takes the published `Pending` *before* it begins its LMDB read txn and lays
over its snapshot what `for_snapshot` gives: all of it if the snapshot's current
revision is the `Pending`'s `base` (the revision of the commit it extends), nothing if
the snapshot is at or past its `top`. A snapshot cannot be older than `base` (commits
only move forward). Between the two, a snapshot sees a commit the `Pending` was not
yet told of: one that landed on the state db's commit thread while key requests were
applied into an overlay (mvcc/overlay.py), which holds the changes up to its revision;
the reader lays the changes above it.

Publishing costs the apply thread only its batch's changes: the Pendings of one
commit window share one append-only list of changes, each seeing its first `n`, and
the lookup tables readers need (`View`) are built on a reader's first question, from
the nearest older Pending that has built them (a copy plus the changes since), so
an apply batch no longer copies the whole window and a window nobody reads builds
nothing.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable

from kubekv_server.mvcc.revision import is_tombstone, main_of

# One change as the write txn made it: (stored key, user key, history row key,
# history row value, the live value after it or None for a delete, whether the key
# was live just before it).
Change = tuple[bytes, bytes, bytes, bytes, "bytes | None", bool]


class View:
    """The lookup tables of a Pending, built once by its first reader."""

    __slots__ = ("live", "order", "row_of", "index", "live_delta")

    def __init__(self, live: dict, order: list, row_of: dict, index: dict,
                 live_delta: int) -> None:
        # stored key -> (user key, live value or None if deleted, live in the commit)
        self.live = live
        # (user key, stored key) of `live`'s keys, sorted: a range finds its keys by
        # bisection instead of sorting the window's keys on every read
        self.order = order
        # history row key -> value
        self.row_of = row_of
        # stored key -> (user key, its new history row keys in order)
        self.index = index
        # live keys added minus removed since the commit (keys_total)
        self.live_delta = live_delta

    def extended(self, changes: Iterable[Change]) -> View:
        """A new View: this one plus `changes` (this one is left as it is)."""
        live, row_of, index = dict(self.live), dict(self.row_of), dict(self.index)
        order = self.order
        copied = False
        delta = self.live_delta
        fresh: set[bytes] = set()  # index lists already copied for the new View
        for sk, user_key, rb, data, value, existed in changes:
            old = live.get(sk)
            if old is None:
                if not copied:
                    order, copied = list(order), True
                bisect.insort(order, (user_key, sk))
                committed = before = existed
            else:
                committed, before = old[2], old[1] is not None
            live[sk] = (user_key, value, committed)
            delta += (value is not None) - before
            row_of[rb] = data
            entry = index.get(sk)
            if sk in fresh:
                entry[1].append(rb)
            else:
                fresh.add(sk)
                index[sk] = (user_key, ([] if entry is None else list(entry[1])) + [rb])
        return View(live, order, row_of, index, delta)


_NO_VIEW = View({}, [], {}, {}, 0)


class Pending:
    """The changes since the commit at revision `base`, up to revision `top`: the first
    `n` of the window's shared list of changes (only ever appended to)."""

    __slots__ = ("base", "top", "_changes", "_n", "_src", "_above")

    def __init__(self, base: int, top: int, changes: list, n: int,
                 src: Pending | View) -> None:
        self.base = base
        self.top = top
        self._changes = changes
        self._n = n
        # this Pending's View once built, else the Pending it extends (whose View, or
        # whose own source's, it is built from): one attribute, read and set atomically,
        # so readers on several threads may build at once (each the same View)
        self._src = src
        # (revision, the Pending of the changes above it): `for_snapshot`'s last answer
        # for a snapshot newer than `base`, kept since every reader until the next
        # publication asks the same
        self._above: tuple[int, Pending] | None = None

    def __bool__(self) -> bool:
        return self._n > 0

    def extended(self, base: int, changes: Iterable[Change], top: int) -> Pending:
        """A new Pending: this one (if it extends the same commit) plus `changes`."""
        if self.base != base or not self._n:
            window = list(changes)
            return Pending(base, top, window, len(window), EMPTY)  # EMPTY: no changes
        window = self._changes
        if len(window) != self._n:  # extended before: the next ones are another's
            window = window[:self._n]
        window.extend(changes)  # past this Pending's `n`: nobody else sees them yet
        return Pending(base, top, window, len(window), self)

    def for_snapshot(self, rev: int) -> Pending | None:
        """What a snapshot whose current revision is `rev` lays over itself (None:
        nothing): this Pending at its base, the changes above `rev` past it."""
        if not self._n or rev >= self.top or rev < self.base:
            return None
        if rev == self.base:
            return self
        above = self._above
        if above is None or above[0] != rev:
            rest = [c for c in itertools.islice(self._changes, self._n) if main_of(c[2]) > rev]
            above = self._above = (rev, Pending(rev, self.top, rest, len(rest), EMPTY))
        return above[1]

    def _view(self) -> View:
        src = self._src
        if isinstance(src, View):
            return src
        older = src  # the nearest older Pending with a View (the first has one)
        while True:
            s = older._src
            if isinstance(s, View):
                break
            older = s
        view = s.extended(itertools.islice(self._changes, older._n, self._n))
        self._src = view
        return view

    # -- what readers ask ------------------------------------------------------------------
    @property
    def live(self) -> dict:
        """stored key -> (user key, live value or None if deleted, live in the commit)"""
        return self._view().live

    @property
    def row_of(self) -> dict:
        """history row key -> value"""
        return self._view().row_of

    @property
    def index(self) -> dict:
        """stored key -> (user key, its new history row keys in order)"""
        return self._view().index

    @property
    def live_delta(self) -> int:
        """Live keys added minus removed since the commit (keys_total)."""
        return self._view().live_delta

    @property
    def rows(self) -> list[tuple[bytes, bytes]]:
        """(history row key, value) in revision order."""
        return [(c[2], c[3]) for c in itertools.islice(self._changes, self._n)]

    def live_in_range(self, key: bytes, end: bytes) -> list[tuple[bytes, bytes | None, bool]]:
        """(user key, live value or None if deleted, whether it was live in the commit)
        of changed keys in [key, end), sorted by user key; `end` b"" means no upper bound."""
        live = self._view().live
        return [live[sk] for _u, sk in self.index_in_range(key, end)]

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
        """(user key, stored key) of keys with changes here, in [key, end), sorted (the
        keys of `index` are those of `live`)."""
        order = self._view().order
        lo = bisect.bisect_left(order, (key,))
        hi = bisect.bisect_left(order, (end,)) if end else len(order)
        return order[lo:hi]

    def rows_between(self, from_rev: int, to_rev: int) -> list[tuple[bytes, bytes]]:
        """History rows with main revision in [from_rev, to_rev], in revision order."""
        return [(c[2], c[3]) for c in itertools.islice(self._changes, self._n)
                if from_rev <= main_of(c[2]) <= to_rev]


EMPTY = Pending(0, 0, [], 0, _NO_VIEW)
