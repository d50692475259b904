"""The Runner's pipeline: what may overlap and what must wait (kubekv_raft/driver/runner.py).

Each test holds one stage still with a gate (a threading.Event the storage or applier
waits on in its thread) and checks what the other stage does meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.raft import Config
from kubekv_raft.core.storage import MemoryStorage
from kubekv_raft.driver.lmdb_storage import LMDBStorage
from kubekv_raft.driver.runner import Runner, initial_applied
from kubekv_raft.driver.worker import ThreadWorker
from kubekv_testing.polling import wait_for_async

from .test_runner import LocalTransport, wait_leader

GATE_SECONDS = 10.0  # a gate never stays shut longer (a failing test must not hang)


class GatedStorage(MemoryStorage):
    """MemoryStorage whose appends of entries wait while `gate` is shut (a slow fsync)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()  # an append is held at the gate

    def append(self, entries, hard_state=None) -> None:  # type: ignore[override]
        if entries and not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(GATE_SECONDS)
            self.waiting.clear()
        super().append(entries, hard_state)


class CheckingApplier:
    """Records applied data; fails the test if an entry applies before it is in the log."""

    def __init__(self, storage) -> None:
        self.storage = storage
        self.batches: list[list[bytes]] = []
        self.ahead_of_log: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def apply(self, entries: list[pb.Entry]) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(GATE_SECONDS)
            self.waiting.clear()
        last = self.storage.last_index()
        self.ahead_of_log += [e.index for e in entries if e.index > last]
        self.batches.append([e.data for e in entries if e.type == pb.EntryNormal and e.data])

    @property
    def applied(self) -> list[bytes]:
        return [d for b in self.batches for d in b]


def gated_cluster(applier=None) -> tuple[dict[int, Runner], dict[int, CheckingApplier],
                                         set[int]]:
    """Three runners on GatedStorage, each with an `applier(storage)` (a CheckingApplier
    unless given)."""
    hub: dict[int, Runner] = {}
    down: set[int] = set()
    appliers = {}
    for i in (1, 2, 3):
        st = GatedStorage()
        st.set_conf_state(pb.ConfState(voters=[1, 2, 3]))
        t = LocalTransport(hub, down)
        t.owner = i
        appliers[i] = (applier or CheckingApplier)(st)
        cfg = Config(id=i, storage=st, election_tick=10, heartbeat_tick=1, pre_vote=True,
                     check_quorum=True)
        hub[i] = Runner(cfg, st, t, appliers[i], tick_interval=0.005)
    return hub, appliers, down


@contextlib.asynccontextmanager
async def running_gated_cluster():
    """Three started runners with a leader and one entry committed; every gate opened and
    every runner stopped at the end."""
    hub, appliers, down = gated_cluster()
    for r in hub.values():
        await r.start()
    try:
        lead = await wait_leader(hub)
        f1, f2 = (i for i in hub if i != lead)
        await hub[lead].propose(b"warm")
        yield hub, appliers, down, lead, f1, f2
    finally:
        for st in (r.storage for r in hub.values()):
            st.gate.set()
        for r in hub.values():
            await r.stop()


async def wait_thread_event(ev: threading.Event, what: str) -> None:
    await wait_for_async(ev.is_set, 4.0, what, interval=0.005)


async def propose_while_the_apply_thread_is_busy(r: Runner, applier) -> None:
    """Propose b"busy" while the apply thread is held by a gate: it must not apply (or
    answer) until the gate opens, then it does."""
    gate = threading.Event()
    try:
        r.apply_executor.post(gate.wait, GATE_SECONDS)
        busy = r.propose(b"busy")
        await asyncio.sleep(0.1)
        assert b"busy" not in applier.applied and not busy.done()
    finally:
        gate.set()
    await asyncio.wait_for(busy, 4.0)


