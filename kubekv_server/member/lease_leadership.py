"""Leases on the leader: the lessor's promotion and demotion, expiry, checkpoints, and the
proposals that grant and revoke leases.

Only the leader's lessor runs deadlines (etcd's primary lessor); followers forward
KeepAlive and TimeToLive to it (`peer/lease_forward.py`). Every member's lessor mirrors
the leases the applier grants and revokes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server import errors
from kubekv_server.apply.applier import BatchResult
from kubekv_server.lease import MAX_LEASE_TTL, Lessor
from kubekv_server.log_limit import RateLimitedLog, short_error
from kubekv_server.member import quota
from kubekv_server.member.proposals import Proposer
from kubekv_server.replication.raft_node import RaftNode

log = logging.getLogger("kubekv.member")
# a failing expiry round: one line a minute, however often it fails
_failures = RateLimitedLog(log)


def mirror_lease_changes(lessor: Lessor, changes: list) -> None:
    """Loop thread, the first listener after a batch commits to the state db: mirror its
    lease grants, checkpoints and revocations in the lessor."""
    for change in changes:
        if change[0] == "grant":
            lessor.granted(change[1], change[2])
        elif change[0] == "checkpoint":
            lessor.checkpointed(change[1], change[2])
        else:
            lessor.revoked(change[1])


class LeaseLeadership:
    """The lessor's leadership, lease expiry and checkpoints, and lease proposals."""

    def __init__(self, loop: asyncio.AbstractEventLoop, node: RaftNode, lessor: Lessor,
                 proposer: Proposer, applied_index: Callable[[], int],
                 election_timeout: float, stopping: threading.Event) -> None:
        self.loop = loop
        self.node = node
        self.lessor = lessor
        self.proposer = proposer
        self.applied_index = applied_index
        self.election_timeout = election_timeout  # seconds
        self.stopping = stopping
        self._term = 0  # the term in which this member's lessor was promoted

    def on_applied(self, result: BatchResult | None = None) -> None:
        """Loop thread (after each applied batch, and polled by the expiry thread): etcd
        promotes the lessor once a new leader has applied an entry of its own term (so
        every lease granted before the election is known), giving every lease its full
        TTL plus one election timeout from now; a member that stopped leading demotes
        (its leases then never expire until it leads again)."""
        node = self.node
        if node.is_leader():
            term = node.term
            if self._term == term:
                return
            applied = result.applied_index if result is not None else self.applied_index()
            if node.log_term(applied) != term:
                return
            self._term = term
            self.lessor.promote(self.election_timeout)
            log.info("event=lessor_promoted term=%d leases=%d", term, len(self.lessor.ids()))
        elif self._term or self.lessor.primary:
            self._term = 0
            self.lessor.demote()
            log.info("event=lessor_demoted term=%d", node.term)

    def start(self) -> None:
        """Start the expiry thread (it ends once `stopping` is set)."""
        threading.Thread(target=self._expire_leases, name="kubekv-lessor", daemon=True).start()

    def _expire_leases(self) -> None:
        """Leader only: propose the revocation of expired leases (etcd's revokeExpiredLeases,
        every 500 ms at most 500 leases). A round that fails is logged (once a minute) and
        the next one goes on: a dead thread would leave every lease unexpired for good."""
        while not self.stopping.is_set():
            try:
                self._expiry_round()
                wait = min(max(self.lessor.next_deadline() - time.monotonic(), 0.05), 0.5)
            except Exception as exc:  # noqa: BLE001 - see above
                if self.stopping.is_set():
                    return
                _failures.log(logging.ERROR, "lessor", "lease_expiry_failed", "error=%s",
                              short_error(exc), exc_info=exc)
                wait = 0.5
            self.lessor.wait_changed(wait)

    def _expiry_round(self) -> None:
        """One look at leadership, expired leases and due checkpoints."""
        # leadership may be lost without any apply: let the loop look (demotion)
        self.loop.call_soon_threadsafe(self.on_applied)
        if self.node.is_leader():
            for lease_id in self.lessor.expired():
                try:
                    self.proposer.propose_nowait("lease_revoke",
                                                 pb.LeaseRevokeRequest(ID=lease_id))
                except errors.EtcdError:
                    break
            due = self.lessor.due_checkpoints()
            if due:
                self.checkpoint(due)

    def checkpoint(self, checkpoints: list[tuple[int, int]]) -> None:
        """Any thread: record leases' remaining TTLs through the log (etcd's lessor cp)."""
        req = pb.LeaseCheckpointRequest(checkpoints=[
            pb.LeaseCheckpoint(ID=i, remaining_TTL=ttl) for i, ttl in checkpoints])
        try:
            self.proposer.propose_nowait("lease_checkpoint", req)
        except errors.EtcdError:
            pass  # the next round checkpoints again

    def grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        """Worker thread: LeaseGrant, with a fresh lease id when the client gave none."""
        if r.TTL > MAX_LEASE_TTL:
            raise errors.LEASE_TTL_TOO_LARGE
        if r.ID == 0:
            r = pb.LeaseGrantRequest(TTL=r.TTL, ID=self._new_lease_id())
        # etcd's quotaLeaseServer: a grant costs leaseOverhead against the backend quota
        return self.proposer.propose("lease_grant", r, cost=quota.LEASE_OVERHEAD)

    def _new_lease_id(self) -> int:
        while True:
            lease_id = self.node.next_id() & ((1 << 63) - 1)
            if lease_id and not self.lessor.exists(lease_id):
                return lease_id

    def revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        """Worker thread: LeaseRevoke."""
        return self.proposer.propose("lease_revoke", r)
