"""Leases: the lessor (in-memory expiry, leader-local, `lessor.py`) and their durable
records in the state database (`store.py`), changed only by applied log entries."""

from kubekv_server.lease.lessor import MAX_LEASE_TTL, Lessor, min_lease_ttl
from kubekv_server.lease.store import LeaseStore

__all__ = ["MAX_LEASE_TTL", "LeaseStore", "Lessor", "min_lease_ttl"]
