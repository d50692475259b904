"""The leader's view of one follower: match/next, flow-control state, in-flight window."""

from __future__ import annotations

from collections import deque
from enum import IntEnum

__all__ = ["ProgressState", "Inflights", "Progress"]


class ProgressState(IntEnum):
    """How the leader replicates to a follower."""

    PROBE = 0  # one MsgApp per heartbeat until the follower's position is known
    REPLICATE = 1  # stream MsgApps optimistically, bounded by the in-flight window
    SNAPSHOT = 2  # a snapshot is on its way; send nothing else


class Inflights:
    """Last indexes of MsgApps sent but not yet acknowledged, at most `size` of them."""

    __slots__ = ("size", "_q")

    def __init__(self, size: int) -> None:
        self.size = size
        self._q: deque[int] = deque()

    def add(self, index: int) -> None:
        """Record a MsgApp whose last entry is `index`."""
        if self.full():
            raise RuntimeError("cannot add into a full inflights window")
        self._q.append(index)

    def free_le(self, to: int) -> None:
        """Forget every in-flight message up to and including index `to`."""
        q = self._q
        while q and q[0] <= to:
            q.popleft()

    def free_first_one(self) -> None:
        """Free one slot so a stuck window can make progress (after a heartbeat reply)."""
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        """No more MsgApps may be sent."""
        return len(self._q) >= self.size

    def count(self) -> int:
        """Messages in flight."""
        return len(self._q)

    def reset(self) -> None:
        """Forget everything in flight."""
        self._q.clear()


class Progress:
    """The leader's view of one peer (including itself)."""

    __slots__ = (
        "match",
        "next",
        "state",
        "pending_snapshot",
        "recent_active",
        "probe_sent",
        "inflights",
        "is_learner",
    )

    def __init__(
        self,
        next_index: int,
        inflights: Inflights,
        match: int = 0,
        is_learner: bool = False,
        recent_active: bool = False,
    ) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = recent_active
        self.probe_sent = False
        self.inflights = inflights
        self.is_learner = is_learner

    def copy(self) -> Progress:
        """A shallow copy (the in-flight window is shared, as in etcd's confchange)."""
        p = Progress(self.next, self.inflights, self.match, self.is_learner, self.recent_active)
        p.state = self.state
        p.pending_snapshot = self.pending_snapshot
        p.probe_sent = self.probe_sent
        return p

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Fall back to probing from just after what we know the follower has."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """Start streaming entries optimistically."""
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """Wait for a snapshot at `snapshot_index` to be installed."""
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """An ack up to n arrived; True if it moved match forward."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def optimistic_update(self, n: int) -> None:
        """Entries up to n were sent; assume they will arrive."""
        self.next = n + 1

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A MsgApp at `rejected` was refused; back off next. False if the reject is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must hold back MsgApps to this peer."""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            inf = self.inflights
            return len(inf._q) >= inf.size  # inf.full(), without the call: once per send
        return True

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next}"
            f"{' learner' if self.is_learner else ''}"
            f"{f' pending_snap={self.pending_snapshot}' if self.pending_snapshot else ''})"
        )
