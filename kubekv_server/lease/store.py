"""Durable lease records in the state LMDB environment, written in the apply transaction.

- ``lease``: 8-byte lease ID -> 8-byte granted TTL (seconds).
- ``lease_keys``: dupsort 8-byte lease ID -> attached key as the MVCC store keeps it
  (``mvcc.stored_key``: a long key's stored form, resolved through ``long_keys``).
  etcd rebuilds this map from the key-value store at startup; keeping it here keeps
  opening O(1).

Attachment follows the MVCC changes of each applied request: a put attaches its
key to its lease (detaching it from the previous one), a delete detaches it.
"""

from __future__ import annotations

import struct

import lmdb

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb.kv_pb2 import Event
from kubekv_server import errors
from kubekv_server.mvcc.stored_key import PREFIX, is_long, stored

_ID = struct.Struct(">Q")
_TTL = struct.Struct(">q")
_MASK = (1 << 64) - 1


def _id(lease_id: int) -> bytes:
    return _ID.pack(lease_id & _MASK)


def _from_id(b: bytes) -> int:
    n = _ID.unpack(b)[0]
    return n - (1 << 64) if n >= 1 << 63 else n


class LeaseStore:
    def __init__(self, backend, min_ttl: int) -> None:
        self.rebind(backend)
        self.min_ttl = min_ttl

    def rebind(self, backend) -> None:
        """Take the backend's (possibly new) environment and handles."""
        self.env = backend.env
        self.leases = backend.open_db(b"lease")
        self.keys_db = backend.open_db(b"lease_keys", dupsort=True)
        self.long_keys = backend.open_db(b"long_keys")

    # ----------------------------------------------------------------- reads

    def exists(self, txn: lmdb.Transaction, lease_id: int) -> bool:
        return lease_id != 0 and txn.get(_id(lease_id), db=self.leases) is not None

    def all(self, txn: lmdb.Transaction) -> list[tuple[int, int]]:
        """(id, granted TTL) of every lease."""
        return [(_from_id(k), _TTL.unpack(v)[0]) for k, v in txn.cursor(db=self.leases)]

    def keys(self, txn: lmdb.Transaction, lease_id: int) -> list[bytes]:
        cur = txn.cursor(db=self.keys_db)
        if not cur.set_key(_id(lease_id)):
            return []
        return [txn.get(k, db=self.long_keys) if is_long(k) else k for k in cur.iternext_dup()]

    # ---------------------------------------------------------------- writes

    def grant(self, txn: lmdb.Transaction, r: pb.LeaseGrantRequest) -> int:
        """etcd's lessor.Grant in the apply txn; returns the granted TTL (>= the minimum)."""
        if r.ID == 0:
            raise errors.LEASE_NOT_FOUND
        if self.exists(txn, r.ID):
            raise errors.LEASE_EXIST
        ttl = max(r.TTL, self.min_ttl)
        txn.put(_id(r.ID), _TTL.pack(ttl), db=self.leases)
        return ttl

    def revoke(self, txn: lmdb.Transaction, write_txn, lease_id: int) -> None:
        """etcd's lessor.Revoke: delete every attached key in one MVCC txn, drop the lease."""
        if not self.exists(txn, lease_id):
            raise errors.LEASE_NOT_FOUND
        for key in sorted(self.keys(txn, lease_id)):
            write_txn.delete_range(key, None)
        txn.delete(_id(lease_id), db=self.leases)
        txn.delete(_id(lease_id), db=self.keys_db)

    def track(self, txn: lmdb.Transaction, changes: list) -> bool:
        """Attach/detach keys after the MVCC changes of one applied request; whether any
        key was attached or detached."""
        touched = False
        for ev in changes:
            kv = ev.kv
            old = ev.prev_kv.lease if ev.HasField("prev_kv") else 0
            new = kv.lease if ev.type == Event.PUT else 0
            if old == new:
                continue
            touched = True
            key = kv.key if len(kv.key) <= PREFIX else stored(kv.key)
            if old:
                cur = txn.cursor(db=self.keys_db)
                if cur.set_key_dup(_id(old), key):
                    cur.delete()
            if new:
                txn.put(_id(new), key, db=self.keys_db, dupdata=True)
        return touched
