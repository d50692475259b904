"""Cluster reconfiguration: etcd's MemberAdd, MemberRemove, MemberUpdate and MemberPromote.

Each is checked as etcd checks it (URLs, learner limits, and with
--strict-reconfig-check whether the cluster can afford the change), then proposed
as a ConfChange; the call returns once the change is applied here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from etcdproto.raftpb import raft_pb2
from kubekv_server import errors
from kubekv_server.config.flags import parse_urls
from kubekv_server.member.cluster_ids import member_id
from kubekv_server.member.membership import conf_change
from kubekv_server.member.proposals import REQUEST_TIMEOUT
from kubekv_server.peer.peering import PROBE_INTERVAL, Peering
from kubekv_server.replication.raft_node import RaftNode


class Reconfiguration:
    """Membership changes proposed by one member, with etcd's checks."""

    def __init__(self, member_id: int, node: RaftNode, peering: Peering,
                 members: Callable[[], list[dict]], cluster_token: str, strict: bool) -> None:
        self.member_id = member_id
        self.node = node
        self.peering = peering
        self.members = members
        self.cluster_token = cluster_token  # --initial-cluster-token, seeds new member ids
        self.strict = strict  # --strict-reconfig-check

    def connected_voters(self) -> set[int]:
        """Voters this member can reach now (etcd's transport check before reconfiguring).

        The leader knows who answered it within the last election timeout; a follower
        counts the leader, itself, and every peer its transport has not failed to reach.
        """
        voters = {m["id"] for m in self.members() if not m["isLearner"]}
        if self.node.is_leader():
            return {self.member_id} | (voters & self.node.recently_active())
        started = {self.member_id, self.node.leader_id}
        t = self.peering.transport
        for v in voters - started:
            try:
                st = t.status(v) if t is not None else None
            except KeyError:
                continue
            probed = self.peering.last_probe_ok.get(v)
            if (st is not None and (st.active or st.failures == 0)) or (
                    probed is not None and time.monotonic() - probed < 3 * PROBE_INTERVAL):
                started.add(v)
        return started & voters

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> dict:
        """etcd's MemberAdd: a new member (voter or learner) with an ID from its URLs and time."""
        try:
            urls = parse_urls(",".join(peer_urls))
        except ValueError:
            raise errors.MEMBER_BAD_URLS from None
        if not urls:
            raise errors.MEMBER_BAD_URLS
        for m in self.members():
            if set(m["peerURLs"]) & set(urls):
                raise errors.PEER_URL_EXISTS
        if is_learner and sum(m["isLearner"] for m in self.members()) >= 1:
            raise errors.TOO_MANY_LEARNERS
        if not is_learner and self.strict:
            # etcd's IsReadyToAddVotingMember: "started" members are those that have
            # published their name; a 1-member cluster may always grow to 2.
            voters = [m for m in self.members() if not m["isLearner"]]
            n_members, n_started = len(voters) + 1, sum(1 for m in voters if m["name"])
            if not (n_started == 1 and n_members == 2) and n_started < n_members // 2 + 1:
                raise errors.MEMBER_NOT_ENOUGH_STARTED
            if len(self.connected_voters()) < len(voters):
                raise errors.UNHEALTHY
        new_id = member_id(urls, self.cluster_token, now=int(time.time()))
        if any(m["id"] == new_id for m in self.members()):
            raise errors.MEMBER_EXIST
        member = {"id": new_id, "name": "", "peerURLs": sorted(urls), "clientURLs": [],
                  "isLearner": is_learner}
        kind = raft_pb2.ConfChangeAddLearnerNode if is_learner else raft_pb2.ConfChangeAddNode
        await self._conf_change(kind, new_id, member)
        return member

    async def member_remove(self, mid: int) -> None:
        """etcd's MemberRemove."""
        m = next((m for m in self.members() if m["id"] == mid), None)
        if m is None:
            raise errors.MEMBER_NOT_FOUND
        if self.strict and not m["isLearner"]:
            # etcd's IsReadyToRemoveVotingMember, then: removing an unreachable member is
            # safe; otherwise the reachable rest must still form a quorum.
            rest = [x for x in self.members() if not x["isLearner"] and x["id"] != mid]
            if sum(1 for x in rest if x["name"]) < len(rest) // 2 + 1:
                raise errors.MEMBER_NOT_ENOUGH_STARTED
            connected = self.connected_voters()
            voters = len(rest) + 1
            if mid in connected and len(connected) - 1 < 1 + (voters - 1) // 2:
                raise errors.UNHEALTHY
        await self._conf_change(raft_pb2.ConfChangeRemoveNode, mid, None)

    async def member_update(self, mid: int, peer_urls: list[str]) -> None:
        """etcd's MemberUpdate: new peer URLs for a member."""
        m = next((m for m in self.members() if m["id"] == mid), None)
        if m is None:
            raise errors.MEMBER_NOT_FOUND
        try:
            urls = parse_urls(",".join(peer_urls))
        except ValueError:
            raise errors.MEMBER_BAD_URLS from None
        for other in self.members():
            if other["id"] != mid and set(other["peerURLs"]) & set(urls):
                raise errors.PEER_URL_EXISTS
        await self._conf_change(raft_pb2.ConfChangeUpdateNode, mid, dict(m, peerURLs=urls))

    async def member_promote(self, mid: int) -> None:
        """etcd's MemberPromote: the leader makes a caught-up learner a voter."""
        m = next((m for m in self.members() if m["id"] == mid), None)
        if m is None:
            raise errors.MEMBER_NOT_FOUND
        if not m["isLearner"]:
            raise errors.MEMBER_NOT_LEARNER
        if not self.node.is_leader():
            raise errors.NOT_LEADER
        progress = self.node.progress(mid)
        committed = self.node.commit_index
        # etcd: a learner is ready once its match index is within 90% of the leader's.
        if progress is None or progress.match < committed * 0.9:
            raise errors.LEARNER_NOT_READY
        await self._conf_change(raft_pb2.ConfChangeAddNode, mid, dict(m, isLearner=False))

    async def _conf_change(self, kind: int, node_id: int, member: dict | None) -> None:
        cc = conf_change(kind, node_id, member)
        cc.id = self.node.next_id()
        try:
            await asyncio.wait_for(self.node.propose_conf_change(cc), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            raise errors.TIMEOUT from None
