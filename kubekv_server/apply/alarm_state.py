"""The raised alarms as the applier sees them, cached from the state db.

etcd swaps its applier when NOSPACE or CORRUPT is raised or cleared (apply.go's
Alarm); kubekv's layers ask this cache on every request instead, which refuses
the same requests.
"""

from __future__ import annotations

import lmdb

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.backend.alarms import list_alarms
from kubekv_server.backend.state_db import Backend


class AlarmState:
    """(member id, alarm type) pairs raised, re-read after each alarm request and snapshot."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.raised: set[tuple[int, int]] = set()
        with backend.env.begin() as txn:
            self.load(txn)

    def load(self, txn: lmdb.Transaction) -> None:
        """Re-read the alarms as `txn` sees them (the applier's own txn after an alarm)."""
        self.raised = {(a.memberID, a.alarm) for a in list_alarms(txn, self.backend.meta)}
        # asked by the layers for every request, so answered here once per change:
        # whether NOSPACE is raised (etcd's capped applier is in place), and CORRUPT
        self.nospace = any(alarm == pb.NOSPACE for _, alarm in self.raised)
        self.corrupt = any(alarm == pb.CORRUPT for _, alarm in self.raised)
