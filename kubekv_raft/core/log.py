"""The Raft log: durable entries in Storage followed by unstable ones, plus commit/applied."""

from __future__ import annotations

from typing import TYPE_CHECKING

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import CompactedError, UnavailableError
from kubekv_raft.core.log_unstable import Unstable

if TYPE_CHECKING:
    from kubekv_raft.core.storage import Storage

__all__ = ["RaftLog", "limit_size"]


def limit_size(ents: list[pb.Entry], max_size: int | None) -> list[pb.Entry]:
    """Trim ents to at most max_size bytes, always keeping the first entry."""
    if max_size is None or len(ents) <= 1:
        return ents
    size = 0
    for n, e in enumerate(ents):
        size += e.ByteSize()
        if size > max_size and n > 0:
            return ents[:n]
    return ents


class RaftLog:
    """committed <= last index; applied <= committed; stable entries come from storage."""

    def __init__(self, storage: Storage, max_next_ents_size: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the compaction point is committed and applied by definition.
        self.committed = first - 1
        self.applied = first - 1
        self.max_next_ents_size = max_next_ents_size

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed} applied={self.applied} "
            f"unstable.offset={self.unstable.offset} len(unstable)={len(self.unstable.entries)})"
        )

    # -- indexes and terms --------------------------------------------------
    def first_index(self) -> int:
        """First index held (after the compaction point or pending snapshot)."""
        snap = self.unstable.snapshot
        if snap is not None:
            return snap.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """Index of the last entry, durable or not."""
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.metadata.index
        return self.storage.last_index()

    def term(self, i: int) -> int:
        """Term of entry i; 0 outside [first-1, last]; CompactedError if storage discarded it."""
        u = self.unstable
        ents = u.entries
        k = i - u.offset
        if 0 <= k < len(ents):
            return ents[k].term
        if u.snapshot is not None:
            return self._term_slow(i)
        # No pending snapshot: what is not an unstable entry is storage's (the checks and
        # look-ups of `_term_slow`, without re-asking unstable what it was just asked).
        if k >= 0 and ents:
            return 0  # past the last unstable entry, so past the last index
        st = self.storage
        if i < st.first_index() - 1 or (not ents and i > st.last_index()):
            return 0
        try:
            return st.term(i)
        except UnavailableError:
            return 0

    def _term_slow(self, i: int) -> int:
        """`term` in general (a snapshot pending)."""
        dummy = self.first_index() - 1
        if i < dummy or i > self.last_index():
            return 0
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        try:
            return self.storage.term(i)
        except UnavailableError:
            return 0

    def zero_term(self, i: int) -> int:
        """term(i), but 0 for a compacted index."""
        try:
            return self.term(i)
        except CompactedError:
            return 0

    def last_term(self) -> int:
        """Term of the last entry."""
        return self.term(self.last_index())

    def match_term(self, i: int, t: int) -> bool:
        """Whether entry i exists with term t."""
        try:
            return self.term(i) == t
        except CompactedError:
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Whether a log ending at (lasti, term) is at least as up to date as ours (§5.4.1)."""
        lt = self.last_term()
        return term > lt or (term == lt and lasti >= self.last_index())

    # -- appending ----------------------------------------------------------
    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: list[pb.Entry]
    ) -> int | None:
        """Append a leader's entries following (index, log_term); None if that doesn't match."""
        if not self.match_term(index, log_term):
            return None
        lastnewi = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise AssertionError(f"entry {ci} conflicts with committed entry {self.committed}")
            self.append(ents[ci - (index + 1) :])
        self.commit_to(min(committed, lastnewi))
        return lastnewi

    def append(self, ents: list[pb.Entry]) -> int:
        """Append (truncating conflicting unstable entries); returns the last index."""
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise AssertionError(f"after({after}) is out of range [committed({self.committed})]")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: list[pb.Entry]) -> int:
        """Index of the first entry whose term differs from ours (or is new); 0 if none."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= `index` whose term is <= `term` (for fast backtracking)."""
        while index > 0:
            try:
                our = self.term(index)
            except CompactedError:
                return index
            if our <= term:
                return index
            index -= 1
        return 0

    # -- commit and apply ---------------------------------------------------
    def commit_to(self, tocommit: int) -> None:
        """Raise the commit index (never lowers it)."""
        if self.committed < tocommit:
            if self.last_index() < tocommit:
                raise AssertionError(
                    f"tocommit({tocommit}) is out of range [lastIndex({self.last_index()})]. "
                    "Was the raft log corrupted, truncated, or lost?"  # etcd's words
                )
            self.committed = tocommit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit up to max_index only if that entry is of `term` (§5.4.2)."""
        if max_index <= self.committed:
            return False
        try:  # zero_term, inline: this runs on every acknowledgement
            t = self.term(max_index)
        except CompactedError:
            t = 0
        if t != term:
            return False
        self.commit_to(max_index)
        return True

    def applied_to(self, i: int) -> None:
        """The application has applied through i."""
        if i == 0:
            return
        if self.committed < i or i < self.applied:
            raise AssertionError(
                f"applied({i}) is out of range [prev applied({self.applied}), "
                f"committed({self.committed})]"
            )
        self.applied = i

    def stable_to(self, i: int, t: int) -> None:
        """Entries through (i, t) are durable."""
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        """The snapshot at i is durable."""
        self.unstable.stable_snap_to(i)

    # -- reading entries ----------------------------------------------------
    def unstable_entries(self) -> list[pb.Entry]:
        """Entries to persist."""
        return list(self.unstable.entries)

    def next_ents(self) -> list[pb.Entry]:
        """Committed entries not yet applied."""
        if self.committed <= self.applied:
            return []
        off = max(self.applied + 1, self.first_index())
        if self.committed + 1 > off:
            return self.slice(off, self.committed + 1, self.max_next_ents_size)
        return []

    def has_next_ents(self) -> bool:
        """Whether there are committed entries to apply."""
        c = self.committed
        return c > self.applied and c >= self.first_index()

    def has_pending_snapshot(self) -> bool:
        """Whether a received snapshot awaits persisting."""
        return self.unstable.snapshot is not None

    def snapshot(self) -> pb.Snapshot:
        """The pending snapshot if any, else storage's latest."""
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def entries(self, i: int, max_size: int | None = None) -> list[pb.Entry]:
        """Entries from i to the end, size-limited."""
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, last + 1, max_size, last)

    def all_entries(self) -> list[pb.Entry]:
        """Every entry still held (tests)."""
        while True:
            try:
                return self.entries(self.first_index())
            except CompactedError:  # pragma: no cover - raced with compaction
                continue

    def slice(
        self, lo: int, hi: int, max_size: int | None = None, last: int | None = None
    ) -> list[pb.Entry]:
        """Entries [lo, hi), size-limited; CompactedError if lo was discarded. `last`:
        the last index, if the caller has it at hand."""
        fi = self.first_index()
        if lo < fi:
            raise CompactedError(f"slice from {lo} but first index is {fi}")
        if last is None:
            last = self.last_index()
        if lo > hi or hi > last + 1:
            raise AssertionError(f"slice[{lo},{hi}) out of bound [{fi},{last}]")
        if lo == hi:
            return []
        u = self.unstable
        ents: list[pb.Entry] = []
        if lo < u.offset:
            stop = min(hi, u.offset)
            stored = self.storage.entries(lo, stop, max_size)
            if len(stored) < stop - lo:
                return stored  # size limit reached
            ents = stored
        if hi > u.offset:
            more = u.slice(max(lo, u.offset), hi)
            ents = ents + more if ents else more
        if max_size is None or len(ents) <= 1:  # what limit_size keeps whole
            return ents
        return limit_size(ents, max_size)

    def restore(self, s: pb.Snapshot) -> None:
        """Reset the log to a snapshot received from the leader."""
        self.committed = s.metadata.index
        self.unstable.restore(s)
