"""Maintenance of one member's state: status, alarms, defragmentation, snapshot export.

What etcd's Maintenance service asks of a member beyond its key-value API; the
state-db work itself lives next to the backend (`backend/defragment.py`,
`backend/snapshot_export.py`).
"""

from __future__ import annotations

from collections.abc import Callable

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.apply.applier import Applier
from kubekv_server.auth import AuthStore
from kubekv_server.backend.alarms import list_alarms
from kubekv_server.backend.defragment import defragment
from kubekv_server.backend.snapshot_export import export_snapshot
from kubekv_server.backend.state_db import Backend
from kubekv_server.lease import LeaseStore
from kubekv_server.member.versions import CLUSTER_VERSION, SERVER_VERSION
from kubekv_server.mvcc import MVCCStore
from kubekv_server.mvcc.compactor import Compactor
from kubekv_server.replication.raft_node import RaftNode


class Maintenance:
    """Status, alarms, defragmentation and snapshot export of one member's state db."""

    def __init__(self, member_id: int, node: RaftNode, backend: Backend, mvcc: MVCCStore,
                 leases: LeaseStore, auth: AuthStore, applier: Applier, compactor: Compactor,
                 members: Callable[[], list[dict]]) -> None:
        self.member_id = member_id
        self.node = node
        self.backend = backend
        self.mvcc = mvcc
        self.leases = leases
        self.auth = auth
        self.applier = applier
        self.compactor = compactor
        self.members = members

    def alarms(self) -> list[pb.AlarmMember]:
        """The raised alarms, as the state db records them."""
        with self.backend.env.begin() as txn:
            return list_alarms(txn, self.backend.meta)

    def status(self) -> pb.StatusResponse:
        """Maintenance.Status, header left to the caller."""
        node = self.node
        resp = pb.StatusResponse(
            version=SERVER_VERSION,
            dbSize=self.backend.size_bytes(),
            leader=node.leader_id,
            raftIndex=node.commit_index,
            raftTerm=node.term,
            raftAppliedIndex=self.applier.applied_index,
            dbSizeInUse=self.backend.in_use_bytes(),
            isLearner=any(m["isLearner"] for m in self.members() if m["id"] == self.member_id),
        )
        # etcd lists raised alarms in gogoproto's text form, e.g. "memberID:1 alarm:NOSPACE ".
        for a in self.alarms():
            resp.errors.append(f"memberID:{a.memberID} alarm:{pb.AlarmType.Name(a.alarm)} ")
        return resp

    async def defragment(self) -> None:
        """Maintenance.Defragment: rewrite the state db compacted, giving space back.

        Runs in the apply thread, so no entry is applied meanwhile, once no snapshot of
        the state db is being copied (the copy reads the file defragmenting replaces).
        """
        await self.node.run_in_apply_thread(self._defragment)

    def _defragment(self) -> int:
        with self.node.snapshot_lock:
            return defragment(self.backend, self.mvcc, self.leases, self.auth,
                              self.compactor)

    def export_snapshot(self) -> bytes:
        """The state as an etcd backend file (bbolt), for Maintenance.Snapshot. Any thread."""
        return export_snapshot(self.backend, self.leases, self.applier.applied_index,
                               self.members(), CLUSTER_VERSION)
