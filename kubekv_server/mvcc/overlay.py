"""Key requests applied while the state db's commit lands: their changes made, not written.

The state db commits its apply transaction on a thread of its own (`Backend.commit_async`)
and LMDB has one write transaction at a time, so while a commit lands there is nothing
to write into. Rather than wait for it (a request arriving then waited for the commit's
fsync: one member's p99 at 64 Puts in flight), the apply stage applies key requests
into an overlay: an `OverlayWriteTxn` reads the committed snapshot of a read txn, the
pending view of the window the commit holds, the overlay's earlier changes and its
own, and makes its changes' rows (`pending.Change`) and events exactly as `WriteTxn`
does (it is one), writing nothing. Readers see them through the pending view as
usual; once the commit has landed, the rows are written into the next apply txn
(`MVCCStore.write_rows`) and the window goes on from there.

It serves what reads single live keys: puts, single-key deletes, and txns whose
compares and ops name single keys at the current revision, which is what Kubernetes'
creates, updates and deletes are. Anything else, or a key moving between leases (the
lease records change in the same LMDB txn), raises `NeedsCommittedState`, and the
applier waits for the commit and applies that request in the apply txn as usual.

The Runner's event loop uses the same overlay to apply a few entries in the idle apply
thread's stead (`Applier.apply_inline`), reading the open apply txn itself instead of a
read txn and a pending view: a request it cannot serve makes the whole batch decline,
nothing written, for the apply thread to apply.
"""

from __future__ import annotations

import lmdb

from kubekv_server.mvcc.pending import Change, Pending
from kubekv_server.mvcc.store import MVCCStore, OpCounts, WriteTxn, _Dbs


class NeedsCommittedState(BaseException):  # noqa: N818 - a signal, not an error
    """The request reads or changes what only the apply txn holds: apply it there.

    A BaseException so that nothing on the way out treats it as the request's own
    failure (kv/txn.py's compares count any Exception as a compare that does not hold).
    """


class OverlayWriteTxn(WriteTxn):
    """A WriteTxn over a read txn: reads see the snapshot, `window` (the pending view of
    the commit under way), `earlier` (stored key -> its row, or None once deleted, of
    the overlay's requests before this one) and this txn's own changes (`own`)."""

    def __init__(self, read_txn: lmdb.Transaction, dbs: _Dbs, counts: OpCounts | None,
                 revisions: tuple[int, int], window: Pending,
                 earlier: dict[bytes, bytes | None]) -> None:
        super().__init__(read_txn, dbs, counts, revisions)
        self._writes = None
        self._window = window
        self._earlier = earlier
        # stored key -> its row now, or None once deleted: what the overlay merges into
        # `earlier` once the request has succeeded
        self.own: dict[bytes, bytes | None] = {}

    def _live_row(self, sk: bytes) -> bytes | None:
        own = self.own
        if sk in own:
            return own[sk]
        earlier = self._earlier
        if sk in earlier:
            return earlier[sk]
        if self._window:
            e = self._window.live.get(sk)
            if e is not None:
                return e[1]
        return super()._live_row(sk)

    def _wrote(self, sk: bytes, row: bytes | None) -> None:
        self.own[sk] = row

    def _range_live(self, key: bytes, end: bytes | None, limit: int,
                    count_only: bool) -> tuple[list[bytes], int]:
        if end is None:
            return super()._range_live(key, end, limit, count_only)
        raise NeedsCommittedState

    def _range_history(self, key: bytes, end: bytes | None, rev: int, limit: int,
                       count_only: bool) -> tuple[list[bytes], int]:
        raise NeedsCommittedState

    def _live_items(self, key: bytes, end: bytes) -> list[tuple[bytes, bytes, bytes]]:
        raise NeedsCommittedState

    def history(self, from_rev: int, to_rev: int):
        raise NeedsCommittedState

    def end(self) -> int:
        if self.leases_moved:  # the lease records would change with it
            raise NeedsCommittedState
        return super().end()


class Overlay:
    """What was applied while one commit landed: the requests' changes as rows, in
    revision order, with each changed key's row now, and the entries they came from."""

    def __init__(self, store: MVCCStore, window: Pending, revisions: tuple[int, int],
                 txn: lmdb.Transaction | None = None) -> None:
        """`txn`: the txn to read through instead of a read txn of the committed state
        (the open apply txn itself, with an empty `window`, when the apply thread is idle
        and nothing is landing: `Applier.apply_inline`); it is not ended here."""
        self._store = store
        self.window = window  # the pending view of the commit under way, as published
        self.start = revisions  # (current, compact revision) the commit under way holds
        self.last_index = 0  # the last entry applied into it, whatever it did
        self.live: dict[bytes, bytes | None] = {}
        self.rows: list[Change] = []
        self.entries: list[tuple[int, bytes]] = []  # (index, entry data), as the window's
        self.nbytes = 0  # the rows' history values, as Backend counts a window's
        self._read: lmdb.Transaction | None = txn
        self._owns_read = txn is None

    def write(self, revisions: tuple[int, int]) -> OverlayWriteTxn:
        """One request's write txn, at `revisions` (current, compact) as the overlay's
        earlier requests left them."""
        store = self._store
        return OverlayWriteTxn(self.read_txn, store._dbs, store.counts, revisions,  # noqa: SLF001
                               self.window, self.live)

    @property
    def read_txn(self) -> lmdb.Transaction:
        """The read txn requests read through (the committed snapshot)."""
        if self._read is None:
            self._read = self._store.env.begin()
        return self._read

    def add(self, w: OverlayWriteTxn, index: int, data: bytes) -> None:
        """A request that succeeded in `w`: its changes join the overlay."""
        self.live.update(w.own)
        rows = w.rows
        if rows:
            self.rows.extend(rows)
            self.nbytes += sum(len(r[3]) for r in rows)
        self.entries.append((index, data))

    def release(self) -> None:
        """Between batches: end the read txn (the next batch reads a newer snapshot)."""
        if self._read is not None and self._owns_read:
            self._read.abort()
            self._read = None
