"""RawNode: the application's handle on a Raft node, and the Ready batch it hands out.

Contract (docs/raft.md): take `ready()`, persist its snapshot, entries and hard state,
then send its messages, then apply its committed entries, then call `advance()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core import conf_change
from kubekv_raft.core.errors import ProposalDroppedError, StepLocalMsgError, StepPeerNotFoundError
from kubekv_raft.core.raft import LOCAL_MSGS, NONE, RESPONSE_MSGS, Config, Raft, StateType
from kubekv_raft.core.read_only import ReadState

__all__ = ["RawNode", "Ready", "SoftState", "Status"]


# membership changes apply through a Ready only (Raft must see them committed first)
_CONF_CHANGES = frozenset((pb.EntryConfChange, pb.EntryConfChangeV2))


@dataclass(frozen=True)
class SoftState:
    """Volatile state worth reporting: who leads and our role. Never persisted."""

    lead: int
    raft_state: StateType


@dataclass
class Ready:
    """One batch of work for the application. See the module docstring for the order."""

    soft_state: SoftState | None = None  # set when it changed
    hard_state: pb.HardState | None = None  # set when it changed: persist with the entries
    entries: list[pb.Entry] = field(default_factory=list)  # to persist (replace from index on)
    snapshot: pb.Snapshot | None = None  # to install and persist before the entries
    committed_entries: list[pb.Entry] = field(default_factory=list)  # to apply, in order
    messages: list[pb.Message] = field(default_factory=list)  # to send after persisting
    read_states: list[ReadState] = field(default_factory=list)  # reads answerable once applied
    must_sync: bool = False  # whether persisting needs an fsync (term/vote/entries changed)


@dataclass(frozen=True)
class Status:
    """A snapshot of the node's state for monitoring and tests."""

    id: int
    hard_state: pb.HardState
    soft_state: SoftState
    applied: int
    lead_transferee: int
    progress: dict[int, tuple[int, int, str]]  # id -> (match, next, state), leader only
    conf_state: pb.ConfState


def _must_sync(st: pb.HardState, prev: pb.HardState, n_entries: int) -> bool:
    # Term, vote and entries must hit the disk before messages go out; commit may lag.
    return n_entries != 0 or st.vote != prev.vote or st.term != prev.term


