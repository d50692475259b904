"""A leader's held commit notices (kubekv_raft/driver/commit_notices.py): the rules alone,
then on three Runners."""

from __future__ import annotations

import asyncio

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.progress import Inflights, Progress, ProgressState
from kubekv_raft.core.raft import Config
from kubekv_raft.core.storage import MemoryStorage
from kubekv_raft.driver.commit_notices import CommitNotices
from kubekv_raft.driver.runner import Runner

from .test_runner import ListApplier, LocalTransport


def replicating(*ids: int, probe: tuple[int, ...] = ()) -> dict[int, Progress]:
    out = {}
    for i in ids + probe:
        p = Progress(10, Inflights(64))
        p.state = ProgressState.PROBE if i in probe else ProgressState.REPLICATE
        out[i] = p
    return out


def notice(to: int, commit: int) -> pb.Message:
    return pb.Message(type=pb.MsgApp, to=to, index=9, log_term=1, commit=commit)


def append(to: int, commit: int) -> pb.Message:
    return pb.Message(type=pb.MsgApp, to=to, index=9, log_term=1, commit=commit,
                      entries=[pb.Entry(index=10, term=1, data=b"x")])


def heartbeat(to: int, commit: int) -> pb.Message:
    return pb.Message(type=pb.MsgHeartbeat, to=to, commit=commit)


def test_a_notice_is_held_until_a_later_message_carries_its_commit():
    n = CommitNotices(delay=5.0)
    prs = replicating(2, 3)
    assert n.filter([notice(2, 7), notice(3, 7)], prs, now=0.0) == []
    assert n and n.next_due() == 5.0
    # an append carries the leader's commit: the notice to 2 is gone, not sent
    assert n.filter([append(2, 7)], prs, now=1.0) == [append(2, 7)]
    # a heartbeat carries it only up to the follower's match: a lower one does not do
    assert n.filter([heartbeat(3, 6)], prs, now=2.0) == [heartbeat(3, 6)]
    assert n.due(4.9) == []
    assert n.due(5.0) == [notice(3, 7)]
    assert not n and n.next_due() is None
    n.filter([notice(3, 8)], prs, now=6.0)
    assert n.filter([heartbeat(3, 8)], prs, now=7.0) == [heartbeat(3, 8)]
    assert not n


def test_the_newest_notice_replaces_the_held_one_but_keeps_its_wait():
    n = CommitNotices(delay=5.0)
    prs = replicating(2)
    n.filter([notice(2, 7)], prs, now=0.0)
    n.filter([notice(2, 8)], prs, now=3.0)
    assert n.next_due() == 5.0  # the first unsent commit has waited since 0
    assert n.due(5.0) == [notice(2, 8)]


def test_probing_followers_and_membership_changes_get_their_notices_at_once():
    n = CommitNotices(delay=5.0)
    prs = replicating(2, probe=(3,))
    assert n.filter([notice(2, 7), notice(3, 7)], prs, now=0.0) == [notice(3, 7)]
    assert n.filter([notice(2, 8)], prs, now=1.0, hold=False) == [notice(2, 8)]
    assert not n  # the newer one sent took the held one's place


def test_a_follower_waiting_for_its_own_proposal_gets_its_notices_until_it_commits():
    n = CommitNotices(delay=5.0)
    prs = replicating(2, 3)
    n.filter([append(2, 4), append(3, 4)], prs, now=0.0)  # both know commit 4
    n.proposed(2, 6)  # 2 forwarded proposals, now the log's entries 5..6
    assert n.filter([notice(2, 5), notice(3, 5)], prs, now=1.0) == [notice(2, 5)]
    assert n.filter([notice(2, 6), notice(3, 6)], prs, now=2.0) == [notice(2, 6)]
    assert n.filter([notice(2, 7)], prs, now=3.0) == []  # 2 knows its entries committed


def test_nothing_overtakes_a_held_notice():
    n = CommitNotices(delay=5.0)
    prs = replicating(2, 3)
    n.filter([notice(2, 7), notice(3, 7)], prs, now=0.0)
    timeout_now = pb.Message(type=pb.MsgTimeoutNow, to=2)
    assert n.filter([timeout_now], prs, now=1.0) == [notice(2, 7), timeout_now]
    assert n.take_all() == [notice(3, 7)]
    assert not n and n.next_due() is None


# -- on three Runners ------------------------------------------------------------------------
SLOW_TICK = 0.05
HEARTBEAT_TICKS = 100  # a heartbeat every 5 s: no heartbeat carries a commit in these tests


def slow_heartbeat_cluster(notice_delay: float):
    hub: dict[int, Runner] = {}
    down: set[int] = set()
    appliers = {}
    for i in (1, 2, 3):
        st = MemoryStorage()
        st.set_conf_state(pb.ConfState(voters=[1, 2, 3]))
        t = LocalTransport(hub, down)
        t.owner = i
        appliers[i] = ListApplier()
        cfg = Config(id=i, storage=st, election_tick=2 * HEARTBEAT_TICKS,
                     heartbeat_tick=HEARTBEAT_TICKS, pre_vote=True, check_quorum=True)
        hub[i] = Runner(cfg, st, t, appliers[i], tick_interval=SLOW_TICK,
                        notice_delay=notice_delay)
    return hub, appliers


async def _started(hub: dict[int, Runner]) -> None:
    for r in hub.values():
        await r.start()
    hub[1].campaign()
    for _ in range(400):
        if hub[1].node.is_leader and hub[1].applied >= 1:  # its first entry committed
            return
        await asyncio.sleep(0.01)
    raise AssertionError("n1 did not become a settled leader")


async def _applied(appliers, ids, data: bytes, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if all(data in appliers[i].applied for i in ids):
            return True
        await asyncio.sleep(0.005)
    return False


def test_followers_learn_a_commit_within_the_notice_delay_when_writes_stop():
    async def main() -> None:
        hub, appliers = slow_heartbeat_cluster(notice_delay=0.3)
        await _started(hub)
        try:
            await asyncio.wait_for(hub[1].propose(b"one"), 5)
            # held: a heartbeat is seconds away and nothing else is sent
            assert not await _applied(appliers, (2, 3), b"one", 0.1)
            assert await _applied(appliers, (2, 3), b"one", 3.0)
        finally:
            for r in hub.values():
                await r.stop()

    asyncio.run(main())


def test_a_follower_that_forwarded_a_proposal_learns_its_commit_at_once():
    async def main() -> None:
        hub, appliers = slow_heartbeat_cluster(notice_delay=60.0)
        await _started(hub)
        try:
            # the follower's client waits for its own apply: no minute-long wait
            await asyncio.wait_for(hub[2].propose(b"from-2"), 3)
            assert b"from-2" in appliers[2].applied
            # the leader's own write: the other follower learns it with the next message
            await asyncio.wait_for(hub[1].propose(b"from-1"), 3)
            assert not await _applied(appliers, (3,), b"from-1", 0.2)
            await asyncio.wait_for(hub[1].propose(b"next"), 3)
            assert await _applied(appliers, (3,), b"from-1", 3.0)
        finally:
            for r in hub.values():
                await r.stop()

    asyncio.run(main())
