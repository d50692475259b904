"""SimCluster: Raft nodes on a virtual clock and a faulty network, replayable from a seed.

Each node is a RawNode over a MemoryStorage that stands for its disk: a crash throws
away the RawNode and the applied state, keeping only what Ready handling persisted.
Writes take virtual time (`disk_ms`), as the Runner's log stage does: a leader sends a
Ready's messages when its write starts, anyone else when it ends; the node keeps
stepping messages and ticks meanwhile; a crash during a write loses it. A leader holds
commit notices back as the Runner does (`commit_notices`, `notice_ms`).
The tester API (one, n_committed, check_one_leader, ...) mirrors MIT 6.5840's harness.
"""

from __future__ import annotations

import heapq
import logging
import marshal
import random
import zlib
from collections.abc import Callable, Iterable

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import ProposalDroppedError, RaftError
from kubekv_raft.core.raft import Config, StateType
from kubekv_raft.core.raw_node import RawNode
from kubekv_raft.core.read_only import ReadOnlyOption
from kubekv_raft.core.storage import MemoryStorage
from kubekv_raft.driver.commit_notices import CommitNotices
from kubekv_raft.sim.checker import SafetyChecker, SafetyViolation
from kubekv_raft.sim.network import SimNetwork

log = logging.getLogger(__name__)

__all__ = ["SimCluster", "SimNode", "SimulationError"]

_TICK, _DELIVER, _CALL, _WRITTEN = 0, 1, 2, 3


class SimulationError(AssertionError):
    """A simulated run failed; the message says how to replay it."""


class SimNode:
    """One member: durable storage, a RawNode (while up) and its applied state machine."""

    def __init__(self, cluster: SimCluster, node_id: int, storage: MemoryStorage) -> None:
        self.cluster = cluster
        self.id = node_id
        self.storage = storage
        self.raw: RawNode = None  # type: ignore[assignment]
        self.up = False
        self.incarnation = 0
        self.applied = 0
        self.chain = 0
        self.values: dict[int, bytes] = {}
        self.conf_state = pb.ConfState()
        self.last_snapshot = 0
        self.writing: object = None  # the Ready whose write is under way
        self.sent_early = False  # its messages left when the write began (a leader's)
        self.notices = CommitNotices(cluster.notice_ms)  # a leader's held commit notices
        self.notices_term = 0
        self.notice_timer = False  # a call to send the due ones is scheduled

    def start(self) -> None:
        """Boot from durable state: the snapshot, then the log replays from there."""
        c = self.cluster
        snap = self.storage.snapshot()
        self.values = {}
        self.applied = self.chain = 0
        self.conf_state = self.storage.conf_state()
        if snap.metadata.index:
            self._load_snapshot(snap)
        self.last_snapshot = self.applied
        self.incarnation += 1
        rng = random.Random(c.seed * 1_000_003 + self.id * 7919 + self.incarnation)
        cfg = Config(
            id=self.id,
            storage=self.storage,
            election_tick=c.election_tick,
            heartbeat_tick=c.heartbeat_tick,
            applied=self.applied,
            pre_vote=c.pre_vote,
            check_quorum=c.check_quorum,
            max_inflight_msgs=c.max_inflight,
            max_size_per_msg=c.max_size_per_msg,
            max_uncommitted_entries_size=c.max_uncommitted,
            read_only_option=c.read_only_option,
            rng=rng,
        )
        self.raw = RawNode(cfg)
        self.writing = None
        self.notices.take_all()  # what it held died with the process
        self.notices_term = 0
        self.notice_timer = False  # one scheduled before the crash ends as a no-op
        self.up = True

    def _load_snapshot(self, snap: pb.Snapshot) -> None:
        index, chain, values = marshal.loads(snap.data)
        self.applied, self.chain = index, chain
        self.values = dict(values)
        self.conf_state = pb.ConfState()
        self.conf_state.CopyFrom(snap.metadata.conf_state)

    def snapshot_data(self) -> bytes:
        """The application state: applied index, prefix hash and recent values."""
        keep = self.cluster.snapshot_keep_values
        vals = {i: v for i, v in self.values.items() if i > self.applied - keep}
        return marshal.dumps((self.applied, self.chain, vals))

    def apply(self, e: pb.Entry) -> None:
        """Apply one committed entry to the state machine."""
        if e.index != self.applied + 1:
            raise SafetyViolation(f"node {self.id} applied {e.index} after {self.applied}")
        if e.type == pb.EntryNormal:
            if e.data:
                self.values[e.index] = e.data
        else:
            cc: pb.ConfChange | pb.ConfChangeV2
            if e.type == pb.EntryConfChange:
                cc = pb.ConfChange.FromString(e.data)
            else:
                cc = pb.ConfChangeV2.FromString(e.data)
            self.conf_state = self.raw.apply_conf_change(cc)
        self.applied = e.index
        self.chain = zlib.crc32(e.index.to_bytes(8, "big") + e.data, self.chain)
        self.cluster.checker.on_apply(self, e, self.chain)

    def maybe_snapshot(self) -> None:
        """Snapshot and compact every `snapshot_interval` applied entries."""
        c = self.cluster
        if not c.snapshot_interval or self.applied - self.last_snapshot < c.snapshot_interval:
            return
        st = self.storage
        st.create_snapshot(self.applied, self.conf_state, self.snapshot_data())
        self.last_snapshot = self.applied
        upto = self.applied - c.compact_lag
        if upto >= st.first_index():
            st.compact(upto)


