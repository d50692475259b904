"""Who leads: handing leadership over (MoveLeader, and on stop) and the election-tick
advance that lets a fresh cluster elect quickly."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import grpc

from kubekv_server import errors
from kubekv_server.member.proposals import REQUEST_TIMEOUT
from kubekv_server.peer.peering import Peering
from kubekv_server.replication.raft_node import RaftNode

log = logging.getLogger("kubekv.member")

# etcd's adjustTicks: how long a starting member looks for its peers (rafthttp's
# ConnReadTimeout) and how often
TICK_ADVANCE_WAIT = 5.0
TICK_ADVANCE_POLL = 0.05


class Leadership:
    """Leadership transfer and the startup election-tick advance of one member."""

    def __init__(self, loop: asyncio.AbstractEventLoop, member_id: int, node: RaftNode,
                 peering: Peering, members: Callable[[], list[dict]], election_timeout: float,
                 stopping: threading.Event) -> None:
        self.loop = loop
        self.member_id = member_id
        self.node = node
        self.peering = peering
        self.members = members
        self.election_timeout = election_timeout  # seconds
        self.stopping = stopping

    async def advance_election_ticks(self) -> None:
        """etcd's adjustTicks (--initial-election-tick-advance, on by default): once a
        starting member of a multi-member cluster reaches its peers (etcd: more than one
        active peer within rafthttp's 5 s ConnReadTimeout, polled every 50 ms), it lets
        election-ticks - 2 ticks pass at once, so a fresh cluster elects within a few
        ticks instead of a whole randomised election timeout. Only timing changes: a
        member that campaigns early still needs a quorum's votes (and pre-votes, which
        members that hear from a leader refuse), so Raft's safety is untouched."""
        peers = [m["id"] for m in self.members() if m["id"] != self.member_id]
        channels = []
        try:
            for pid in peers:
                urls = self.peering.peer_urls(pid)
                if urls:
                    channels.append(await self.peering.dial(urls[0]))
            for _ in range(int(TICK_ADVANCE_WAIT / TICK_ADVANCE_POLL)):
                await asyncio.sleep(TICK_ADVANCE_POLL)
                if self.stopping.is_set() or self.node.leader_id != 0:
                    return
                active = sum(ch.get_state(try_to_connect=True)
                             == grpc.ChannelConnectivity.READY for ch in channels)
                if active > 1:
                    ticks = max(0, self.node.election_ticks - 2)
                    log.info('msg="initialized peer connections; fast-forwarding election '
                             'ticks" local-member-id=%x forward-ticks=%d forward-duration=%dms '
                             "election-ticks=%d active-remote-members=%d", self.member_id,
                             ticks, ticks * self.node.heartbeat_ms,
                             self.node.election_ticks, active)
                    self.node.advance_ticks(ticks)
                    return
        finally:
            for ch in channels:
                await ch.close()

    async def transfer_on_stop(self) -> None:
        """Before stopping, a leader hands over to its most up-to-date active voter, so
        the cluster does not wait an election timeout for a new one (etcd's Stop →
        TransferLeadership; a failure only delays the stop, as there)."""
        node = self.node
        if not node.is_leader():
            return
        voters = {m["id"] for m in self.members() if not m["isLearner"]} - {self.member_id}
        if not voters:
            log.info('msg="skipped leadership transfer for single voting member cluster" '
                     "local-member-id=%x", self.member_id)
            return
        t = self.peering.transport

        def connected(v: int) -> bool:  # etcd picks among peers its transport reaches
            try:
                return t is None or t.status(v).active
            except KeyError:
                return False

        recent = node.recently_active()
        progress = {v: p for v in voters if (p := node.progress(v)) is not None}
        active = [v for v in voters if v in progress and v in recent and connected(v)]
        if not active:
            log.warning('msg="leadership transfer failed" local-member-id=%x '
                        'error="etcdserver: unhealthy cluster"', self.member_id)
            return
        transferee = max(active, key=lambda v: progress[v].match)
        started = self.loop.time()
        log.info('msg="leadership transfer starting" local-member-id=%x '
                 "current-leader-member-id=%x transferee-member-id=%x",
                 self.member_id, self.member_id, transferee)
        try:
            # Raft abandons a transfer after an election timeout, so waiting longer than
            # two (etcd waits its whole 7 s request timeout) only delays the stop
            await self.move_leader(transferee, 2 * self.election_timeout)
        except errors.EtcdError as exc:
            log.warning('msg="leadership transfer failed" local-member-id=%x error=%r',
                        self.member_id, exc.message)
            return
        log.info('msg="leadership transfer finished" local-member-id=%x '
                 "old-leader-member-id=%x new-leader-member-id=%x took=%.3fs",
                 self.member_id, self.member_id, transferee, self.loop.time() - started)

    async def move_leader(self, target: int, timeout: float = REQUEST_TIMEOUT) -> None:
        """Maintenance.MoveLeader: only the leader may hand over, to a voter."""
        if not self.node.is_leader():
            raise errors.NOT_LEADER
        voters = {m["id"] for m in self.members() if not m["isLearner"]}
        if target not in voters:
            raise errors.BAD_LEADER_TRANSFEREE
        if target == self.member_id:
            return
        self.node.transfer_leadership(target)
        deadline = self.loop.time() + timeout
        while self.node.leader_id != target:
            if self.loop.time() > deadline:
                raise errors.TIMEOUT_LEADER_TRANSFER
            await asyncio.sleep(0.01)