def test_leader_replicates_before_its_fsync_but_counts_itself_only_after():
    async def main() -> None:
        async with running_gated_cluster() as (hub, appliers, down, lead, f1, f2):
            down.add(f2)  # a quorum is now the leader and f1: both copies must be durable
            st = hub[lead].storage
            st.gate.clear()  # the leader's own write hangs
            fut = hub[lead].propose(b"x")
            await wait_thread_event(st.waiting, "the leader's write to start")
            index = st.last_index() + 1  # "x" is held at the gate: not in the leader's log
            # the append went out before the leader's own write finished, and f1 holds it
            await wait_for_async(lambda: hub[f1].storage.last_index() >= index, 4.0,
                                 "f1 to persist the entry")
            await wait_for_async(  # f1's ack has reached the leader (its inbox)
                lambda: any(m.type == pb.MsgAppResp and m.from_ == f1 and m.index >= index
                            for m in hub[lead]._inbox), 4.0, "f1's ack at the leader")
            assert hub[lead].node.raft.raft_log.committed < index, \
                "committed with only one durable copy (the leader counted its unwritten one)"
            assert not fut.done()
            st.gate.set()
            assert await asyncio.wait_for(fut, 4.0) == index
            for a in appliers.values():
                assert not a.ahead_of_log

    asyncio.run(main())


def test_follower_applies_nothing_it_has_not_written():
    async def main() -> None:
        async with running_gated_cluster() as (hub, appliers, down, lead, f1, f2):
            down.add(f2)  # the leader and f1 commit y without f2
            y = await hub[lead].propose(b"y")
            slow = hub[f2].storage
            slow.gate.clear()  # f2's disk hangs
            down.discard(f2)  # f2 receives y already committed: one Ready to write and apply
            await wait_thread_event(slow.waiting, "f2's write to start")
            assert hub[f2].node.raft.raft_log.committed >= y  # the case under test
            assert b"y" not in appliers[f2].applied
            slow.gate.set()
            await wait_for_async(lambda: b"y" in appliers[f2].applied, 4.0, "f2 to apply y")
            for a in appliers.values():  # recorded at apply time, whenever that was
                assert not a.ahead_of_log, a.ahead_of_log

    asyncio.run(main())


async def lone_voter(st, applier) -> Runner:
    """A started one-member Runner on `st`, leader, with b"a" applied."""
    r = Runner(Config(id=1, storage=st, election_tick=10, heartbeat_tick=1), st,
               LocalTransport({}, set()), applier, tick_interval=0.005)
    await r.start()
    r.campaign()
    await r.propose(b"a")
    return r


def lone_voter_on_a_log_thread(applier_class, tick_interval: float = 0.005):
    """(storage, applier, log thread, runner): a one-member Runner on GatedStorage whose
    log stage runs on a ThreadWorker named "log", as the server runs it; not started."""
    st = GatedStorage()
    st.set_conf_state(pb.ConfState(voters=[1]))
    applier = applier_class(st)
    log_thread = ThreadWorker("log")
    r = Runner(Config(id=1, storage=st, election_tick=10, heartbeat_tick=1), st,
               LocalTransport({}, set()), applier, tick_interval=tick_interval,
               executor=log_thread)
    return st, applier, log_thread, r


def test_persisting_goes_on_while_applying_and_applies_several_readys_at_once(tmp_path):
    async def main() -> None:
        st = LMDBStorage(str(tmp_path / "log"), map_size=1 << 26)
        st.set_conf_state(pb.ConfState(voters=[1]))
        applier = CheckingApplier(st)
        r = await lone_voter(st, applier)
        try:
            applier.gate.clear()  # the apply stage hangs on "b"
            fb = r.propose(b"b")
            await wait_thread_event(applier.waiting, "b's apply to start")
            last = st.last_index()
            later = []
            for k in range(3):  # one Ready each: the next is proposed once this one is durable
                later.append(r.propose(b"c%d" % k))
                # the log stage goes on: c_k is durable while b is still being applied
                await wait_for_async(lambda n=last + k + 1: st.last_index() >= n, 4.0,
                                     f"c{k} persisted")
            assert not fb.done() and not any(f.done() for f in later)
            applier.gate.set()
            await asyncio.wait_for(asyncio.gather(fb, *later), 4.0)
            assert applier.applied == [b"a", b"b", b"c0", b"c1", b"c2"]
            # the Readys committed while "b" was applied went through as one batch
            assert [b"c0", b"c1", b"c2"] in applier.batches
            assert not applier.ahead_of_log
        finally:
            applier.gate.set()
            await r.stop()
            st.close()

    asyncio.run(main())


