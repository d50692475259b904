"""Quorum arithmetic: majority and joint configurations, commit index and vote results."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum

__all__ = ["VoteResult", "MajorityConfig", "JointConfig", "NO_LIMIT", "quorum_index"]

#: Committed index of an empty configuration: it never holds anything back.
NO_LIMIT = (1 << 64) - 1


def quorum_index(acked: list[int]) -> int:
    """Largest index a majority of one config's voters acknowledged, given each voter's
    acknowledged index (NO_LIMIT when there are none). Reorders `acked`."""
    n = len(acked)
    if n == 0:
        return NO_LIMIT
    if n == 1:
        return acked[0]
    acked.sort(reverse=True)
    return acked[n // 2]


class VoteResult(IntEnum):
    """Outcome of a vote so far."""

    PENDING = 1
    LOST = 2
    WON = 3


class MajorityConfig(frozenset):
    """A set of voter ids deciding by simple majority."""

    def committed_index(self, acked: Callable[[int], int]) -> int:
        """Largest index acknowledged by a majority (NO_LIMIT when empty)."""
        return quorum_index([acked(i) for i in self])

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """WON with a majority of yes, LOST once a majority is out of reach."""
        if not self:
            return VoteResult.WON  # empty config wins, so joint with one side empty works
        yes = missing = 0
        for i in self:
            v = votes.get(i)
            if v is None:
                missing += 1
            elif v:
                yes += 1
        q = len(self) // 2 + 1
        if yes >= q:
            return VoteResult.WON
        if yes + missing >= q:
            return VoteResult.PENDING
        return VoteResult.LOST


class JointConfig(tuple):
    """(incoming, outgoing) majority configs; both must agree. Outgoing is empty unless joint."""

    def __new__(cls, incoming: Iterable[int] = (), outgoing: Iterable[int] = ()) -> JointConfig:
        return tuple.__new__(cls, (MajorityConfig(incoming), MajorityConfig(outgoing)))

    @property
    def incoming(self) -> MajorityConfig:
        """The config being moved to (the only one outside joint consensus)."""
        return self[0]

    @property
    def outgoing(self) -> MajorityConfig:
        """The config being left; empty when not joint."""
        return self[1]

    def ids(self) -> frozenset[int]:
        """Every voter of either side."""
        return self[0] | self[1]

    def committed_index(self, acked: Callable[[int], int]) -> int:
        """Largest index both sides have committed."""
        if not self[1]:
            return self[0].committed_index(acked)
        return min(self[0].committed_index(acked), self[1].committed_index(acked))

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """WON only if both sides win; LOST if either loses."""
        r1 = self[0].vote_result(votes)
        r2 = self[1].vote_result(votes)
        if r1 == r2:
            return r1
        if VoteResult.LOST in (r1, r2):
            return VoteResult.LOST
        return VoteResult.PENDING
