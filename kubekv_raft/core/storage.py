"""What the Raft core reads: the `Storage` protocol, and `MemoryStorage`, which keeps it in lists.

As etcd-io/raft's storage.go: the core reads entries, hard state, conf state and snapshot
metadata through `Storage` and never writes it; the application (here the driver's
WALStorage or LMDBStorage, or MemoryStorage in tests and the simulation) persists what
`Ready` hands out.
Both keep a "compaction point": the index and term of the last discarded entry (or of the
last snapshot). `first_index()` is one past it, and `term()` of it still answers, which is
what the leader needs to build the first MsgApp after compaction.
"""

from __future__ import annotations

import threading
from typing import Protocol

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import CompactedError, SnapshotOutOfDateError, UnavailableError

__all__ = ["MemoryStorage", "Storage", "limit_size"]


class Storage(Protocol):
    """The read side of Raft's durable state, as the core uses it."""

    def initial_state(self) -> tuple[pb.HardState, pb.ConfState]:
        """Hard state and membership to restart from."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[pb.Entry]:
        """Entries [lo, hi), at least one if any, at most max_size bytes beyond the first."""
        ...

    def term(self, i: int) -> int:
        """Term of entry i; the compaction point's index also answers."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still held (compaction point + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (first_index() - 1 when empty)."""
        ...

    def snapshot(self) -> pb.Snapshot:
        """The most recent snapshot, for a follower that fell behind the log."""
        ...


def limit_size(ents: list[pb.Entry], max_size: int | None) -> list[pb.Entry]:
    """Trim ents to at most max_size bytes, but always keep the first entry."""
    if max_size is None or not ents:
        return ents
    size = ents[0].ByteSize()
    for n in range(1, len(ents)):
        size += ents[n].ByteSize()
        if size > max_size:
            return ents[:n]
    return ents


class MemoryStorage:
    """Storage held in memory: ents[0] is a dummy entry at the compaction point."""

    def __init__(self) -> None:
        self._hard_state = pb.HardState()
        self._conf_state = pb.ConfState()
        self._snapshot = pb.Snapshot()
        self._ents: list[pb.Entry] = [pb.Entry()]
        self._lock = threading.Lock()

    # -- read side ---------------------------------------------------------
    def initial_state(self) -> tuple[pb.HardState, pb.ConfState]:
        """Hard state and membership to restart from."""
        return _copy(self._hard_state), _copy(self._conf_state)

    def hard_state(self) -> pb.HardState:
        """The last hard state written."""
        return _copy(self._hard_state)

    def conf_state(self) -> pb.ConfState:
        """The last membership written."""
        return _copy(self._conf_state)

    def first_index(self) -> int:
        """Index of the first entry still held."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """Index of the last entry held."""
        return self._ents[0].index + len(self._ents) - 1

    def term(self, i: int) -> int:
        """Term of entry i (the compaction point's term for i == first_index() - 1)."""
        with self._lock:
            offset = self._ents[0].index
            if i < offset:
                raise CompactedError(f"index {i} compacted (first is {offset + 1})")
            if i - offset >= len(self._ents):
                raise UnavailableError(f"index {i} past last {self.last_index()}")
            return self._ents[i - offset].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[pb.Entry]:
        """Entries [lo, hi), size-limited but never empty when lo < hi."""
        with self._lock:
            offset = self._ents[0].index
            if lo <= offset:
                raise CompactedError(f"index {lo} compacted (first is {offset + 1})")
            if hi > self.last_index() + 1:
                raise UnavailableError(f"entries up to {hi} asked, last is {self.last_index()}")
            return limit_size(self._ents[lo - offset : hi - offset], max_size)

    def snapshot(self) -> pb.Snapshot:
        """The most recent snapshot."""
        return self._snapshot

    # -- write side --------------------------------------------------------
    def append(self, entries: list[pb.Entry], hard_state: pb.HardState | None = None) -> None:
        """Append entries, replacing any at or after entries[0].index; then set hard_state."""
        with self._lock:
            if entries:
                first = self.first_index()
                last = entries[-1].index
                if last >= first:
                    if entries[0].index < first:
                        entries = entries[first - entries[0].index :]
                    start = entries[0].index
                    if start > self.last_index() + 1:
                        raise ValueError(f"gap: appending {start} after last {self.last_index()}")
                    del self._ents[start - self._ents[0].index :]
                    self._ents.extend(entries)
            if hard_state is not None:
                self._hard_state = _copy(hard_state)

    def set_hard_state(self, hs: pb.HardState) -> None:
        """Record term, vote and commit."""
        self._hard_state = _copy(hs)

    def set_conf_state(self, cs: pb.ConfState) -> None:
        """Record the membership to restart from."""
        self._conf_state = _copy(cs)

    def compact(self, index: int) -> None:
        """Discard entries <= index, keeping index's term as the new compaction point."""
        with self._lock:
            offset = self._ents[0].index
            if index <= offset:
                raise CompactedError(f"index {index} already compacted")
            if index > self.last_index():
                raise UnavailableError(f"compact {index} past last {self.last_index()}")
            i = index - offset
            dummy = pb.Entry(index=self._ents[i].index, term=self._ents[i].term)
            self._ents = [dummy, *self._ents[i + 1 :]]

    def create_snapshot(
        self, index: int, conf_state: pb.ConfState | None = None, data: bytes = b""
    ) -> pb.Snapshot:
        """Record a snapshot of the application's state as of applied index `index`.

        Its conf_state becomes the membership to restart from: the core replays the
        committed conf changes after the snapshot.
        """
        with self._lock:
            if index <= self._snapshot.metadata.index:
                raise SnapshotOutOfDateError(f"snapshot {index} not newer")
            offset = self._ents[0].index
            if index > self.last_index():
                raise UnavailableError(f"snapshot {index} past last {self.last_index()}")
            snap = pb.Snapshot(data=data)
            snap.metadata.index = index
            snap.metadata.term = self._ents[index - offset].term
            if conf_state is not None:
                snap.metadata.conf_state.CopyFrom(conf_state)
                self._conf_state = _copy(conf_state)
            self._snapshot = snap
            return snap

    def apply_snapshot(self, snapshot: pb.Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        with self._lock:
            md = snapshot.metadata
            if md.index <= self._snapshot.metadata.index or md.index <= self._ents[0].index:
                raise SnapshotOutOfDateError(f"snapshot {md.index} not newer")
            self._snapshot = _copy(snapshot)
            self._ents = [pb.Entry(index=md.index, term=md.term)]
            self._conf_state = _copy(md.conf_state)
            if self._hard_state.commit < md.index:
                self._hard_state.commit = md.index

    def close(self) -> None:
        """Nothing to release."""


def _copy(m):  # type: ignore[no-untyped-def]
    c = type(m)()
    c.CopyFrom(m)
    return c