def test_a_lone_voters_write_carries_its_commit_and_restart_copes_with_a_lagging_one(tmp_path):
    async def main() -> None:
        st = LMDBStorage(str(tmp_path / "log"), map_size=1 << 26)
        st.set_conf_state(pb.ConfState(voters=[1]))
        applier = CheckingApplier(st)
        r = Runner(Config(id=1, storage=st, election_tick=10, heartbeat_tick=1), st,
                   LocalTransport({}, set()), applier, tick_interval=3600)  # no idle tick
        await r.start()
        r.campaign()
        index = await r.propose(b"a")
        # the write of "a" commits it (a lone voter) and carries that commit in its hard
        # state: no later Ready has to record it, and Raft took it as written
        assert st.hard_state().commit == index
        assert r._unsaved_hard_state is None and not r.node.has_ready()
        assert r.node.raft.raft_log.applied == index
        await r.stop()
        # a crash before a commit-only hard state was written (a follower's, or a
        # leader's whose commit came from acks: not fsynced, etcd's MustSync) leaves the
        # log's commit behind what the state applied
        hs = st.hard_state()
        st.set_hard_state(pb.HardState(term=hs.term, vote=hs.vote, commit=index - 1))
        st.close()

        st = LMDBStorage(str(tmp_path / "log"), map_size=1 << 26)
        hs = st.hard_state()
        applied = initial_applied(index, hs)  # the state applied "a"; the log's commit lags
        assert applied == hs.commit < index
        applier = CheckingApplier(st)
        r = Runner(Config(id=1, storage=st, election_tick=10, heartbeat_tick=1,
                          applied=applied), st, LocalTransport({}, set()), applier,
                   tick_interval=0.005)
        await r.start()
        try:
            r.campaign()
            index_b = await r.propose(b"b")
            # Raft re-learned the commit and handed "a" out again; an application skips it
            # by its own applied index (as kubekv's Applier does)
            assert applier.applied == [b"a", b"b"]
            # "b" applied straight from the write that committed it (a lone voter); the
            # advance that takes that commit into Raft may still be under way: let it end
            await wait_for_async(lambda: r.node.raft.raft_log.committed >= index_b, 4.0,
                                 "the advance that records b's commit", interval=0.001)
        finally:
            await r.stop()
        assert st.hard_state().commit == st.last_index()  # written with b's write
        st.close()

    asyncio.run(main())


def test_compaction_raises_a_lagging_commit_index(tmp_path):
    st = LMDBStorage(str(tmp_path / "log"), map_size=1 << 26)
    st.append([pb.Entry(index=i, term=1) for i in range(1, 6)], pb.HardState(term=1, commit=2))
    st.compact(4)
    assert st.hard_state().commit == 4  # everything compacted was committed and applied
    st.compact(5)
    assert st.hard_state() == pb.HardState(term=1, commit=5)
    st.close()


def test_a_lone_voters_write_hands_its_entries_to_the_apply_stage_directly():
    """One member: the write of "x" commits it (the lone voter's copy is the quorum), and
    the log thread hands it to the apply stage itself. The loop is held still from
    before the write completes until "x" is applied: had the hand-over needed a loop
    cycle (advance, the next Ready), "x" could not apply meanwhile."""
    async def main() -> None:
        st = GatedStorage()
        st.set_conf_state(pb.ConfState(voters=[1]))
        applier = CheckingApplier(st)
        applied_x = threading.Event()
        plain_apply = applier.apply

        def apply(entries: list[pb.Entry]) -> None:
            plain_apply(entries)
            if any(e.data == b"x" for e in entries):
                applied_x.set()

        applier.apply = apply  # type: ignore[method-assign]
        r = Runner(Config(id=1, storage=st, election_tick=10, heartbeat_tick=1), st,
                   LocalTransport({}, set()), applier, tick_interval=0.005)
        await r.start()
        try:
            r.campaign()
            await r.propose(b"a")
            st.gate.clear()
            fx = r.propose(b"x")
            await wait_thread_event(st.waiting, "x's write to start")
            index = st.last_index() + 1
            st.gate.set()
            # the loop stays here (a blocking wait, deliberately) until "x" is applied
            assert applied_x.wait(GATE_SECONDS), "x waited for the loop to be applied"
            assert r.node.raft.raft_log.committed < index  # Raft has not advanced yet
            assert await asyncio.wait_for(fx, 4.0) == index
            assert not applier.ahead_of_log
            assert applier.applied == [b"a", b"x"]
        finally:
            st.gate.set()
            await r.stop()

    asyncio.run(main())


