"""The Raft state machine: roles, terms, votes and `step`, one message at a time.

A port of etcd-io/raft's raft.go. Pure: no clock (time is `tick()`), no I/O (messages
are queued in `msgs`, entries in the unstable log), randomness only from the source
given in Config. RawNode (raw_node.py) is the application-facing wrapper.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core import conf_change
from kubekv_raft.core.errors import (
    CompactedError,
    ProposalDroppedError,
    SnapshotTemporarilyUnavailableError,
)
from kubekv_raft.core.log import RaftLog
from kubekv_raft.core.progress import ProgressState
from kubekv_raft.core.quorum import VoteResult
from kubekv_raft.core.read_only import ReadOnly, ReadOnlyOption, ReadState
from kubekv_raft.core.tracker import ProgressTracker, TrackerConfig

if TYPE_CHECKING:
    from kubekv_raft.core.progress import Progress
    from kubekv_raft.core.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["NONE", "StateType", "Config", "Raft", "RandomSource", "SplitMix64"]

#: No node: "no leader", "no vote".
NONE = 0

CAMPAIGN_PRE_ELECTION = b"CampaignPreElection"
CAMPAIGN_ELECTION = b"CampaignElection"
CAMPAIGN_TRANSFER = b"CampaignTransfer"

# Message types only the local application may step.
LOCAL_MSGS = frozenset(
    {
        pb.MsgHup,
        pb.MsgBeat,
        pb.MsgUnreachable,
        pb.MsgSnapStatus,
        pb.MsgCheckQuorum,
    }
)
# Message types that answer a request from a peer.
RESPONSE_MSGS = frozenset(
    {
        pb.MsgAppResp,
        pb.MsgVoteResp,
        pb.MsgHeartbeatResp,
        pb.MsgUnreachable,
        pb.MsgPreVoteResp,
    }
)


# An entry's payload: its length is what counts against the uncommitted-entries bound
# (summed with map, in C, rather than a generator resumed per entry).
_DATA = operator.attrgetter("data")


def vote_resp_type(t: int) -> int:
    """The response type for a (pre-)vote request."""
    return pb.MsgVoteResp if t == pb.MsgVote else pb.MsgPreVoteResp


class StateType(IntEnum):
    """A node's role."""

    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


class RandomSource(Protocol):
    """The only randomness the core uses: a seeded integer source."""

    def randrange(self, n: int) -> int:
        """A uniform integer in [0, n)."""
        ...


