"""etcd's backend quota: the estimated storage cost of a request, checked before proposing
(a Put's is found by `api.request_checks.check_put`, a Txn's, its costlier branch's
top-level puts, by `check_txn`)."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb

# etcd's estimates of per-key and per-lease metadata cost.
KV_OVERHEAD = 256
LEASE_OVERHEAD = 64


def has_put(r: pb.TxnRequest) -> bool:
    """Whether a txn may store a new value (refused while the NOSPACE alarm is raised)."""
    for op in (*r.success, *r.failure):
        if op.HasField("request_put"):
            return True
        if op.HasField("request_txn") and has_put(op.request_txn):
            return True
    return False