def test_the_log_thread_applies_a_write_it_committed_when_nothing_else_waits():
    """One member, a plain applier, the log stage on a ThreadWorker (as the server runs
    it): a write with no input waiting for the loop is applied on the log thread, in the
    idle apply thread's stead. A write with input waiting, or with the apply thread
    busy, goes to the apply thread. Every entry applies once, in order, never ahead of
    the log."""
    async def main() -> None:
        st, applier, log_thread, r = lone_voter_on_a_log_thread(InlineApplier, 60.0)
        applier.decline = True  # the loop's own inline apply stays out of the way
        apply_thread = r.apply_executor._thread.name
        await r.start()
        try:
            r.campaign()
            await r.propose(b"a")
            await r.propose(b"alone")
            assert applier.threads[-1] == ("log", [b"alone"])
            # input waits while x is written (y's proposal): x goes to the apply thread
            st.gate.clear()
            fx = r.propose(b"x")
            await wait_thread_event(st.waiting, "x's write to start")
            fy = r.propose(b"y")
            st.gate.set()
            await asyncio.wait_for(asyncio.gather(fx, fy), 4.0)
            # (y's write may end before the apply thread starts: one batch then)
            assert any(name == apply_thread and b"x" in batch
                       for name, batch in applier.threads), applier.threads
            # the apply thread busy: the log thread hands the batch to it, applied after
            await propose_while_the_apply_thread_is_busy(r, applier)
            assert applier.threads[-1] == (apply_thread, [b"busy"])
            assert applier.applied == [b"a", b"alone", b"x", b"y", b"busy"]
            assert not applier.ahead_of_log
        finally:
            st.gate.set()
            await r.stop()
            log_thread.shutdown()

    asyncio.run(main())


def test_a_failure_of_the_log_threads_own_apply_stops_the_runner_loudly():
    """A failure while the log thread starts its own apply reaches the loop, which
    awaits the write's answer: the Ready loop ends with it instead of waiting forever."""
    async def main() -> None:
        _st, _applier, log_thread, r = lone_voter_on_a_log_thread(CheckingApplier, 60.0)
        await r.start()
        try:
            r.campaign()
            await r.propose(b"a")
            boom = RuntimeError("the apply could not start")

            def fail() -> None:
                raise boom

            r._apply_batch = fail  # type: ignore[method-assign]
            r.propose(b"x")
            loop_task = r._tasks[1]
            await asyncio.wait_for(asyncio.wait([loop_task]), 4.0)
            assert loop_task.exception() is boom
        finally:
            await r.stop()
            log_thread.shutdown()

    asyncio.run(main())


def test_a_failed_log_write_stops_the_runner_and_tells_its_owner():
    """A write the log cannot make durable (EIO from the fsync) ends the Ready loop, and
    `on_failure` hands the error to the runner's owner once, which must stop too (the
    server exits, as etcd's lg.Fatal): nothing is answered or applied after it."""
    async def main() -> None:
        st, applier, log_thread, r = lone_voter_on_a_log_thread(CheckingApplier, 60.0)
        failures: list[BaseException] = []
        r.on_failure = failures.append
        await r.start()
        try:
            r.campaign()
            await r.propose(b"a")
            applied = len(applier.applied)
            eio = OSError(5, "Input/output error")

            def append(entries, hard_state=None) -> None:
                raise eio

            st.append = append  # type: ignore[method-assign]
            proposal = r.propose(b"x")
            loop_task = r._tasks[1]
            await asyncio.wait_for(asyncio.wait([loop_task]), 4.0)
            assert loop_task.exception() is eio
            assert failures == [eio]
            assert not proposal.done() and len(applier.applied) == applied
        finally:
            await r.stop()
            log_thread.shutdown()

    asyncio.run(main())


def test_the_loop_hands_over_behind_what_the_log_thread_still_owes():
    """A hand-over the log thread owes (a commit record's, an early write's) comes first:
    the loop's own goes through the log thread while one is owed, not ahead of it. (A
    3-member leader under load once handed later entries first and stopped.)"""
    async def main() -> None:
        st, applier, log_thread, r = lone_voter_on_a_log_thread(CheckingApplier)
        await r.start()
        gate = threading.Event()
        try:
            r.campaign()
            await r.propose(b"a")
            n, term = st.last_index(), st.term(st.last_index())
            owed = [pb.Entry(index=n + 1, term=term, data=b"b"),
                    pb.Entry(index=n + 2, term=term, data=b"c")]
            mine = [pb.Entry(index=n + 3, term=term, data=b"d")]
            st.append(owed + mine)  # durable: the applier checks nothing runs ahead
            log_thread.post(gate.wait, GATE_SECONDS)  # the log thread is busy meanwhile
            r._log_hands_posted += 1
            log_thread.post(r._hand_from_log_thread, owed)
            r._hand_in_order(mine)  # the loop's: must not overtake the owed one
            await asyncio.sleep(0.05)
            assert applier.applied == [b"a"]
            gate.set()
            await wait_for_async(lambda: applier.applied == [b"a", b"b", b"c", b"d"], 4.0,
                                 "both hand-overs to apply, in order")
        finally:
            gate.set()
            await r.stop()
            log_thread.shutdown()

    asyncio.run(main())