class SimCluster:
    """n nodes (ids 1..n) with one seed for everything random."""

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        reliable: bool = True,
        pre_vote: bool = True,
        check_quorum: bool = True,
        election_tick: int = 10,
        heartbeat_tick: int = 2,
        tick_ms: int = 10,
        snapshot_interval: int = 0,
        compact_lag: int = 0,
        snapshot_keep_values: int = 1 << 30,
        max_inflight: int = 64,
        max_size_per_msg: int | None = 64 * 1024,
        max_uncommitted: int = 0,
        read_only_option: ReadOnlyOption = ReadOnlyOption.SAFE,
        replay_hint: str = "",
        disk_ms: int = 2,
        notice_ms: int = 5,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = SimNetwork(random.Random(seed ^ 0x5EED))
        self.net.reliable = reliable
        self.checker = SafetyChecker()
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.election_tick = election_tick
        self.heartbeat_tick = heartbeat_tick
        self.tick_ms = tick_ms
        self.snapshot_interval = snapshot_interval
        self.compact_lag = compact_lag
        self.snapshot_keep_values = snapshot_keep_values
        self.max_inflight = max_inflight
        self.max_size_per_msg = max_size_per_msg
        self.max_uncommitted = max_uncommitted
        self.read_only_option = read_only_option
        self.replay_hint = replay_hint
        self.disk_ms = disk_ms  # a write takes 0..disk_ms virtual ms (0: instant)
        self._disk_rng = random.Random(seed ^ 0xD15C)
        self.disk_ms_of: dict[int, int] = {}  # node id -> a fixed write time (a slow disk)
        self.notice_ms = notice_ms  # how long a leader may hold a commit notice
        self.now = 0
        self.events = 0
        self.msgs_sent = 0
        self.app_bytes_sent = 0
        self.trace = 0  # running hash of every event: equal seeds give equal traces
        self._heap: list[tuple[int, int, int, int, object]] = []
        self._seq = 0
        self.read_states: dict[int, list[tuple[int, bytes]]] = {}
        self.nodes: dict[int, SimNode] = {}
        self.bootstrap = pb.ConfState(voters=list(range(1, n + 1)))
        for i in range(1, n + 1):
            self.add_node(i, start=True)

    # -- membership of the simulation -------------------------------------------------
    def add_node(self, node_id: int, start: bool = True) -> SimNode:
        """Create a node with empty storage knowing the bootstrap membership."""
        st = MemoryStorage()
        st.set_conf_state(self.bootstrap)
        node = SimNode(self, node_id, st)
        self.nodes[node_id] = node
        self.net.connect(node_id)
        self.read_states[node_id] = []
        if start:
            self._boot(node)
        return node

    def _boot(self, node: SimNode) -> None:
        node.start()
        self._schedule(self.rng.randint(1, self.tick_ms), _TICK, node.id, node.incarnation)
        self._drain(node)

    # -- faults -------------------------------------------------------------------------
    def crash(self, i: int) -> None:
        """Stop node i, losing everything not persisted (RawNode and applied state)."""
        node = self.nodes[i]
        if not node.up:
            return
        node.up = False
        node.raw = None  # type: ignore[assignment]
        node.writing = None  # a write under way never reaches the disk
        self._note(("crash", i))

    def restart(self, i: int) -> None:
        """Boot node i again from its storage."""
        node = self.nodes[i]
        if node.up:
            self.crash(i)
        self._note(("restart", i))
        self._boot(node)

    def disconnect(self, i: int) -> None:
        """Unplug node i from the network."""
        self.net.disconnect(i)
        self._note(("disconnect", i))

    def connect(self, i: int) -> None:
        """Plug node i back in."""
        self.net.connect(i)
        self._note(("connect", i))

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the network into groups that cannot talk to each other."""
        self.net.partition(groups)
        self._note(("partition", tuple(tuple(g) for g in groups)))

    def heal(self) -> None:
        """Reconnect everybody and remove every block."""
        self.net.heal()
        for i in self.nodes:
            self.net.connect(i)
        self._note(("heal",))

    def set_unreliable(self, unreliable: bool) -> None:
        """Turn message loss, jitter and duplication on or off."""
        self.net.reliable = not unreliable
        self._note(("unreliable", unreliable))

    # -- event loop -----------------------------------------------------------------------
    def _schedule(self, delay: int, kind: int, node_id: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, kind, node_id, payload))

    def call_at(self, t: int, fn: Callable[[], None]) -> None:
        """Run fn at virtual time t (scripted faults)."""
        self._schedule(max(0, t - self.now), _CALL, 0, fn)

    def _note(self, what: tuple) -> None:
        self.trace = zlib.crc32(repr((self.now, what)).encode(), self.trace)

    def _fail(self, e: BaseException) -> SimulationError:
        hint = self.replay_hint or f"SimCluster(..., seed={self.seed})"
        return SimulationError(
            f"{e}\n  at t={self.now}ms after {self.events} events; seed={self.seed}\n"
            f"  replay: {hint}"
        )

    def run_for(self, ms: int) -> None:
        """Advance virtual time by ms."""
        self.run_until(self.now + ms)

    def run_until(self, t_end: int, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to time t_end, or until stop() is true (checked per event)."""
        heap = self._heap
        try:
            while heap and heap[0][0] <= t_end:
                t, _, kind, node_id, payload = heapq.heappop(heap)
                self.now = t
                self.events += 1
                if kind == _TICK:
                    node = self.nodes[node_id]
                    if not node.up or node.incarnation != payload:
                        continue
                    self._schedule(self.tick_ms, _TICK, node_id, payload)
                    node.raw.tick()
                    self._drain(node)
                elif kind == _DELIVER:
                    self._deliver(node_id, payload)  # type: ignore[arg-type]
                elif kind == _WRITTEN:
                    node = self.nodes[node_id]
                    if node.up and node.writing is payload:
                        self._written(node)
                else:
                    payload()  # type: ignore[operator]
                if stop is not None and stop():
                    return True
        except SafetyViolation as e:
            raise self._fail(e) from e
        self.now = max(self.now, t_end)
        return stop is not None and stop()

    def _deliver(self, to: int, m: pb.Message) -> None:
        node = self.nodes.get(to)
        if node is None or not node.up or not self.net.can_pass(m.from_, to):
            return
        self.trace = zlib.crc32(b"%d %d %d %d" % (self.now, m.type, m.from_, to), self.trace)
        try:
            node.raw.step(m)
            if m.type == pb.MsgProp and node.raw.is_leader:
                self._notices(node).proposed(m.from_, node.raw.raft.raft_log.last_index())
        except RaftError:
            pass  # dropped proposal (no leader) or a response from a removed peer
        self._drain(node)

    def _drain(self, node: SimNode) -> None:
        """Handle Readys until one needs a write that takes time; then check invariants."""
        raw = node.raw
        while node.writing is None and raw.has_ready():
            rd = raw.ready()
            lead = raw.is_leader
            if lead:
                hold = not any(e.type in (pb.EntryConfChange, pb.EntryConfChangeV2)
                               for e in rd.committed_entries)
                msgs = self._notices(node).filter(rd.messages, raw.raft.prs.progress,
                                                  self.now, hold)
                for m in msgs:  # the leader replicates while it writes
                    self._send(m)
                if node.notices and not node.notice_timer:
                    self._arm_notices(node)
            node.writing = rd
            node.sent_early = lead
            delay = self.disk_ms_of.get(node.id)
            if delay is None:
                delay = self._disk_rng.randint(0, self.disk_ms) if self.disk_ms else 0
            if delay and (rd.entries or rd.hard_state is not None or rd.snapshot is not None):
                self._schedule(delay, _WRITTEN, node.id, rd)
                break
            self._written(node, drain=False)
        self.checker.check_node(node)

    def _written(self, node: SimNode, drain: bool = True) -> None:
        """The write of node.writing is durable: persist, send the rest, apply, advance."""
        rd = node.writing
        raw = node.raw
        st = node.storage
        chk = self.checker
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
            node._load_snapshot(rd.snapshot)
            node.last_snapshot = node.applied
            chk.on_chain(node, node.applied, node.chain)
        if rd.entries:
            chk.before_persist(node, rd.entries)
        if rd.entries or rd.hard_state is not None:
            st.append(rd.entries, rd.hard_state)
        if not node.sent_early:
            for m in rd.messages:
                self._send(m)
        for rs in rd.read_states:
            self.read_states[node.id].append((rs.index, rs.request_ctx))
        for e in rd.committed_entries:
            node.apply(e)
        raw.advance()
        node.writing = None
        node.maybe_snapshot()
        if drain:
            self._drain(node)

    def _notices(self, node: SimNode) -> CommitNotices:
        """A leader's held commit notices, sent and forgotten when its term changes (as the
        Runner)."""
        term = node.raw.raft.term
        if term != node.notices_term:
            for m in node.notices.take_all():
                self._send(m)
            node.notices_term = term
        return node.notices

    def _arm_notices(self, node: SimNode) -> None:
        when = node.notices.next_due()
        if when is None:
            return
        node.notice_timer = True
        inc = node.incarnation
        self._schedule(max(0, when - self.now), _CALL, 0, lambda: self._notices_due(node, inc))

    def _notices_due(self, node: SimNode, incarnation: int) -> None:
        """Send the commit notices a leader held for their whole delay."""
        if node.incarnation != incarnation:
            return  # crashed since: its restart reset them (and any new timer is its own)
        node.notice_timer = False
        if not node.up:
            return
        for m in node.notices.due(self.now):  # (a deposed leader's too)
            self._send(m)
        self._arm_notices(node)

    def _send(self, m: pb.Message) -> None:
        self.msgs_sent += 1
        if m.type == pb.MsgApp:
            for e in m.entries:
                self.app_bytes_sent += len(e.data)
        delays = self.net.delays(m.from_, m.to)
        for d in delays:
            self._schedule(d, _DELIVER, m.to, m)
        if m.type == pb.MsgSnap:
            # The transport tells Raft how a snapshot transfer ended (etcd's ReportSnapshot);
            # without that a leader would wait on a lost snapshot forever.
            ok = bool(delays)
            sender, to = m.from_, m.to
            self._schedule(
                min(delays) if ok else 1, _CALL, 0, lambda: self._report_snap(sender, to, ok)
            )

    def _report_snap(self, sender: int, to: int, ok: bool) -> None:
        node = self.nodes[sender]
        if node.up:
            node.raw.report_snapshot(to, ok and self.net.can_pass(sender, to) and self.nodes[to].up)
            self._drain(node)

    # -- observation (6.5840-style tester API) ------------------------------------------------
    def up_connected(self) -> list[int]:
        """Ids of nodes that are running and plugged in."""
        return [i for i, n in self.nodes.items() if n.up and i in self.net.connected]

    def leaders(self) -> dict[int, list[int]]:
        """term -> ids of running, connected nodes that believe they lead it."""
        out: dict[int, list[int]] = {}
        for i in self.up_connected():
            r = self.nodes[i].raw.raft
            if r.state == StateType.LEADER:
                out.setdefault(r.term, []).append(i)
        return out

    def leader(self) -> int | None:
        """The leader of the highest term among running, connected nodes."""
        ls = self.leaders()
        return ls[max(ls)][0] if ls else None

    def check_one_leader(self) -> int:
        """Wait for exactly one leader of the latest term; return it."""
        for _ in range(10):
            self.run_for(self.rng.randint(450, 550))
            ls = self.leaders()
            for term, ids in ls.items():
                if len(ids) > 1:
                    raise self._fail(SafetyViolation(f"term {term} has {len(ids)} leaders"))
            if ls:
                return ls[max(ls)][0]
        raise self._fail(AssertionError("expected one leader, got none"))

    def check_no_leader(self) -> None:
        """No running, connected node believes it leads."""
        ls = self.leaders()
        if ls:
            raise self._fail(AssertionError(f"expected no leader, got {ls}"))

    def check_terms(self) -> int:
        """All running, connected nodes agree on the term."""
        terms = {self.nodes[i].raw.raft.term for i in self.up_connected()}
        if len(terms) > 1:
            raise self._fail(AssertionError(f"servers disagree on term: {terms}"))
        return terms.pop()

    def term_of(self, i: int) -> int:
        """Node i's current term."""
        return self.nodes[i].raw.raft.term

    def start(self, i: int, cmd: bytes) -> tuple[int, int, bool]:
        """Propose cmd at node i if it leads: (index, term, is_leader), as 6.5840's Start."""
        node = self.nodes[i]
        if not node.up or node.raw.raft.state != StateType.LEADER:
            return -1, -1, False
        try:
            node.raw.propose(cmd)
        except ProposalDroppedError:
            return -1, -1, False
        r = node.raw.raft
        index, term = r.raft_log.last_index(), r.term
        self._note(("start", i, cmd))
        self._drain(node)
        return index, term, True

    def propose(self, i: int, cmd: bytes) -> bool:
        """Propose at any node (followers forward); False if dropped."""
        node = self.nodes[i]
        if not node.up:
            return False
        try:
            node.raw.propose(cmd)
        except ProposalDroppedError:
            return False
        self._drain(node)
        return True

    def n_committed(self, index: int) -> tuple[int, bytes | None]:
        """How many nodes applied `index`, and the value (they must agree)."""
        count, cmd = 0, None
        for node in self.nodes.values():
            v = node.values.get(index)
            if v is None or node.applied < index:
                continue
            if cmd is not None and v != cmd:
                raise self._fail(SafetyViolation(f"committed values differ at {index}"))
            count, cmd = count + 1, v
        return count, cmd

    def one(self, cmd: bytes, expected: int, retry: bool = True, timeout_ms: int = 10_000) -> int:
        """Get cmd committed on at least `expected` nodes; return its index (6.5840's one())."""
        deadline = self.now + timeout_ms
        starts = 0
        while self.now < deadline:
            index = -1
            ids = sorted(self.nodes)
            for _ in range(len(ids)):
                starts = (starts + 1) % len(ids)
                i = ids[starts]
                if i in self.net.connected and self.nodes[i].up:
                    idx, _, ok = self.start(i, cmd)
                    if ok:
                        index = idx
                        break
            if index != -1:
                t1 = self.now + 2000
                while self.now < t1:
                    n, v = self.n_committed(index)
                    if n >= expected and v == cmd:
                        return index
                    self.run_for(20)
                if not retry:
                    raise self._fail(AssertionError(f"one({cmd!r}) failed to reach agreement"))
            else:
                self.run_for(50)
        raise self._fail(AssertionError(f"one({cmd!r}) failed to reach agreement"))

    def wait(self, index: int, n: int, start_term: int) -> bytes | None:
        """Wait until n nodes applied index; None if the term moved on meanwhile."""
        to = 10
        for _ in range(30):
            c, _ = self.n_committed(index)
            if c >= n:
                break
            self.run_for(to)
            if to < 1000:
                to *= 2
            if start_term > -1:
                for i in self.up_connected():
                    if self.term_of(i) > start_term:
                        return None
        c, cmd = self.n_committed(index)
        if c < n:
            raise self._fail(AssertionError(f"only {c} decided for index {index}; wanted {n}"))
        return cmd

    def converge(self, timeout_ms: int = 20_000) -> int:
        """Heal everything, restart crashed nodes, then commit a final entry on all members.

        Liveness check for randomized runs; returns the final entry's index.
        """
        self.set_unreliable(False)
        self.heal()
        for i, node in self.nodes.items():
            if not node.up:
                self.restart(i)
        self.one(b"converge-%d" % self.seed, 1, timeout_ms=timeout_ms)
        lead = self.check_one_leader()
        cs = self.nodes[lead].raw.raft.prs.conf_state()
        members = set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing)
        return self.one(b"converged-%d" % self.seed, len(members), timeout_ms=timeout_ms)
