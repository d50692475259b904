"""etcd's lessor, in memory: expiry deadlines, renewals, who is due for revocation.

Only the leader (the *primary*) runs deadlines; a follower keeps every lease alive
until it is promoted (etcd's ``forever``). Grants and revocations come from
applied log entries (`granted`, `revoked`); expiry is turned into revoke
proposals by the member, never applied here. Time is an injected clock.

With checkpoints (etcd's --experimental-enable-lease-checkpoint) the leader records
each lease's remaining TTL through the log every ``checkpoint_interval``
(`due_checkpoints` → `checkpointed` on every member), and a new leader gives a lease
that remaining TTL instead of its full TTL. As in etcd without the persist option,
checkpoints live in memory: a restarted member knows none.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from kubekv_server import errors

# etcd's MaxLeaseTTL (seconds)
MAX_LEASE_TTL = 9_000_000_000
# etcd's leaseRevokeRate: revocations per second the leader proposes at most
LEASE_REVOKE_RATE = 1000
# etcd's defaultExpiredleaseRetryInterval: re-propose a revoke that did not land
EXPIRED_RETRY_INTERVAL = 3.0

FOREVER = math.inf


def min_lease_ttl(election_timeout_ms: int, heartbeat_ms: int) -> int:
    """etcd's minimum TTL: ceil(1.5 election timeouts' worth of heartbeats), in seconds."""
    election_ticks = max(election_timeout_ms // max(heartbeat_ms, 1), 1)
    min_ttl_ms = ((3 * election_ticks) // 2) * heartbeat_ms
    return math.ceil(min_ttl_ms / 1000)


class Lease:
    __slots__ = ("id", "ttl", "expiry", "revoke_proposed_at", "gone", "remaining_ttl",
                 "checkpoint_at")

    def __init__(self, lease_id: int, ttl: int, expiry: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.expiry = expiry
        self.revoke_proposed_at: float | None = None
        self.gone = threading.Event()
        self.remaining_ttl = 0  # the last checkpoint's remaining TTL; 0: none
        self.checkpoint_at: float | None = None  # when the leader checkpoints it next

    def remaining(self) -> int:
        """etcd's RemainingTTL: the checkpointed remaining TTL, else the full TTL."""
        return self.remaining_ttl if self.remaining_ttl > 0 else self.ttl

# etcd's defaultLeaseCheckpointInterval (seconds), for --experimental-enable-lease-checkpoint
DEFAULT_CHECKPOINT_INTERVAL = 300.0


