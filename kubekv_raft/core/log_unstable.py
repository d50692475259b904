"""Entries and a snapshot the application has not yet made durable."""

from __future__ import annotations

from etcdproto.raftpb import raft_pb2 as pb

__all__ = ["Unstable"]


class Unstable:
    """entries[i] has index offset + i; a pending snapshot, if any, precedes them."""

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: pb.Snapshot | None = None
        self.entries: list[pb.Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        """First index if a pending snapshot defines it."""
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        """Last index if anything unstable defines it."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        """Term of entry i if unstable knows it."""
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == i:
                return self.snapshot.metadata.term
            return None
        k = i - self.offset
        if k < len(self.entries):
            return self.entries[k].term
        return None

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to (i, t) are durable now: drop them."""
        gt = self.maybe_term(i)
        if gt is None:
            return
        # Only if the entry is still the one persisted (not replaced meanwhile).
        if gt == t and i >= self.offset:
            del self.entries[: i + 1 - self.offset]
            self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        """The snapshot at i is durable now."""
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, s: pb.Snapshot) -> None:
        """Replace everything with a snapshot."""
        self.offset = s.metadata.index + 1
        self.entries = []
        self.snapshot = s

    def truncate_and_append(self, ents: list[pb.Entry]) -> None:
        """Append, first dropping any unstable entries at or after ents[0].index."""
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replaces all unstable entries; storage truncates the rest on append.
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[pb.Entry]:
        """Entries [lo, hi), which must lie within the unstable range."""
        upper = self.offset + len(self.entries)
        if lo > hi or lo < self.offset or hi > upper:
            raise IndexError(f"unstable.slice[{lo},{hi}) out of bound [{self.offset},{upper}]")
        return self.entries[lo - self.offset : hi - self.offset]
