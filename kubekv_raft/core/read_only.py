"""ReadIndex bookkeeping on the leader: pending reads and the heartbeat acks confirming them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from etcdproto.raftpb import raft_pb2 as pb

__all__ = ["ReadOnlyOption", "ReadState", "ReadIndexStatus", "ReadOnly"]


class ReadOnlyOption(IntEnum):
    """How the leader confirms it is still leader before answering a read index."""

    SAFE = 0  # one heartbeat round to a quorum (shared by all reads waiting at once)
    LEASE_BASED = 1  # trust the election timeout as a lease; needs CheckQuorum and sane clocks


@dataclass(frozen=True)
class ReadState:
    """A read request's context and the commit index it may read at once applied."""

    index: int
    request_ctx: bytes


@dataclass
class ReadIndexStatus:
    """One pending read: the MsgReadIndex, its read index and the acks collected so far."""

    req: pb.Message
    index: int
    acks: dict[int, bool] = field(default_factory=dict)


class ReadOnly:
    """Reads waiting for leadership confirmation, in arrival order."""

    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: pb.Message) -> None:
        """Queue a read at commit index `index`, keyed by its context."""
        ctx = m.entries[0].data
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(m, index)
        self.queue.append(ctx)

    def recv_ack(self, peer: int, ctx: bytes) -> dict[int, bool] | None:
        """Record a heartbeat ack for ctx; returns the acks so far (None if unknown ctx)."""
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks[peer] = True
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """ctx is confirmed by a quorum: release it and every read queued before it."""
        try:
            i = self.queue.index(ctx)
        except ValueError:
            return []
        released = [self.pending.pop(c) for c in self.queue[: i + 1]]
        del self.queue[: i + 1]
        return released

    def last_pending_request_ctx(self) -> bytes:
        """Context of the newest pending read (b"" if none)."""
        return self.queue[-1] if self.queue else b""