class Lessor:
    def __init__(self, clock: Callable[[], float], checkpoint_interval: float = 0.0) -> None:
        self.clock = clock
        # seconds between a lease's checkpoints on the leader; 0: no checkpoints
        self.checkpoint_interval = checkpoint_interval
        self.primary = False
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    # ------------------------------------------------------- applied changes

    def restore(self, leases: list[tuple[int, int]]) -> None:
        """Leases found in the state database at startup: alive until promoted."""
        with self._lock:
            for lease_id, ttl in leases:
                self._leases[lease_id] = Lease(lease_id, ttl, FOREVER)

    def reset(self, leases: list[tuple[int, int]]) -> None:
        """Forget every lease and take these (a snapshot replaced the state database)."""
        with self._lock:
            self._leases.clear()
        self.restore(leases)
        if self.primary:
            self.promote(0.0)

    def granted(self, lease_id: int, ttl: int) -> None:
        with self._lock:
            expiry = self.clock() + ttl if self.primary else FOREVER
            lease = self._leases[lease_id] = Lease(lease_id, ttl, expiry)
            self._schedule_checkpoint(lease)
            self._changed.notify_all()

    def checkpointed(self, lease_id: int, remaining_ttl: int) -> None:
        """An applied checkpoint (etcd's Checkpoint): remember the remaining TTL."""
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.remaining_ttl = remaining_ttl
                self._schedule_checkpoint(lease)

    def _schedule_checkpoint(self, lease: Lease) -> None:
        """etcd's scheduleCheckpointIfNeeded (lock held)."""
        if self.primary and self.checkpoint_interval and \
                lease.remaining() > self.checkpoint_interval:
            lease.checkpoint_at = self.clock() + self.checkpoint_interval

    def due_checkpoints(self, limit: int = 1000) -> list[tuple[int, int]]:
        """Leader: (lease, remaining TTL) of the checkpoints due now (etcd's
        findDueScheduledCheckpoints); a lease still at its full TTL is skipped."""
        if not self.primary or not self.checkpoint_interval:
            return []
        out = []
        with self._lock:
            now = self.clock()
            for lease in self._leases.values():
                if lease.checkpoint_at is None or lease.checkpoint_at > now:
                    continue
                lease.checkpoint_at = None
                remaining = math.ceil(lease.expiry - now)
                if remaining >= lease.ttl:
                    continue
                out.append((lease.id, remaining))
                if len(out) >= limit:
                    break
        return out

    def clears_checkpoint(self, lease_id: int) -> bool:
        """Leader, after a renewal: whether the lease's checkpoint must be cleared
        through the log (etcd proposes remaining TTL 0 so that a new leader gives the
        renewed lease its full TTL)."""
        with self._lock:
            lease = self._leases.get(lease_id)
            return bool(self.checkpoint_interval and lease is not None and lease.remaining_ttl)

    def revoked(self, lease_id: int) -> None:
        with self._lock:
            lease = self._leases.pop(lease_id, None)
        if lease is not None:
            lease.gone.set()

    # ------------------------------------------------------------ leadership

    def promote(self, extend: float) -> None:
        """etcd's Promote: every lease lives its full TTL plus `extend` from now, and
        leases that would pile up beyond 3/4 of the revoke rate per second are spread."""
        with self._lock:
            self.primary = True
            now = self.clock()
            for lease in self._leases.values():
                lease.expiry = now + lease.remaining() + extend
                lease.revoke_proposed_at = None
                self._schedule_checkpoint(lease)
            if len(self._leases) >= LEASE_REVOKE_RATE:
                self._spread(now, extend)
            self._changed.notify_all()

    def _spread(self, now: float, extend: float) -> None:
        leases = sorted(self._leases.values(), key=lambda lease: lease.expiry)
        base = leases[0].expiry - now
        next_window = base + 1.0
        expires = 0
        target = (3 * LEASE_REVOKE_RATE) // 4
        for lease in leases:
            remaining = lease.expiry - now
            if remaining > next_window:
                base = remaining
                next_window = base + 1.0
                expires = 1
                continue
            expires += 1
            if expires <= target:
                continue
            delay = expires / target - (remaining - base)
            next_window = base + delay
            lease.expiry = now + lease.remaining() + delay + extend

    def demote(self) -> None:
        with self._lock:
            self.primary = False
            for lease in self._leases.values():
                lease.expiry = FOREVER
                lease.checkpoint_at = None

    # --------------------------------------------------------------- queries

    def exists(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._leases)

    def lookup(self, lease_id: int) -> tuple[int, float] | None:
        """(granted TTL, remaining seconds) of a lease, None if unknown."""
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None:
                return None
            return lease.ttl, lease.expiry - self.clock()

    def renew(self, lease_id: int, wait: float = 0.0) -> int:
        """etcd's Renew on the leader: a fresh full TTL. An expired lease is waiting
        for its revocation: wait up to `wait` seconds for it, then not found."""
        if not self.primary:
            raise errors.NOT_LEADER
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None:
                raise errors.LEASE_NOT_FOUND
            now = self.clock()
            if lease.expiry > now:
                lease.expiry = now + lease.ttl
                self._changed.notify_all()
                return lease.ttl
        lease.gone.wait(wait)
        raise errors.LEASE_NOT_FOUND

    def expired(self, limit: int = LEASE_REVOKE_RATE // 2) -> list[int]:
        """Leases past their deadline whose revocation should be proposed now (marked so
        they are proposed again only after EXPIRED_RETRY_INTERVAL)."""
        if not self.primary:
            return []
        out = []
        with self._lock:
            now = self.clock()
            for lease in self._leases.values():
                if lease.expiry > now:
                    continue
                at = lease.revoke_proposed_at
                if at is not None and now - at < EXPIRED_RETRY_INTERVAL:
                    continue
                lease.revoke_proposed_at = now
                out.append(lease.id)
                if len(out) >= limit:
                    break
        return out

    def next_deadline(self) -> float:
        with self._lock:
            return min((lease.expiry for lease in self._leases.values()), default=FOREVER)

    def wait_changed(self, timeout: float) -> None:
        """Block until a lease is granted/renewed/promoted or `timeout` passes (expiry loop)."""
        with self._lock:
            self._changed.wait(timeout)
