"""The leader's tracker: current membership, per-peer progress and the votes of an election."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.progress import Progress
from kubekv_raft.core.quorum import JointConfig, VoteResult, quorum_index

__all__ = ["TrackerConfig", "ProgressTracker"]


@dataclass
class TrackerConfig:
    """Membership: voters (possibly joint), learners, and learners waiting for the joint exit."""

    voters: JointConfig = field(default_factory=JointConfig)
    learners: set[int] = field(default_factory=set)
    learners_next: set[int] = field(default_factory=set)
    auto_leave: bool = False

    def copy(self) -> TrackerConfig:
        """An independent copy."""
        return TrackerConfig(
            JointConfig(self.voters.incoming, self.voters.outgoing),
            set(self.learners),
            set(self.learners_next),
            self.auto_leave,
        )

    def __str__(self) -> str:
        s = f"voters={sorted(self.voters.incoming)}"
        if self.voters.outgoing:
            s += f"&&{sorted(self.voters.outgoing)}"
        if self.learners:
            s += f" learners={sorted(self.learners)}"
        if self.learners_next:
            s += f" learners_next={sorted(self.learners_next)}"
        if self.auto_leave:
            s += " autoleave"
        return s


class ProgressTracker:
    """Membership plus the Progress of every member, and votes in the current election."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.config = TrackerConfig()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def conf_state(self) -> pb.ConfState:
        """The membership as a ConfState (sorted ids)."""
        c = self.config
        return pb.ConfState(
            voters=sorted(c.voters.incoming),
            voters_outgoing=sorted(c.voters.outgoing),
            learners=sorted(c.learners),
            learners_next=sorted(c.learners_next),
            auto_leave=c.auto_leave,
        )

    def is_singleton(self) -> bool:
        """One voter and not joint: the leader decides alone."""
        v = self.config.voters
        return len(v.incoming) == 1 and not v.outgoing

    def committed(self) -> int:
        """Largest index replicated on a quorum of every voter config."""
        incoming, outgoing = self.config.voters
        prs = self.progress
        c = quorum_index([pr.match if (pr := prs.get(i)) is not None else 0 for i in incoming])
        if outgoing:
            c = min(c, quorum_index(
                [pr.match if (pr := prs.get(i)) is not None else 0 for i in outgoing]))
        return c

    def committed_if(self, peer: int, match: int) -> int:
        """`committed()` as it would be once `peer` acknowledged through `match`."""
        incoming, outgoing = self.config.voters
        c = quorum_index(self._acked_if(incoming, peer, match))
        if outgoing:
            c = min(c, quorum_index(self._acked_if(outgoing, peer, match)))
        return c

    def _acked_if(self, ids: frozenset[int], peer: int, match: int) -> list[int]:
        prs = self.progress
        out = []
        for i in ids:
            pr = prs.get(i)
            m = pr.match if pr is not None else 0
            out.append(max(m, match) if i == peer else m)
        return out

    def visit(self, f: Callable[[int, Progress], None]) -> None:
        """Call f on every peer, in id order (deterministic)."""
        prs = self.progress
        for i in sorted(prs):
            f(i, prs[i])

    def quorum_active(self) -> bool:
        """Whether a quorum was recently active (for CheckQuorum)."""
        votes = {i: pr.recent_active for i, pr in self.progress.items() if not pr.is_learner}
        return self.config.voters.vote_result(votes) == VoteResult.WON

    def voter_nodes(self) -> list[int]:
        """Sorted voter ids of both sides."""
        return sorted(self.config.voters.ids())

    def learner_nodes(self) -> list[int]:
        """Sorted learner ids."""
        return sorted(self.config.learners)

    def reset_votes(self) -> None:
        """Start a new election."""
        self.votes = {}

    def record_vote(self, i: int, granted: bool) -> None:
        """Remember the first answer of peer i."""
        self.votes.setdefault(i, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """(granted, rejected, result) among current voters."""
        granted = rejected = 0
        for i, pr in self.progress.items():
            if pr.is_learner:
                continue
            v = self.votes.get(i)
            if v is None:
                continue
            if v:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.config.voters.vote_result(self.votes)
