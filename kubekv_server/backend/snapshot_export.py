"""The state db as etcd's backend buckets, written as a bbolt file (Maintenance.Snapshot).

`bbolt_export` writes the file; this gathers what goes in it: the key history as it
is, etcd's meta keys, leases, alarms, the members, and etcd's default cluster and
auth buckets.
"""

from __future__ import annotations

import json

from kubekv_server.backend import bbolt_export as bb
from kubekv_server.backend.alarms import list_alarms
from kubekv_server.backend.state_db import Backend, encode_u64
from kubekv_server.lease import LeaseStore
from kubekv_server.mvcc.meta import FINISHED_COMPACT_REV, SCHEDULED_COMPACT_REV


def export_snapshot(backend: Backend, leases: LeaseStore, applied_index: int,
                    members: list[dict], cluster_version: str) -> bytes:
    """The state as an etcd backend file (bbolt). Any thread."""
    env = backend.env
    with env.begin() as txn:
        key_db = env.open_db(b"key", txn=txn, create=False)
        meta = [(b"consistent_index", encode_u64(applied_index))]
        for name in (SCHEDULED_COMPACT_REV, FINISHED_COMPACT_REV):
            v = txn.get(name, db=backend.meta)
            if v is not None:
                meta.append((name, v))
        buckets = {
            b"key": list(txn.cursor(db=key_db)),
            b"meta": meta,
            b"lease": [(encode_u64(lid), bb.lease_value(lid, ttl))
                       for lid, ttl in leases.all(txn)],
            b"alarm": [(a.SerializeToString(), b"")
                       for a in list_alarms(txn, backend.meta)],
        }
    buckets[b"members"] = [
        (f"{m['id']:x}".encode(),
         json.dumps({"id": m["id"], "peerURLs": m["peerURLs"],
                     "isLearner": m["isLearner"]}).encode())
        for m in members
    ]
    buckets[b"members_removed"] = []
    buckets[b"cluster"] = [(b"clusterVersion", cluster_version.encode())]
    buckets[b"auth"] = [(b"authEnabled", b"\x00"), (b"authRevision", encode_u64(1))]
    buckets[b"authUsers"] = []
    buckets[b"authRoles"] = []
    return bb.build(buckets)
