"""etcd's backend quota: the estimated storage cost of a request, checked before proposing
(a Txn's, its costlier branch's top-level puts, is found by `api.request_checks.check_txn`)."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb

# etcd's estimates of per-key and per-lease metadata cost.
KV_OVERHEAD = 256
LEASE_OVERHEAD = 64


def put_cost(r: pb.PutRequest) -> int:
    return KV_OVERHEAD + len(r.key) + len(r.value)


def has_put(r: pb.TxnRequest) -> bool:
    """Whether a txn may store a new value (refused while the NOSPACE alarm is raised)."""
    for op in (*r.success, *r.failure):
        if op.HasField("request_put"):
            return True
        if op.HasField("request_txn") and has_put(op.request_txn):
            return True
    return False