class SplitMix64:
    """A tiny deterministic PRNG, the default when the application passes none."""

    def __init__(self, seed: int) -> None:
        self._s = seed & 0xFFFFFFFFFFFFFFFF

    def randrange(self, n: int) -> int:
        """A uniform-enough integer in [0, n)."""
        self._s = (self._s + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self._s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return (z ^ (z >> 31)) % n


@dataclass
class Config:
    """Parameters of one Raft node. Time is counted in ticks."""

    id: int
    storage: Storage
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0  # last applied index, when restarting with a state machine ahead of a snapshot
    max_size_per_msg: int | None = 1 << 20  # bytes of entries per MsgApp (at least one entry)
    max_committed_size_per_ready: int | None = None  # bytes of committed entries per Ready
    max_uncommitted_entries_size: int = 0  # bytes of proposals not yet committed; 0 = unbounded
    max_inflight_msgs: int = 256  # MsgApps in flight per follower while replicating
    check_quorum: bool = False  # leader steps down without a quorum for an election timeout
    pre_vote: bool = False  # run a pre-election before bumping the term
    read_only_option: ReadOnlyOption = ReadOnlyOption.SAFE
    disable_proposal_forwarding: bool = False
    rng: RandomSource | None = None  # election timeout jitter; default seeded by id

    def validate(self) -> None:
        """Reject configurations that cannot work."""
        if self.id == NONE:
            raise ValueError("cannot use none as id")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election tick must be greater than heartbeat tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max inflight messages must be greater than 0")
        if self.read_only_option == ReadOnlyOption.LEASE_BASED and not self.check_quorum:
            raise ValueError("CheckQuorum must be enabled when ReadOnlyOption is LEASE_BASED")


class Raft:
    """One node's Raft state. Drive it with `step` and `tick`; collect `msgs`."""

    def __init__(self, c: Config) -> None:
        c.validate()
        self.id = c.id
        self.raft_log = RaftLog(c.storage, c.max_committed_size_per_ready)
        hs, cs = c.storage.initial_state()
        self.term = 0
        self.vote = NONE
        self.read_states: list[ReadState] = []
        self.max_msg_size = c.max_size_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size
        self.prs = ProgressTracker(c.max_inflight_msgs)
        self.state = StateType.FOLLOWER
        self.is_learner = False
        self.msgs: list[pb.Message] = []
        self.lead = NONE
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly(c.read_only_option)
        self.pending_read_index_messages: list[pb.Message] = []
        self._read_heartbeat_due = False
        # leader: peers owed an append by the inputs stepped since the last flush (id ->
        # whether an empty one is due, to carry a new commit index); see `flush_appends`
        self._appends_due: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.heartbeat_timeout = c.heartbeat_tick
        self.election_timeout = c.election_tick
        self.randomized_election_timeout = c.election_tick
        self.disable_proposal_forwarding = c.disable_proposal_forwarding
        self.rng: RandomSource = c.rng if c.rng is not None else SplitMix64(c.id)
        self._tick: Callable[[], None] = self._tick_election
        self._step: Callable[[pb.Message], None] = self._step_follower

        cfg, prs = conf_change.restore(
            conf_change.Changer(self.prs, self.raft_log.last_index()), cs
        )
        self._switch_to_config(cfg, prs)
        if hs != pb.HardState():
            self._load_state(hs)
        if c.applied > 0:
            self.raft_log.applied_to(c.applied)
        self.become_follower(self.term, NONE)
        log.debug(
            "newRaft %x [peers: %s, term: %d, commit: %d, applied: %d, lastindex: %d]",
            self.id,
            self.prs.config,
            self.term,
            self.raft_log.committed,
            self.raft_log.applied,
            self.raft_log.last_index(),
        )

    # -- state snapshots ------------------------------------------------------
    def hard_state(self) -> pb.HardState:
        """What must be durable: term, vote, commit."""
        return pb.HardState(term=self.term, vote=self.vote, commit=self.raft_log.committed)

    def _load_state(self, hs: pb.HardState) -> None:
        if hs.commit < self.raft_log.committed or hs.commit > self.raft_log.last_index():
            raise AssertionError(
                f"{self.id:x} state.commit {hs.commit} is out of range "
                f"[{self.raft_log.committed}, {self.raft_log.last_index()}]"
            )
        self.raft_log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    def promotable(self) -> bool:
        """Whether this node may become leader: a voter without a pending snapshot."""
        pr = self.prs.progress.get(self.id)
        return pr is not None and not pr.is_learner and not self.raft_log.has_pending_snapshot()

    # -- sending ----------------------------------------------------------------
    def send(self, m: pb.Message) -> None:
        """Queue a message, stamping sender and (for non-proposals) the term."""
        m.from_ = self.id
        t = m.type
        if t in (pb.MsgVote, pb.MsgVoteResp, pb.MsgPreVote, pb.MsgPreVoteResp):
            if m.term == 0:
                raise AssertionError(f"term should be set when sending {pb.MessageType.Name(t)}")
        else:
            if m.term != 0:
                raise AssertionError(f"term should not be set when sending {t} (was {m.term})")
            # Proposals and read-index requests are forwarded as local messages.
            if t != pb.MsgProp and t != pb.MsgReadIndex:
                m.term = self.term
        self.msgs.append(m)

    def send_append(self, to: int) -> None:
        """Send entries (or a snapshot) to `to`, even if there are no new entries."""
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send what `to` needs if its progress allows; True if a message was queued."""
        pr = self.prs.progress[to]
        if pr.is_paused():
            return False
        rl = self.raft_log
        last = rl.last_index()
        nxt = pr.next
        if nxt > last and not send_if_empty:
            # Nothing new for `to`: what the look-ups below would conclude (the term of
            # pr.next - 1 >= the compaction point is held, and no entries follow it).
            return False
        m = pb.Message(to=to)
        try:
            term = rl.term(nxt - 1)
            # rl.entries(nxt, max_msg_size), with the last index at hand
            ents = rl.slice(nxt, last + 1, self.max_msg_size, last) if nxt <= last else []
            compacted = False
        except CompactedError:
            compacted = True
        if not compacted and not ents and not send_if_empty:
            return False
        if compacted:
            if not pr.recent_active:
                log.debug("ignore sending snapshot to %x since it is not recently active", to)
                return False
            try:
                snap = rl.snapshot()
            except SnapshotTemporarilyUnavailableError:
                return False
            if snap.metadata.index == 0:
                raise AssertionError("need non-empty snapshot")
            m.type = pb.MsgSnap
            m.snapshot.CopyFrom(snap)
            pr.become_snapshot(snap.metadata.index)
            log.debug(
                "%x sent snapshot [index: %d, term: %d] to %x",
                self.id,
                snap.metadata.index,
                snap.metadata.term,
                to,
            )
        else:
            m.type = pb.MsgApp
            m.index = pr.next - 1
            m.log_term = term
            if ents:
                m.entries.extend(ents)
                if pr.state == ProgressState.REPLICATE:
                    last = ents[-1].index
                    pr.optimistic_update(last)
                    pr.inflights.add(last)
                elif pr.state == ProgressState.PROBE:
                    pr.probe_sent = True
                else:
                    raise AssertionError(f"{self.id:x} is sending append in unhandled state")
            m.commit = rl.committed
        self.send(m)
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        """Heartbeat `to`, with a commit index it is sure to have."""
        commit = min(self.prs.progress[to].match, self.raft_log.committed)
        self.send(pb.Message(to=to, type=pb.MsgHeartbeat, commit=commit, context=ctx))

    def bcast_append(self) -> None:
        """Send new entries to every peer that can take them."""
        for i in sorted(self.prs.progress):
            if i != self.id:
                self.send_append(i)

    def bcast_append_later(self) -> None:
        """`bcast_append`, built when the inputs stepped so far are all in (`flush_appends`)."""
        due = self._appends_due
        me = self.id
        for i in self.prs.progress:
            if i != me:
                due[i] = True

    def flush_appends(self) -> None:
        """Send the appends the inputs stepped since the last flush made due: per peer one
        MsgApp with every entry it lacks and the commit index as it is now (and more while
        flow control allows, if the entries exceed a message), where each proposal, ack
        and commit step would have sent one of its own. RawNode flushes before a Ready
        is built, so nothing leaves later than before; the merged message is the one a
        leader sends when those proposals and acks arrive at once. etcd-io/raft builds an
        append per step; tikv/raft-rs merges them the same way (`batch_append`, its
        issue 18), and etcd-io/raft's DisableEagerAppends (PR 161) proposed it too."""
        due = self._appends_due
        self._appends_due = {}
        if self.state != StateType.LEADER:
            return
        prs = self.prs.progress
        last = self.raft_log.last_index()
        for i in sorted(due):
            pr = prs.get(i)
            if pr is not None and self.maybe_send_append(i, due[i]):
                # more only if a size limit left entries behind (else the call is a no-op)
                while pr.next <= last and self.maybe_send_append(i, False):
                    pass

    def bcast_heartbeat(self) -> None:
        """Heartbeat everyone, carrying the newest pending read's context."""
        self._read_heartbeat_due = False
        self.bcast_heartbeat_with_ctx(self.read_only.last_pending_request_ctx())

    def bcast_heartbeat_with_ctx(self, ctx: bytes) -> None:
        """Heartbeat everyone with a given read context."""
        for i in sorted(self.prs.progress):
            if i != self.id:
                self.send_heartbeat(i, ctx)

    def flush_read_heartbeat(self) -> None:
        """Send the one heartbeat round that confirms every read queued since the last."""
        if self._read_heartbeat_due:
            self.bcast_heartbeat()

    # -- commit, apply ------------------------------------------------------------
    def maybe_commit(self) -> bool:
        """Advance commit to what a quorum holds, if that entry is of our term."""
        return self.raft_log.maybe_commit(self.prs.committed(), self.term)

    def advance(
        self,
        applied: int,
        stable_index: int,
        stable_term: int,
        snap_index: int,
        committed: list[pb.Entry],
    ) -> None:
        """The application handled a Ready: record applied/stable, maybe leave joint config."""
        if self.uncommitted_size:  # 0 on a follower: nothing to reduce
            self.reduce_uncommitted_size(committed)
        if applied > 0:
            old = self.raft_log.applied
            self.raft_log.applied_to(applied)
            if (
                self.prs.config.auto_leave
                and old <= self.pending_conf_index <= applied
                and self.state == StateType.LEADER
            ):
                # The joint config is applied: propose leaving it (an empty ConfChangeV2).
                ent = pb.Entry(type=pb.EntryConfChangeV2)
                if not self.append_entry([ent]):
                    raise AssertionError("refused un-refusable auto-leaving ConfChangeV2")
                self.pending_conf_index = self.raft_log.last_index()
                log.info("%x initiating automatic transition out of joint configuration", self.id)
                self.bcast_append()
        if stable_index:
            self.persisted(stable_index, stable_term)
        if snap_index:
            self.raft_log.stable_snap_to(snap_index)

    def reset(self, term: int) -> None:
        """Start a new term (or role) with fresh timers, votes and progress."""
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.prs.reset_votes()
        last = self.raft_log.last_index()
        for i, pr in self.prs.progress.items():
            pr.match = last if i == self.id else 0
            pr.next = last + 1
            pr.state = ProgressState.PROBE
            pr.pending_snapshot = 0
            pr.recent_active = False
            pr.probe_sent = False
            pr.inflights.reset()
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly(self.read_only.option)
        self.pending_read_index_messages = []
        self._read_heartbeat_due = False
        self._appends_due = {}

    def append_entry(self, es: list[pb.Entry]) -> bool:
        """Leader: stamp term/index on new entries and append them; False if over the bound."""
        li = self.raft_log.last_index()
        term = self.term
        for k, e in enumerate(es):
            e.term = term
            e.index = li + 1 + k
        if not self.increase_uncommitted_size(es):
            log.debug("%x appending new entries would exceed the uncommitted size limit", self.id)
            return False
        self.raft_log.append(es)
        # The leader counts its own new entries only once they are durable (`persisted`),
        # as etcd-io/raft's self-ack after the storage append: an entry commits only when
        # a quorum holds it on disk, so the leader may send it before its own fsync
        # (Raft thesis §10.2.1) without a commit that one power cut could undo.
        return True

    def persisted(self, index: int, term: int) -> None:
        """Entries through (index, term) are durable: no longer unstable, and on the
        leader its own acknowledgement of them (which may commit them)."""
        if not index:
            return
        rl = self.raft_log
        # Whether the log holds (index, term): asked before stable_to, which changes where
        # the entry is read from (unstable, or storage that now holds the same), not the
        # answer; while still unstable it is a list look-up.
        ours = self.state == StateType.LEADER and rl.match_term(index, term)
        rl.stable_to(index, term)
        if not ours:
            return
        pr = self.prs.progress.get(self.id)
        if pr is not None and pr.maybe_update(index) and self.maybe_commit():
            if self.pending_read_index_messages:
                self._release_pending_read_index_messages()
            self.bcast_append_later()

    def increase_uncommitted_size(self, ents: list[pb.Entry]) -> bool:
        """Count proposals against the bound; always admit one batch into an empty log."""
        s = sum(map(len, map(_DATA, ents)))
        if self.max_uncommitted_size and self.uncommitted_size > 0 and s > 0:
            if self.uncommitted_size + s > self.max_uncommitted_size:
                return False
        self.uncommitted_size += s
        return True

    def reduce_uncommitted_size(self, ents: list[pb.Entry]) -> None:
        """Committed entries no longer count against the bound."""
        if self.uncommitted_size == 0:
            return
        s = sum(map(len, map(_DATA, ents)))
        self.uncommitted_size = max(0, self.uncommitted_size - s)

    # -- timers -----------------------------------------------------------------------
    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.past_election_timeout():
            self.election_elapsed = 0
            self.step(pb.Message(from_=self.id, type=pb.MsgHup))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(pb.Message(from_=self.id, type=pb.MsgCheckQuorum))
            if self.state == StateType.LEADER and self.lead_transferee != NONE:
                self.abort_leader_transfer()  # the transfer took longer than an election
        if self.state != StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(pb.Message(from_=self.id, type=pb.MsgBeat))

    def past_election_timeout(self) -> bool:
        """Whether the randomized election timeout has passed."""
        return self.election_elapsed >= self.randomized_election_timeout

    def reset_randomized_election_timeout(self) -> None:
        """Pick a timeout in [election_timeout, 2 * election_timeout)."""
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )

    # -- roles ------------------------------------------------------------------------
    def become_follower(self, term: int, lead: int) -> None:
        """Follow `lead` (or nobody) in `term`."""
        self._step = self._step_follower
        self.reset(term)
        self._tick = self._tick_election
        self.lead = lead
        self.state = StateType.FOLLOWER
        log.debug("%x became follower at term %d", self.id, self.term)

    def become_candidate(self) -> None:
        """Start an election in a new term, voting for ourselves."""
        if self.state == StateType.LEADER:
            raise AssertionError("invalid transition [leader -> candidate]")
        self._step = self._step_candidate
        self.reset(self.term + 1)
        self._tick = self._tick_election
        self.vote = self.id
        self.state = StateType.CANDIDATE
        log.debug("%x became candidate at term %d", self.id, self.term)

    def become_pre_candidate(self) -> None:
        """Ask whether we could win before disturbing anyone's term."""
        if self.state == StateType.LEADER:
            raise AssertionError("invalid transition [leader -> pre-candidate]")
        self._step = self._step_candidate
        self.prs.reset_votes()
        self._tick = self._tick_election
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE
        log.debug("%x became pre-candidate at term %d", self.id, self.term)

    def become_leader(self) -> None:
        """Lead: replicate from our last index and commit an empty entry of our term."""
        if self.state == StateType.FOLLOWER:
            raise AssertionError("invalid transition [follower -> leader]")
        self._step = self._step_leader
        self.reset(self.term)
        self._tick = self._tick_heartbeat
        self.lead = self.id
        self.state = StateType.LEADER
        pr = self.prs.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # Conservatively, a config change may be pending anywhere in the uncommitted log.
        self.pending_conf_index = self.raft_log.last_index()
        empty = pb.Entry()
        if not self.append_entry([empty]):
            raise AssertionError("empty entry was dropped")
        self.reduce_uncommitted_size([empty])
        log.info("%x became leader at term %d", self.id, self.term)

    def hup(self, transfer: bool = False) -> None:
        """Start an election (pre-vote first if enabled; never for a transfer)."""
        if self.state == StateType.LEADER:
            return
        if not self.promotable():
            log.warning("%x is unpromotable and can not campaign", self.id)
            return
        try:
            ents = self.raft_log.slice(self.raft_log.applied + 1, self.raft_log.committed + 1)
        except CompactedError:  # pragma: no cover - applied is never below first index - 1
            ents = []
        if self.raft_log.committed > self.raft_log.applied and any(
            e.type != pb.EntryNormal for e in ents
        ):
            log.warning("%x cannot campaign: pending configuration changes to apply", self.id)
            return
        if transfer:
            self.campaign(CAMPAIGN_TRANSFER)
        elif self.pre_vote:
            self.campaign(CAMPAIGN_PRE_ELECTION)
        else:
            self.campaign(CAMPAIGN_ELECTION)

    def campaign(self, kind: bytes) -> None:
        """Become (pre-)candidate and ask every voter for its vote."""
        if not self.promotable():
            return
        if kind == CAMPAIGN_PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = pb.MsgPreVote
            term = self.term + 1  # the term we would campaign in; ours is unchanged
        else:
            self.become_candidate()
            vote_msg = pb.MsgVote
            term = self.term
        if self.poll(self.id, vote_resp_type(vote_msg), True) == VoteResult.WON:
            # Single-voter cluster: won at once.
            if kind == CAMPAIGN_PRE_ELECTION:
                self.campaign(CAMPAIGN_ELECTION)
            else:
                self.become_leader()
            return
        last_index = self.raft_log.last_index()
        last_term = self.raft_log.last_term()
        ctx = CAMPAIGN_TRANSFER if kind == CAMPAIGN_TRANSFER else b""
        for i in self.prs.voter_nodes():
            if i == self.id:
                continue
            self.send(
                pb.Message(
                    term=term,
                    to=i,
                    type=vote_msg,
                    index=last_index,
                    log_term=last_term,
                    context=ctx,
                )
            )

    def poll(self, peer: int, t: int, granted: bool) -> VoteResult:
        """Record a vote and return the election's result so far."""
        self.prs.record_vote(peer, granted)
        return self.prs.tally_votes()[2]

    # -- step ---------------------------------------------------------------------------
    def step(self, m: pb.Message) -> None:
        """Handle one message; raises ProposalDroppedError for refused proposals."""
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (pb.MsgVote, pb.MsgPreVote):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.election_timeout
                )
                if not force and in_lease:
                    # We heard from a leader within the minimum election timeout: ignore,
                    # so a partitioned node rejoining cannot disrupt a healthy leader.
                    return
            if m.type == pb.MsgPreVote:
                pass  # never change our term in response to a PreVote
            elif m.type == pb.MsgPreVoteResp and not m.reject:
                pass  # a granted pre-vote carries the future term; the election bumps it
            elif m.type in (pb.MsgApp, pb.MsgHeartbeat, pb.MsgSnap):
                self.become_follower(m.term, m.from_)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (pb.MsgHeartbeat, pb.MsgApp):
                # A stale leader (e.g. after a partition heals) learns of the new term, so it
                # steps down instead of being ignored forever while we refuse its appends.
                self.send(pb.Message(to=m.from_, type=pb.MsgAppResp))
            elif m.type == pb.MsgPreVote:
                self.send(
                    pb.Message(to=m.from_, term=self.term, type=pb.MsgPreVoteResp, reject=True)
                )
            return

        t = m.type
        if t == pb.MsgHup:
            self.hup()
        elif t == pb.MsgVote or t == pb.MsgPreVote:
            can_vote = (
                self.vote == m.from_
                or (self.vote == NONE and self.lead == NONE)
                or (t == pb.MsgPreVote and m.term > self.term)
            )
            if can_vote and self.raft_log.is_up_to_date(m.index, m.log_term):
                # Respond in the message's term: for a pre-vote that is a future term.
                self.send(pb.Message(to=m.from_, term=m.term, type=vote_resp_type(t)))
                if t == pb.MsgVote:
                    self.election_elapsed = 0
                    self.vote = m.from_
            else:
                self.send(
                    pb.Message(to=m.from_, term=self.term, type=vote_resp_type(t), reject=True)
                )
        else:
            self._step(m)

    def _step_leader(self, m: pb.Message) -> None:
        t = m.type
        if t == pb.MsgBeat:
            self.bcast_heartbeat()
            return
        if t == pb.MsgCheckQuorum:
            me = self.prs.progress.get(self.id)
            if me is not None:
                me.recent_active = True  # the leader always counts itself as active
            if not self.prs.quorum_active():
                log.info("%x stepped down to follower since quorum is not active", self.id)
                self.become_follower(self.term, NONE)
            for i, pr in self.prs.progress.items():
                if i != self.id:
                    pr.recent_active = False
            return
        if t == pb.MsgProp:
            self._leader_propose(m)
            return
        if t == pb.MsgReadIndex:
            if self.prs.is_singleton():
                self._respond_read_index(m, self.raft_log.committed)
                return
            if not self.committed_entry_in_current_term():
                # Until an entry of our term commits we do not know the true commit index.
                self.pending_read_index_messages.append(m)
                return
            self._send_read_index_response(m)
            return

        pr = self.prs.progress.get(m.from_)
        if pr is None:
            log.debug("%x no progress available for %x", self.id, m.from_)
            return
        if t == pb.MsgAppResp:
            self._handle_app_resp(m, pr)
        elif t == pb.MsgHeartbeatResp:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.raft_log.last_index():
                self.send_append(m.from_)
            if self.read_only.option != ReadOnlyOption.SAFE or not m.context:
                return
            acks = self.read_only.recv_ack(m.from_, m.context)
            if acks is None or self.prs.config.voters.vote_result(acks) != VoteResult.WON:
                return
            for rs in self.read_only.advance(m.context):
                self._respond_read_index(rs.req, rs.index)
        elif t == pb.MsgSnapStatus:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for the follower's MsgAppResp (or a heartbeat) before probing again.
            pr.probe_sent = True
        elif t == pb.MsgUnreachable:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif t == pb.MsgTransferLeader:
            if pr.is_learner:
                log.debug("%x ignored transferring leadership to learner %x", self.id, m.from_)
                return
            transferee = m.from_
            if self.lead_transferee != NONE:
                if self.lead_transferee == transferee:
                    return
                self.abort_leader_transfer()
            if transferee == self.id:
                return
            # The transfer must finish within one election timeout.
            self.election_elapsed = 0
            self.lead_transferee = transferee
            if pr.match == self.raft_log.last_index():
                self.send_timeout_now(transferee)
            else:
                self.send_append(transferee)

    def _leader_propose(self, m: pb.Message) -> None:
        if not m.entries:
            raise AssertionError(f"{self.id:x} stepped empty MsgProp")
        if self.id not in self.prs.progress:
            raise ProposalDroppedError("leader was removed from the configuration")
        if self.lead_transferee != NONE:
            raise ProposalDroppedError("leadership transfer in progress")
        if m.from_ == self.id:
            ents = list(m.entries)
        else:
            # A forwarded proposal may be delivered twice: never stamp the sender's copy.
            ents = [pb.Entry(type=e.type, data=e.data) for e in m.entries]
        for k, e in enumerate(ents):
            if e.type == pb.EntryNormal:
                continue
            if e.type == pb.EntryConfChange:
                cc = conf_change.to_v2(pb.ConfChange.FromString(e.data))
            else:
                cc = pb.ConfChangeV2.FromString(e.data)
            already_pending = self.pending_conf_index > self.raft_log.applied
            already_joint = bool(self.prs.config.voters.outgoing)
            wants_leave = len(cc.changes) == 0
            refused = ""
            if already_pending:
                refused = "possible unapplied conf change"
            elif already_joint and not wants_leave:
                refused = "must transition out of joint config first"
            elif not already_joint and wants_leave:
                refused = "not in joint state; refusing empty conf change"
            if refused:
                log.info("%x ignoring conf change %s: %s", self.id, cc, refused)
                ents[k] = pb.Entry(type=pb.EntryNormal)
            else:
                self.pending_conf_index = self.raft_log.last_index() + k + 1
        if not self.append_entry(ents):
            raise ProposalDroppedError("too many uncommitted entries")
        self.bcast_append_later()

    def _handle_app_resp(self, m: pb.Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            # Fast backtracking: skip every entry of a term the follower cannot match.
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe = self.raft_log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self.send_append(m.from_)
            return
        if pr.match >= m.index and pr.next > m.index:
            return  # a stale or repeated ack (one per MsgApp): maybe_update changes nothing
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self.maybe_commit():
            if self.pending_read_index_messages:
                self._release_pending_read_index_messages()
            self.bcast_append_later()
        elif old_paused:
            self._appends_due[m.from_] = True
        else:
            # Flow control may now allow more (size-limited) messages: sent at the flush,
            # which goes on while the window allows.
            self._appends_due.setdefault(m.from_, False)
        if m.from_ == self.lead_transferee and pr.match == self.raft_log.last_index():
            log.info("%x sent MsgTimeoutNow to %x after it caught up", self.id, m.from_)
            self.send_timeout_now(m.from_)

    def _step_candidate(self, m: pb.Message) -> None:
        my_resp = pb.MsgPreVoteResp if self.state == StateType.PRE_CANDIDATE else pb.MsgVoteResp
        t = m.type
        if t == pb.MsgProp:
            raise ProposalDroppedError("no leader: candidate")
        if t == pb.MsgApp:
            self.become_follower(m.term, m.from_)
            self.handle_append_entries(m)
        elif t == pb.MsgHeartbeat:
            self.become_follower(m.term, m.from_)
            self.handle_heartbeat(m)
        elif t == pb.MsgSnap:
            self.become_follower(m.term, m.from_)
            self.handle_snapshot(m)
        elif t == my_resp:
            res = self.poll(m.from_, t, not m.reject)
            if res == VoteResult.WON:
                if self.state == StateType.PRE_CANDIDATE:
                    self.campaign(CAMPAIGN_ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.LOST:
                # A granted pre-vote's term is ours + 1; on a loss stay in our own term.
                self.become_follower(self.term, NONE)

    def _step_follower(self, m: pb.Message) -> None:
        t = m.type
        if t == pb.MsgProp:
            if self.lead == NONE:
                raise ProposalDroppedError("no leader")
            if self.disable_proposal_forwarding:
                raise ProposalDroppedError("proposal forwarding disabled")
            fwd = pb.Message()
            fwd.CopyFrom(m)
            fwd.to = self.lead
            self.send(fwd)
        elif t == pb.MsgApp:
            self.election_elapsed = 0
            self.lead = m.from_
            self.handle_append_entries(m)
        elif t == pb.MsgHeartbeat:
            self.election_elapsed = 0
            self.lead = m.from_
            self.handle_heartbeat(m)
        elif t == pb.MsgSnap:
            self.election_elapsed = 0
            self.lead = m.from_
            self.handle_snapshot(m)
        elif t == pb.MsgTransferLeader or t == pb.MsgReadIndex:
            if self.lead == NONE:
                log.debug("%x no leader; dropping %s", self.id, pb.MessageType.Name(t))
                return
            fwd = pb.Message()
            fwd.CopyFrom(m)
            fwd.to = self.lead
            fwd.term = 0
            self.send(fwd)
        elif t == pb.MsgTimeoutNow:
            log.info("%x [term %d] received MsgTimeoutNow from %x", self.id, self.term, m.from_)
            # Leadership transfers never use pre-vote: the leader asked us to.
            self.hup(transfer=True)
        elif t == pb.MsgReadIndexResp:
            if len(m.entries) != 1:
                return
            self.read_states.append(ReadState(m.index, m.entries[0].data))

    # -- follower handlers --------------------------------------------------------------
    def handle_append_entries(self, m: pb.Message) -> None:
        """Append a leader's entries if they follow our log; otherwise hint where we differ."""
        rl = self.raft_log
        if m.index < rl.committed:
            self.send(pb.Message(to=m.from_, type=pb.MsgAppResp, index=rl.committed))
            return
        lastnewi = rl.maybe_append(m.index, m.log_term, m.commit, list(m.entries))
        if lastnewi is not None:
            self.send(pb.Message(to=m.from_, type=pb.MsgAppResp, index=lastnewi))
            return
        # Reject with a hint: the last index whose term is <= the leader's term at
        # m.index, so the leader can skip a whole run of conflicting entries at once.
        hint_index = min(m.index, rl.last_index())
        hint_index = rl.find_conflict_by_term(hint_index, m.log_term)
        hint_term = rl.zero_term(hint_index)
        self.send(
            pb.Message(
                to=m.from_,
                type=pb.MsgAppResp,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def handle_heartbeat(self, m: pb.Message) -> None:
        """Raise commit as told and echo the read context."""
        self.raft_log.commit_to(m.commit)
        self.send(pb.Message(to=m.from_, type=pb.MsgHeartbeatResp, context=m.context))

    def handle_snapshot(self, m: pb.Message) -> None:
        """Install a snapshot if it is ahead of us, and tell the leader where we are."""
        s = m.snapshot
        if self.restore(s):
            self.send(pb.Message(to=m.from_, type=pb.MsgAppResp, index=self.raft_log.last_index()))
        else:
            self.send(pb.Message(to=m.from_, type=pb.MsgAppResp, index=self.raft_log.committed))

    def restore(self, s: pb.Snapshot) -> bool:
        """Reset log and membership to a snapshot; False if it brings nothing new."""
        md = s.metadata
        if md.index <= self.raft_log.committed:
            return False
        if self.state != StateType.FOLLOWER:  # pragma: no cover - defense in depth
            log.warning("%x attempted to restore snapshot as leader; should never happen", self.id)
            self.become_follower(self.term + 1, NONE)
            return False
        cs = md.conf_state
        # Unlike etcd we accept a snapshot whose ConfState lacks us: a learner added after
        # the leader's latest snapshot gets that snapshot, and the log after it adds us.
        # (Found by the simulator: seed 100 looped refusing the snapshot forever.)
        if self.raft_log.match_term(md.index, md.term):
            # We have the entry: just fast-forward commit.
            self.raft_log.commit_to(md.index)
            return False
        snap = pb.Snapshot()
        snap.CopyFrom(s)
        self.raft_log.restore(snap)
        self.prs = ProgressTracker(self.prs.max_inflight)
        cfg, prs = conf_change.restore(
            conf_change.Changer(self.prs, self.raft_log.last_index()), cs
        )
        self._switch_to_config(cfg, prs)
        log.info("%x restored snapshot [index: %d, term: %d]", self.id, md.index, md.term)
        return True

    # -- membership ----------------------------------------------------------------------
    def apply_conf_change(self, cc: pb.ConfChangeV2) -> pb.ConfState:
        """Apply a committed membership change; returns the new ConfState."""
        changer = conf_change.Changer(self.prs, self.raft_log.last_index())
        if conf_change.leave_joint(cc):
            cfg, prs = changer.leave_joint()
        else:
            auto_leave, joint = conf_change.enter_joint(cc)
            if joint:
                cfg, prs = changer.enter_joint(auto_leave, list(cc.changes))
            else:
                cfg, prs = changer.simple(list(cc.changes))
        return self._switch_to_config(cfg, prs)

    def _switch_to_config(self, cfg: TrackerConfig, prs: dict[int, Progress]) -> pb.ConfState:
        self.prs.config = cfg
        self.prs.progress = prs
        log.info("%x switched to configuration %s", self.id, cfg)
        cs = self.prs.conf_state()
        pr = prs.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if (pr is None or self.is_learner) and self.state == StateType.LEADER:
            # The leader was removed (or demoted) and the change is committed: hand off
            # to the most caught-up voter and step down, so the cluster need not wait
            # for an election timeout.
            self._step_down_after_removal()
            return cs
        if self.state != StateType.LEADER or not cs.voters:
            return cs
        if self.maybe_commit():
            self.bcast_append()
        else:
            for i in sorted(self.prs.progress):
                if i != self.id:
                    self.maybe_send_append(i, False)
        if self.lead_transferee != NONE and self.lead_transferee not in cfg.voters.ids():
            self.abort_leader_transfer()
        return cs

    def _step_down_after_removal(self) -> None:
        last = self.raft_log.last_index()
        self.bcast_heartbeat()
        self.bcast_append()
        best = [
            i for i in self.prs.voter_nodes() if i != self.id and self.prs.progress[i].match == last
        ]
        if best:
            self.send_timeout_now(best[0])
        log.info("%x removed from the configuration; stepping down", self.id)
        self.become_follower(self.term, NONE)

    # -- leadership transfer and reads -----------------------------------------------------
    def send_timeout_now(self, to: int) -> None:
        """Tell `to` to campaign at once (leadership transfer)."""
        self.flush_appends()  # what the appends owed to `to` carry goes before it
        self.send(pb.Message(to=to, type=pb.MsgTimeoutNow))

    def abort_leader_transfer(self) -> None:
        """Forget any transfer in progress."""
        self.lead_transferee = NONE

    def committed_entry_in_current_term(self) -> bool:
        """Whether an entry of our term is committed (so our commit index is current)."""
        return self.raft_log.zero_term(self.raft_log.committed) == self.term

    def _send_read_index_response(self, m: pb.Message) -> None:
        if self.read_only.option == ReadOnlyOption.SAFE:
            self.read_only.add_request(self.raft_log.committed, m)
            # Our own ack; the heartbeat itself goes out once per Ready (see
            # flush_read_heartbeat), so every read queued meanwhile shares the round.
            self.read_only.recv_ack(self.id, m.entries[0].data)
            self._read_heartbeat_due = True
        else:
            self._respond_read_index(m, self.raft_log.committed)

    def _release_pending_read_index_messages(self) -> None:
        """Answer the reads that waited for an entry of our term to commit (callers call
        this only when some wait)."""
        if not self.committed_entry_in_current_term():  # pragma: no cover - caller ensures
            return
        msgs, self.pending_read_index_messages = self.pending_read_index_messages, []
        for m in msgs:
            self._send_read_index_response(m)

    def _respond_read_index(self, req: pb.Message, index: int) -> None:
        if req.from_ == NONE or req.from_ == self.id:
            self.read_states.append(ReadState(index, req.entries[0].data))
            return
        resp = pb.Message(to=req.from_, type=pb.MsgReadIndexResp, index=index)
        resp.entries.extend(req.entries)
        self.send(resp)