class InlineApplier(CheckingApplier):
    """A CheckingApplier that also applies on the loop when the Runner offers it
    (`apply_inline`), recording which thread applied each batch; `decline` refuses."""

    def __init__(self, storage) -> None:
        super().__init__(storage)
        self.decline = False
        self.threads: list[tuple[str, list[bytes]]] = []

    def apply(self, entries: list[pb.Entry]) -> None:
        super().apply(entries)
        self.threads.append((threading.current_thread().name, self.batches[-1]))

    def apply_inline(self, entries: list[pb.Entry]) -> str | None:
        if self.decline:
            return None
        self.apply(entries)
        return "inline"


def test_small_batches_apply_on_the_loop_while_the_apply_thread_is_idle():
    """Entries committed by a Ready with nothing to write (the leader's quorum of acks,
    a follower's commit notice) are applied on the loop when the apply thread is idle,
    in log order and never ahead of the log; while it is busy, or when the applier
    declines, they go to the apply thread as before."""
    async def main() -> None:
        hub, appliers, _down = gated_cluster(InlineApplier)
        for r in hub.values():
            await r.start()
        loop_thread = threading.current_thread().name
        try:
            lead = await wait_leader(hub)
            r, a = hub[lead], appliers[lead]
            for n in range(10):
                await r.propose(b"p%d" % n)
            on_loop = [d for name, b in a.threads if name == loop_thread for d in b]
            assert on_loop, "no batch was applied on the leader's loop"
            # the apply thread busy: the loop hands the entries over, applied after it
            await propose_while_the_apply_thread_is_busy(r, a)
            assert (r.apply_executor._thread.name, [b"busy"]) in a.threads
            a.decline = True
            await r.propose(b"declined")
            assert a.threads[-1][0] != loop_thread
            expected = [b"p%d" % n for n in range(10)] + [b"busy", b"declined"]
            for ap in appliers.values():
                await wait_for_async(lambda ap=ap: ap.applied[-len(expected):] == expected, 4.0,
                                     "every member to apply everything, in order")
                assert not ap.ahead_of_log
                assert len(ap.applied) == len(set(ap.applied))  # each entry once
        finally:
            for r in hub.values():
                await r.stop()

    asyncio.run(main())


def test_the_loop_applies_nothing_ahead_of_a_batch_whose_result_is_on_its_way():
    """The apply thread applied a batch and posted its result to the loop, and is idle:
    the loop must not apply the next entries itself before that result is delivered,
    or the listeners (the watch hub) would learn of the later batch first."""
    async def main() -> None:
        st = GatedStorage()
        st.set_conf_state(pb.ConfState(voters=[1]))
        applier = InlineApplier(st)
        delivered: list[int] = []
        applier.on_applied = lambda ents, result: delivered.extend(e.index for e in ents)
        r = await lone_voter(st, applier)
        try:
            n, term = st.last_index(), st.term(st.last_index())
            b = pb.Entry(index=n + 1, term=term, data=b"b")
            c = pb.Entry(index=n + 2, term=term, data=b"c")
            st.append([b, c])  # durable: the applier checks nothing runs ahead
            r._hand_to_apply([b])
            # the loop held still (a blocking wait, deliberately) until the apply thread
            # is done with b and idle: b's result waits in the loop's queue
            deadline = time.monotonic() + GATE_SECONDS
            while r.apply_executor._unfinished and time.monotonic() < deadline:
                time.sleep(0.001)
            assert applier.applied[-1] == b"b" and n + 1 not in delivered
            assert not r._apply_inline([c])
            r._hand_to_apply([c])
            await wait_for_async(lambda: delivered[-2:] == [n + 1, n + 2], 4.0,
                                 "b's and c's results, in order")
            assert delivered == sorted(delivered)
        finally:
            await r.stop()

    asyncio.run(main())