class RawNode:
    """Drives a Raft instance: inputs are tick/step/propose, output is Ready."""

    def __init__(self, config: Config) -> None:
        self.raft = Raft(config)
        self._prev_soft = self._soft_state()
        self._prev_hard = self.raft.hard_state()
        self._pending: Ready | None = None

    # -- inputs -------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance logical time by one tick (the application's clock calls this)."""
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (tests, bootstrapping a single node)."""
        self.raft.step(pb.Message(type=pb.MsgHup))

    def propose(self, data: bytes) -> None:
        """Propose one entry; raises ProposalDroppedError if it cannot be accepted."""
        self.propose_batch([data])

    def propose_batch(self, datas: list[bytes]) -> None:
        """Propose many entries in one message (one replication round for all of them)."""
        m = pb.Message(type=pb.MsgProp, from_=self.raft.id)
        for d in datas:
            m.entries.add(data=d)
        self.raft.step(m)

    def propose_conf_change(self, cc: pb.ConfChange | pb.ConfChangeV2) -> None:
        """Propose a membership change; apply it with apply_conf_change once committed."""
        m = pb.Message(type=pb.MsgProp, from_=self.raft.id)
        m.entries.append(conf_change.conf_change_to_entry(cc))
        self.raft.step(m)

    def apply_conf_change(self, cc: pb.ConfChange | pb.ConfChangeV2) -> pb.ConfState:
        """Apply a committed membership change; persist the returned ConfState with snapshots."""
        return self.raft.apply_conf_change(conf_change.to_v2(cc))

    def step(self, m: pb.Message) -> None:
        """Feed a message received from a peer."""
        t = m.type
        if t in LOCAL_MSGS:
            raise StepLocalMsgError(f"cannot step local message {pb.MessageType.Name(t)}")
        r = self.raft
        if t in RESPONSE_MSGS and m.from_ not in r.prs.progress:
            raise StepPeerNotFoundError(f"no progress for peer {m.from_}")
        r.step(m)

    def read_index(self, context: bytes) -> None:
        """Ask for a read index; answered as a ReadState with this context in a later Ready."""
        m = pb.Message(type=pb.MsgReadIndex)
        m.entries.add(data=context)
        self.raft.step(m)

    def transfer_leadership(self, to: int) -> None:
        """Ask the leader to hand leadership to `to` (MsgTimeoutNow once it is caught up)."""
        self.raft.step(pb.Message(type=pb.MsgTransferLeader, from_=to))

    def report_unreachable(self, peer: int) -> None:
        """The transport failed to reach `peer`: stop streaming to it optimistically."""
        self.raft.step(pb.Message(type=pb.MsgUnreachable, from_=peer))

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """Outcome of sending a snapshot to `peer`."""
        self.raft.step(pb.Message(type=pb.MsgSnapStatus, from_=peer, reject=not ok))

    # -- outputs ------------------------------------------------------------------------
    def _soft_state(self) -> SoftState:
        return SoftState(self.raft.lead, self.raft.state)

    def has_ready(self) -> bool:
        """Whether ready() would return anything (the appends the inputs stepped since
        the last Ready made due are built first: `Raft.flush_appends`)."""
        r = self.raft
        if r._appends_due:
            r.flush_appends()
        if r._read_heartbeat_due or r.msgs or r.read_states:
            return True
        rl = r.raft_log
        if rl.unstable.entries or rl.unstable.snapshot is not None or rl.has_next_ents():
            return True
        if r.lead != self._prev_soft.lead or r.state != self._prev_soft.raft_state:
            return True
        p = self._prev_hard
        return r.term != p.term or r.vote != p.vote or rl.committed != p.commit

    def ready(self) -> Ready:
        """The next batch of work. Call advance() after handling it, before the next ready()."""
        if self._pending is not None:
            raise AssertionError("ready() called again before advance()")
        r = self.raft
        if r._appends_due:
            r.flush_appends()
        if r._read_heartbeat_due:
            r.flush_read_heartbeat()
        rl = r.raft_log
        rd = Ready(
            entries=list(rl.unstable.entries),
            committed_entries=rl.next_ents(),
            messages=r.msgs,
        )
        r.msgs = []
        prev = self._prev_soft
        if r.lead != prev.lead or r.state != prev.raft_state:
            rd.soft_state = self._prev_soft = self._soft_state()
        p = self._prev_hard
        if r.term != p.term or r.vote != p.vote or rl.committed != p.commit:
            rd.hard_state = r.hard_state()
            rd.must_sync = _must_sync(rd.hard_state, p, len(rd.entries))
        else:
            rd.must_sync = bool(rd.entries)
        if rl.unstable.snapshot is not None:
            rd.snapshot = rl.unstable.snapshot
        if r.read_states:
            rd.read_states = r.read_states
            r.read_states = []
        self._pending = rd
        return rd

    def advance(self) -> None:
        """The last Ready is persisted, sent and applied."""
        rd = self._pending
        if rd is None:
            raise AssertionError("advance() without ready()")
        self._pending = None
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        applied = rd.committed_entries[-1].index if rd.committed_entries else 0
        if not applied and rd.snapshot is not None:
            applied = rd.snapshot.metadata.index
        last = rd.entries[-1] if rd.entries else None
        self.raft.advance(
            applied,
            last.index if last is not None else 0,
            last.term if last is not None else 0,
            rd.snapshot.metadata.index if rd.snapshot is not None else 0,
            rd.committed_entries,
        )

    def accept_handed(self, hard_state: pb.HardState, entries: list[pb.Entry]) -> None:
        """After `advance()`: the driver wrote `hard_state` (this term and vote, the commit
        its write reached, `commit_on_persist`) together with the last Ready's entries,
        and handed `entries`, which that write committed, to the application itself. The
        next Ready repeats neither, so a lone voter's write is not followed by a Ready
        cycle that only moves the commit index (etcd-io/raft's lone voter likewise keeps
        entries being applied out of the next Ready: `applying`). What moved since (a
        newer term or vote, a commit further on) still comes in a Ready."""
        r = self.raft
        rl = r.raft_log
        if entries and entries[0].index == rl.applied + 1 and entries[-1].index <= rl.committed \
                and not any(e.type in _CONF_CHANGES for e in entries):
            if r.uncommitted_size:
                r.reduce_uncommitted_size(entries)
            rl.applied_to(entries[-1].index)
        if hard_state.term == r.term and hard_state.vote == r.vote \
                and hard_state.commit == rl.committed:
            self._prev_hard = hard_state

    def commit_on_persist(self, rd: Ready) -> int:
        """The commit index Raft reaches by itself once `rd` is durably written: a leader
        counts its own copy when written (`Raft.persisted`), so if that copy completes a
        quorum (a lone voter) `rd`'s entries commit without anyone else's ack. Reads only.

        What `advance()` will commit, at least (acks arriving meanwhile may add more):
        the driver may hand these entries to the application right after the write,
        without a Ready cycle in between (etcd-io/raft's lone voter commits on its
        own MsgStorageAppendResp the same way)."""
        r = self.raft
        committed = r.raft_log.committed
        if r.state != StateType.LEADER or not rd.entries:
            return committed
        last = rd.entries[-1]
        if last.term != r.term:
            return committed
        index = min(r.prs.committed_if(r.id, last.index), last.index)
        if index > committed and r.raft_log.zero_term(index) == r.term:
            return index
        return committed

    # -- introspection --------------------------------------------------------------------
    def status(self) -> Status:
        """Current term, vote, commit, role and (on the leader) every peer's progress."""
        r = self.raft
        prs: dict[int, tuple[int, int, str]] = {}
        if r.state == StateType.LEADER:
            prs = {i: (p.match, p.next, p.state.name) for i, p in r.prs.progress.items()}
        return Status(
            r.id,
            r.hard_state(),
            self._soft_state(),
            r.raft_log.applied,
            r.lead_transferee,
            prs,
            r.prs.conf_state(),
        )

    @property
    def is_leader(self) -> bool:
        """Whether this node currently leads."""
        return self.raft.state == StateType.LEADER

    @property
    def leader(self) -> int:
        """The leader this node knows of (NONE if none)."""
        return self.raft.lead


__all__ += ["NONE", "ProposalDroppedError"]
