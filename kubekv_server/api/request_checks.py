"""Validation of KV requests before they are proposed, with etcd's errors (v3rpc key.go).

These checks need nothing but the request, so they run in the gRPC handler and a
malformed request never reaches the log.
"""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server import errors


def check_range(r: pb.RangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_put(r: pb.PutRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    if r.ignore_value and r.value:
        raise errors.VALUE_PROVIDED
    if r.ignore_lease and r.lease:
        raise errors.LEASE_PROVIDED


def check_delete(r: pb.DeleteRangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def _check_op(op: pb.RequestOp, max_txn_ops: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        check_range(op.request_range)
    elif kind == "request_put":
        check_put(op.request_put)
    elif kind == "request_delete_range":
        check_delete(op.request_delete_range)
    elif kind == "request_txn":
        check_txn_ops(op.request_txn, max_txn_ops)
    else:
        raise errors.KEY_NOT_FOUND  # etcd's answer to an empty RequestOp


def check_txn_ops(r: pb.TxnRequest, max_txn_ops: int) -> None:
    """etcd's checkTxnRequest: operation count per branch, empty keys, nested txns."""
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_txn_ops:
        raise errors.TOO_MANY_OPS
    for c in r.compare:
        if not c.key:
            raise errors.EMPTY_KEY
    for op in r.success:
        _check_op(op, max_txn_ops - opc)
    for op in r.failure:
        _check_op(op, max_txn_ops - opc)


# ----------------------------------------------------- duplicate-key check


class _Deletes:
    """Deleted key intervals [begin, end); end b"" means unbounded (etcd's affine intervals)."""

    def __init__(self) -> None:
        self.intervals: list[tuple[bytes, bytes | None]] = []  # None end = single key

    def add(self, key: bytes, range_end: bytes) -> None:
        self.intervals.append((key, range_end if range_end else None))

    def union(self, other: _Deletes) -> None:
        self.intervals.extend(other.intervals)

    def hits(self, key: bytes) -> bool:
        for begin, end in self.intervals:
            if end is None:
                if key == begin:
                    return True
            elif begin <= key and (end == b"" or key < end):
                return True
        return False


def _check_intervals(ops) -> tuple[set[bytes], _Deletes]:
    """etcd's checkIntervals for one branch: DUPLICATE_KEY if two ops write one key;
    the keys it puts and the intervals it deletes. Deletes are gathered first, then
    nested txns are checked, then this branch's puts, as etcd does; the ops are read
    in one pass (each read of a repeated message field makes its wrappers again)."""
    dels = _Deletes()
    nested: list[pb.TxnRequest] = []
    put_keys: list[bytes] = []
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            put_keys.append(op.request_put.key)
        elif kind == "request_delete_range":
            d = op.request_delete_range
            dels.add(d.key, d.range_end)
        elif kind == "request_txn":
            nested.append(op.request_txn)

    puts: set[bytes] = set()
    for txn in nested:
        puts_then, dels_then = _check_intervals(txn.success)
        puts_else, dels_else = _check_intervals(txn.failure)
        for k in puts_then:
            if k in puts or dels.hits(k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or dels.hits(k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        dels.union(dels_then)
        dels.union(dels_else)

    for k in put_keys:
        if k in puts or dels.hits(k):
            raise errors.DUPLICATE_KEY
        puts.add(k)
    return puts, dels


def check_txn(r: pb.TxnRequest, max_txn_ops: int) -> None:
    """Everything etcd checks on a Txn before proposing it."""
    check_txn_ops(r, max_txn_ops)
    _check_intervals(r.success)
    _check_intervals(r.failure)
