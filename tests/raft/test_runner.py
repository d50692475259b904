"""Three Runners in one event loop over an in-process transport."""

from __future__ import annotations

import asyncio

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import ProposalDroppedError
from kubekv_raft.core.raft import Config
from kubekv_raft.core.storage import MemoryStorage
from kubekv_raft.driver.lmdb_storage import LMDBStorage
from kubekv_raft.driver.runner import Runner
from kubekv_testing.polling import wait_for_async


class LocalTransport:
    """Delivers serialized copies on the next loop iteration; `down` peers get nothing."""

    def __init__(self, hub: dict[int, Runner], down: set[int]) -> None:
        self.hub = hub
        self.down = down
        self.owner = 0

    def send(self, messages: list[pb.Message]) -> None:
        loop = asyncio.get_running_loop()
        for m in messages:
            if m.to in self.down or self.owner in self.down:
                continue
            wire = pb.Message.FromString(m.SerializeToString())
            loop.call_soon(self.hub[m.to].step, wire)
            if m.type == pb.MsgSnap:
                loop.call_soon(self.hub[self.owner].report_snapshot, m.to, True)


class ListApplier:
    def __init__(self) -> None:
        self.applied: list[bytes] = []

    def apply(self, entries: list[pb.Entry]) -> None:
        self.applied += [e.data for e in entries if e.type == pb.EntryNormal and e.data]


class AsyncApplier(ListApplier):
    async def apply(self, entries: list[pb.Entry]) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().apply(entries)


def make_cluster(tmp_path):
    hub: dict[int, Runner] = {}
    down: set[int] = set()
    appliers = {}
    for i in (1, 2, 3):
        if i == 1:
            st = LMDBStorage(str(tmp_path / "n1"), map_size=1 << 26)
        else:
            st = MemoryStorage()
        st.set_conf_state(pb.ConfState(voters=[1, 2, 3]))
        t = LocalTransport(hub, down)
        t.owner = i
        appliers[i] = AsyncApplier() if i == 3 else ListApplier()
        cfg = Config(
            id=i, storage=st, election_tick=10, heartbeat_tick=1, pre_vote=True, check_quorum=True
        )
        hub[i] = Runner(cfg, st, t, appliers[i], tick_interval=0.005)
    return hub, appliers, down


async def wait_leader(hub: dict[int, Runner], exclude: set[int] = frozenset()) -> int:
    """The first runner (IDs from 1) that leads, other than `exclude`."""
    return await wait_for_async(
        lambda: next((i for i, r in hub.items() if r.node.is_leader and i not in exclude), 0),
        4.0, "a leader", interval=0.01)


def test_three_runners_batch_proposals_and_reads(tmp_path):
    async def main() -> None:
        hub, appliers, down = make_cluster(tmp_path)
        for r in hub.values():
            await r.start()
        try:
            leader = await wait_leader(hub)
            follower = leader % 3 + 1
            # 200 concurrent proposals, half through a follower (forwarded to the leader).
            futs = [hub[leader if k % 2 else follower].propose(b"req-%03d" % k) for k in range(200)]
            idx = await asyncio.wait_for(asyncio.gather(*futs), 10)
            assert len(set(idx)) == 200
            # Linearizable reads from every member, sharing read-index rounds.
            reads = [hub[i].read_index() for i in (1, 2, 3) for _ in range(5)]
            got = await asyncio.wait_for(asyncio.gather(*reads), 10)
            assert min(got) >= max(idx)
            for _ in range(100):
                if all(len(a.applied) == 200 for a in appliers.values()):
                    break
                await asyncio.sleep(0.01)
            assert appliers[1].applied == appliers[2].applied == appliers[3].applied
            assert sorted(appliers[1].applied) == [b"req-%03d" % k for k in range(200)]
            # Leadership transfer, then the old leader's node fails: a new one takes over.
            target = leader % 3 + 1
            hub[leader].transfer_leadership(target)
            for _ in range(300):
                if hub[target].node.is_leader:
                    break
                await asyncio.sleep(0.01)
            assert hub[target].node.is_leader
            down.add(target)
            new = await wait_leader(hub, exclude={target})
            assert await asyncio.wait_for(hub[new].propose(b"after-failover"), 10) > 0
        finally:
            for r in hub.values():
                await r.stop()
            hub[1].storage.close()

    asyncio.run(main())


def test_proposal_without_leader_is_dropped(tmp_path):
    async def main() -> None:
        st = MemoryStorage()
        st.set_conf_state(pb.ConfState(voters=[1, 2, 3]))
        r = Runner(Config(id=1, storage=st), st, LocalTransport({}, {1}), ListApplier())
        await r.start()
        try:
            fut = r.propose(b"x")
            try:
                await asyncio.wait_for(fut, 2)
            except ProposalDroppedError:
                pass
            else:
                raise AssertionError("proposal without a leader should be dropped")
        finally:
            await r.stop()

    asyncio.run(main())


def test_single_member_commits_alone(tmp_path):
    async def main() -> None:
        st = LMDBStorage(str(tmp_path / "solo"), map_size=1 << 26)
        st.set_conf_state(pb.ConfState(voters=[1]))
        app = ListApplier()
        r = Runner(
            Config(id=1, storage=st), st, LocalTransport({}, set()), app, tick_interval=0.002
        )
        await r.start()
        try:
            for _ in range(200):
                if r.node.is_leader:
                    break
                await asyncio.sleep(0.01)
            got = await asyncio.wait_for(
                asyncio.gather(*(r.propose(b"%d" % k) for k in range(50))), 5
            )
            assert sorted(got) == got and len(got) == 50
            assert await asyncio.wait_for(r.read_index(), 5) >= got[-1]
        finally:
            await r.stop()
            st.close()
        st2 = LMDBStorage(str(tmp_path / "solo"), map_size=1 << 26)
        assert st2.last_index() >= 51 and st2.hard_state().commit >= 51
        st2.close()

    asyncio.run(main())
