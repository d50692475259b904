"""Raft's safety properties, checked after every simulated event.

Election safety, leader append-only, log matching, leader completeness, state machine
safety, and commit indexes that never go backwards (in memory or on disk).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import CompactedError, UnavailableError
from kubekv_raft.core.raft import StateType

if TYPE_CHECKING:
    from kubekv_raft.sim.cluster import SimNode

__all__ = ["SafetyChecker", "SafetyViolation"]


class SafetyViolation(AssertionError):
    """A Raft safety property does not hold."""


class SafetyChecker:
    """Global knowledge of the run, against which every node is checked incrementally."""

    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}
        self.leader_log: dict[tuple[int, int], tuple[int, int]] = {}
        self.entries: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        self.committed: dict[int, int] = {}  # index -> term, for every committed entry
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.chain: dict[int, int] = {}  # index -> hash of the applied prefix
        self.durable_commit: dict[int, int] = {}
        # (id, incarnation) -> highest in-memory commit checked. A restart may come back
        # below it (a commit index written without an fsync, or not yet, is lost with the
        # crash), but never below the durable one, checked on its own.
        self.seen_commit: dict[tuple[int, int], int] = {}

    def _fail(self, what: str) -> None:
        raise SafetyViolation(what)

    def before_persist(self, node: SimNode, entries: list[pb.Entry]) -> None:
        """Log matching: an (index, term) names one entry, with one predecessor term.

        The predecessor is the entry the write extends on the node's disk, not the one
        in its memory: a node steps messages while a Ready's write is under way, and a
        newer leader's append may already have replaced that entry in memory (the disk
        gets the replacement in a later write; `stable_to` keeps it unstable)."""
        prev_term = None
        for e in entries:
            if prev_term is None:
                prev_term = 0
                if e.index > 1:
                    try:
                        prev_term = node.storage.term(e.index - 1)
                    except (CompactedError, UnavailableError):
                        pass  # nothing on the disk to compare with
            key = (e.index, e.term)
            got = self.entries.get(key)
            if got is None:
                self.entries[key] = (e.data, e.type, prev_term)
            else:
                if got[0] != e.data or got[1] != e.type:
                    self._fail(f"log matching: node {node.id} has a different entry at {key}")
                if got[2] and prev_term and got[2] != prev_term:
                    self._fail(
                        f"log matching: node {node.id} entry {key} follows term {prev_term}, "
                        f"elsewhere {got[2]}"
                    )
                if not got[2] and prev_term:
                    self.entries[key] = (e.data, e.type, prev_term)
            prev_term = e.term

    def on_apply(self, node: SimNode, e: pb.Entry, chain: int) -> None:
        """State machine safety: every node applies the same entry at each index."""
        got = self.applied.setdefault(e.index, (e.term, e.data))
        if got != (e.term, e.data):
            self._fail(
                f"state machine safety: node {node.id} applied {e.term}/{e.data!r} at "
                f"{e.index}, another node applied {got[0]}/{got[1]!r}"
            )
        self.on_chain(node, e.index, chain)

    def on_chain(self, node: SimNode, index: int, chain: int) -> None:
        """The whole applied prefix through `index` is identical everywhere."""
        got = self.chain.setdefault(index, chain)
        if got != chain:
            self._fail(f"state machine safety: node {node.id} applied prefix to {index} differs")

    def check_node(self, node: SimNode) -> None:
        """Every per-node property, incrementally."""
        r = node.raw.raft
        rl = r.raft_log
        hs_commit = node.storage._hard_state.commit
        if hs_commit < self.durable_commit.get(node.id, 0):
            self._fail(f"node {node.id} durable commit went back to {hs_commit}")
        self.durable_commit[node.id] = hs_commit
        c = rl.committed
        key = (node.id, node.incarnation)
        prev = self.seen_commit.get(key, 0)
        if c < prev:
            self._fail(f"node {node.id} commit index decreased {prev} -> {c}")
        if c > prev:
            first = rl.first_index()
            for i in range(max(prev + 1, first), c + 1):
                t = rl.zero_term(i)
                if t and self.committed.setdefault(i, t) != t:
                    self._fail(
                        f"node {node.id} committed term {t} at {i}, "
                        f"but term {self.committed[i]} was committed there"
                    )
            self.seen_commit[key] = c
        if r.state == StateType.LEADER:
            lt = self.leader_of_term.setdefault(r.term, r.id)
            if lt != r.id:
                self._fail(f"election safety: nodes {lt} and {r.id} both lead term {r.term}")
            key = (r.id, r.term)
            last = rl.last_index()
            old = self.leader_log.get(key)
            if old is None:
                # Leader completeness: every committed entry is in the new leader's log.
                first = rl.first_index()
                for i, t in self.committed.items():
                    if i >= first and rl.zero_term(i) != t:
                        self._fail(
                            f"leader completeness: leader {r.id} of term {r.term} lacks "
                            f"committed entry {i} (term {t})"
                        )
            else:
                if last < old[0]:
                    self._fail(f"leader append-only: leader {r.id} log shrank {old[0]} -> {last}")
                t = rl.zero_term(old[0])
                if t and t != old[1]:
                    self._fail(f"leader append-only: leader {r.id} rewrote entry {old[0]}")
            self.leader_log[key] = (last, rl.zero_term(last))
