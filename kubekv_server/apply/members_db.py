"""The member list, removed members and ConfState, kept in the state db's meta db.

They change in the apply transaction of their entry, so they move with the
applied index (a restart sees the membership as of the index it resumes from).
"""

from __future__ import annotations

import json

import lmdb

from etcdproto.raftpb import raft_pb2
from kubekv_server.backend.state_db import Backend
from kubekv_server.member.membership import apply_conf_change


class MembersDB:
    """Reads and writes of the membership records, in a caller's LMDB transaction."""

    def __init__(self, backend: Backend) -> None:
        self.meta = backend.meta

    def members(self, txn: lmdb.Transaction) -> list[dict]:
        return json.loads(txn.get(b"members", db=self.meta) or b"[]")

    def removed(self, txn: lmdb.Transaction) -> list[int]:
        """Ids of members removed from the cluster (etcd's members_removed)."""
        return json.loads(txn.get(b"removed_members", db=self.meta) or b"[]")

    def conf_state(self, txn: lmdb.Transaction) -> raft_pb2.ConfState:
        raw = txn.get(b"conf_state", db=self.meta)
        return raft_pb2.ConfState.FromString(raw) if raw else raft_pb2.ConfState()

    def set_members(self, txn: lmdb.Transaction, members: list[dict]) -> None:
        txn.put(b"members", json.dumps(members, sort_keys=True).encode(), db=self.meta)

    def apply_conf_change(self, txn: lmdb.Transaction, cc: raft_pb2.ConfChange) -> list[dict]:
        """Members and ConfState after `cc`, written in `txn`; returns the new member list."""
        members, cs = apply_conf_change(self.members(txn), self.conf_state(txn), cc)
        self.set_members(txn, members)
        txn.put(b"conf_state", cs.SerializeToString(), db=self.meta)
        if cc.type == raft_pb2.ConfChangeRemoveNode:
            removed = sorted(set(self.removed(txn)) | {cc.node_id})
            txn.put(b"removed_members", json.dumps(removed).encode(), db=self.meta)
        return members
