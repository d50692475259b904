"""Lease calls only the leader can answer: keep-alive and time-to-live (etcd's leasehttp).

Only the leader's lessor runs deadlines, so etcd's LeaseRenew and LeaseTimeToLive
are answered by the leader: a follower forwards them over the peer port (etcd
uses its peer HTTP API; kubekv a LeasePeer gRPC service next to RaftPeer) and
retries every 50 ms until the request timeout while there is no leader, the
leader is unreachable or not yet promoted. The leader first waits until it has
applied what is committed (etcd's waitAppliedIndex), so a lease granted just
before an election is never reported missing by the new leader.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import leasepeer_pb2 as lp
from etcdproto.kubekvpb import leasepeer_pb2_grpc as lp_grpc
from kubekv_server import errors

log = logging.getLogger("kubekv.lease")

# etcd's applyTimeout for waitAppliedIndex
APPLY_WAIT = 1.0
# etcd's pause between forwarding attempts
RETRY_PAUSE = 0.05


# ----------------------------------------------------------------- leader side


def _wait_applied(member, timeout: float = APPLY_WAIT) -> bool:
    """Worker thread: until this member applied everything committed (etcd's
    waitAppliedIndex); False on timeout."""
    node = member.node
    deadline = time.monotonic() + timeout
    while node.applied_index < node.commit_index:
        if time.monotonic() > deadline or member.stopping.wait(0.002):
            return False
    return True


def leader_renew(member, lease_id: int) -> lp.LeaseRenewResponse:
    """Worker thread, on the leader: renew in the lessor (etcd's lessor.Renew)."""
    if not member.is_leader() or not _wait_applied(member):
        return lp.LeaseRenewResponse(status=lp.LEASE_NOT_PRIMARY)
    try:
        ttl = member.lessor.renew(lease_id, wait=member.request_timeout)
    except errors.EtcdError as exc:
        if exc is errors.LEASE_NOT_FOUND:
            return lp.LeaseRenewResponse(status=lp.LEASE_NOT_FOUND)
        return lp.LeaseRenewResponse(status=lp.LEASE_NOT_PRIMARY)
    if member.lessor.clears_checkpoint(lease_id):
        member.checkpoint_leases([(lease_id, 0)])
    return lp.LeaseRenewResponse(status=lp.LEASE_OK, ttl=ttl)


def leader_time_to_live(member, lease_id: int, keys: bool) -> lp.LeaseTimeToLiveResponse:
    """Worker thread, on the leader: the lessor's remaining TTL (etcd's Lookup)."""
    if not member.is_leader() or not _wait_applied(member) or not member.lessor.primary:
        return lp.LeaseTimeToLiveResponse(status=lp.LEASE_NOT_PRIMARY)
    found = member.lessor.lookup(lease_id)
    if found is None:
        return lp.LeaseTimeToLiveResponse(status=lp.LEASE_NOT_FOUND)
    granted, remaining = found
    # etcd: int64(Remaining().Seconds()), truncated toward zero
    ttl = granted if math.isinf(remaining) else int(remaining)
    resp = lp.LeaseTimeToLiveResponse(status=lp.LEASE_OK, ttl=ttl, granted_ttl=granted)
    if keys:
        with member.backend.env.begin() as txn:
            resp.keys.extend(sorted(member.leases.keys(txn, lease_id)))
    return resp


class LeasePeerServicer(lp_grpc.LeasePeerServicer):
    """The leader's side of forwarded calls, on the peer port. The lessor may block
    (a renewal of an expired lease waits for its revocation), so calls run on threads."""

    def __init__(self, member, threads: int = 32) -> None:
        self.member = member
        self.executor = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="kubekv-leasepeer"
        )

    async def LeaseRenew(self, request, context):  # noqa: N802 - gRPC method name
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, leader_renew, self.member, request.id)

    async def LeaseTimeToLive(self, request, context):  # noqa: N802 - gRPC method name
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, leader_time_to_live, self.member, request.id, request.keys
        )

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------- follower side


class LeaseForwarder:
    """Loop side: one attempt of a forwarded call to the leader's peer URLs."""

    def __init__(self, peering) -> None:
        self.peering = peering
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def _stub(self, url: str) -> lp_grpc.LeasePeerStub:
        ch = self._channels.get(url)
        if ch is None:
            ch = self._channels[url] = await self.peering.dial(url)
        return lp_grpc.LeasePeerStub(ch)

    async def call(self, leader_id: int, method: str, request, timeout: float):
        """The leader's answer, or None if no URL of the leader answered."""
        for url in self.peering.peer_urls(leader_id):
            try:
                stub = await self._stub(url)
                return await getattr(stub, method)(request, timeout=max(timeout, 0.05))
            except (grpc.aio.AioRpcError, ValueError, OSError) as exc:
                log.debug("event=lease_forward_failed url=%s error=%r", url, exc)
        return None

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await ch.close()


def _forward(member, leader: int, method: str, request, timeout: float) -> asyncio.Future:
    """Loop thread: one forwarding attempt as a task (for Member.blocking)."""
    return asyncio.ensure_future(member.lease_forwarder.call(leader, method, request, timeout))


def _at_leader(member, local, method: str, request):
    """Worker thread: run `local()` on the leader, or forward `request` to it; retried
    (etcd's loop) until an answer other than LEASE_NOT_PRIMARY or the request timeout."""
    deadline = time.monotonic() + member.request_timeout
    while True:
        leader = member.node.leader_id
        resp = None
        if leader == member.member_id:
            resp = local()
        elif leader:
            left = deadline - time.monotonic()
            try:
                resp = member.blocking(_forward, member, leader, method, request, left,
                                       timeout=left + 1.0)
            except errors.EtcdError:
                resp = None
        if resp is not None and resp.status != lp.LEASE_NOT_PRIMARY:
            return resp
        if time.monotonic() + RETRY_PAUSE > deadline:
            raise errors.TIMEOUT if leader else errors.NO_LEADER
        if member.stopping.wait(RETRY_PAUSE):
            raise errors.STOPPED


def renew(member, lease_id: int) -> int:
    """LeaseKeepAlive: the leader's renewed TTL; 0 when the lease is gone (etcd)."""
    resp = _at_leader(member, lambda: leader_renew(member, lease_id), "LeaseRenew",
                      lp.LeaseRenewRequest(id=lease_id))
    return resp.ttl if resp.status == lp.LEASE_OK else 0


def time_to_live(member, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
    """LeaseTimeToLive as the leader sees it; TTL -1 for an unknown lease (etcd)."""
    resp = _at_leader(member, lambda: leader_time_to_live(member, r.ID, r.keys),
                      "LeaseTimeToLive", lp.LeaseTimeToLiveRequest(id=r.ID, keys=r.keys))
    if resp.status == lp.LEASE_NOT_FOUND:
        return pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=-1)
    out = pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=resp.ttl, grantedTTL=resp.granted_ttl)
    out.keys.extend(resp.keys)
    return out
