"""Validation of KV requests before they are proposed, with etcd's errors (v3rpc key.go).

These checks need nothing but the request, so they run in the gRPC handler and a
malformed request never reaches the log.
"""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server import errors
from kubekv_server.member import quota


def check_range(r: pb.RangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_put(r: pb.PutRequest) -> int:
    """etcd's checkPutRequest; returns the Put's quota cost (etcd's estimate: its key,
    its value and KV_OVERHEAD), from the one read of each field the check makes."""
    key = r.key
    if not key:
        raise errors.EMPTY_KEY
    value = r.value
    if r.ignore_value and value:
        raise errors.VALUE_PROVIDED
    if r.ignore_lease and r.lease:
        raise errors.LEASE_PROVIDED
    return quota.KV_OVERHEAD + len(key) + len(value)


def check_delete(r: pb.DeleteRangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


# --------------------------------------------------------------------- txn

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


# One branch's ops as read once: (put keys, deleted intervals or None if it deletes
# nothing, each nested txn's two branches as read (None if none), the quota cost of its
# puts, whether it only reads). A kube Txn's branches (one Put, one Range) make no
# _Deletes or nested list: each object made here is CPU on the loop thread.
_Branch = tuple[list[bytes], "_Deletes | None", "list[tuple[_Branch, _Branch]] | None",
                int, bool]

_PUT, _RANGE, _DELETE, _TXN = "request_put", "request_range", "request_delete_range", \
    "request_txn"


def _check_branch(ops, max_txn_ops: int) -> _Branch:
    """etcd's checks of one branch's ops (checkRequestOp), in order, in one read of its
    ops (each read of a repeated message field makes its wrappers again); gathers what
    the duplicate-key check needs, the branch's quota cost (its puts', as `check_put`
    counts them) and whether it only reads (etcd's isTxnReadonly: only Ranges)."""
    put_keys: list[bytes] = []
    dels: _Deletes | None = None
    nested: list[tuple[_Branch, _Branch]] | None = None
    cost = 0
    read_only = True
    for op in ops[:]:  # a slice: iterating upb's container itself costs more
        kind = op.WhichOneof("request")
        if kind == _PUT:
            p = op.request_put
            cost += check_put(p)
            put_keys.append(p.key)
            read_only = False
        elif kind == _RANGE:
            check_range(op.request_range)
        elif kind == _DELETE:
            d = op.request_delete_range
            check_delete(d)
            if dels is None:
                dels = _Deletes()
            dels.add(d.key, d.range_end)
            read_only = False
        elif kind == _TXN:
            if nested is None:
                nested = []
            nested.append(_check_txn_ops(op.request_txn, max_txn_ops))
            read_only = False
        else:
            raise errors.KEY_NOT_FOUND  # etcd's answer to an empty RequestOp
    return put_keys, dels, nested, cost, read_only


def _check_txn_ops(r: pb.TxnRequest, max_txn_ops: int) -> tuple[_Branch, _Branch]:
    """etcd's checkTxnRequest: operation count per branch, empty keys, nested txns;
    returns both branches as read."""
    compare, success, failure = r.compare, r.success, r.failure
    opc = max(len(compare), len(success), len(failure))
    if opc > max_txn_ops:
        raise errors.TOO_MANY_OPS
    for c in compare[:]:
        if not c.key:
            raise errors.EMPTY_KEY
    return (_check_branch(success, max_txn_ops - opc),
            _check_branch(failure, max_txn_ops - opc))


def _check_intervals(branch: _Branch) -> tuple[set[bytes] | list[bytes], _Deletes | None]:
    """etcd's checkIntervals for one branch: DUPLICATE_KEY if two ops write one key;
    the keys it puts (distinct) and the intervals it deletes. Deletes are gathered
    first, then nested txns are checked, then this branch's puts, as etcd does."""
    put_keys, dels, nested = branch[0], branch[1], branch[2]
    if nested is None and dels is None:  # puts only (kube's Txns): distinct keys
        if len(put_keys) < 2:
            return put_keys, None
        distinct = set(put_keys)
        if len(distinct) != len(put_keys):
            raise errors.DUPLICATE_KEY
        return distinct, None
    if dels is None:
        dels = _Deletes()
    puts: set[bytes] = set()
    for then, else_ in nested or ():
        puts_then, dels_then = _check_intervals(then)
        puts_else, dels_else = _check_intervals(else_)
        for k in puts_then:
            if k in puts or dels.hits(k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or dels.hits(k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        if dels_then is not None:
            dels.union(dels_then)
        if dels_else is not None:
            dels.union(dels_else)

    for k in put_keys:
        if k in puts or dels.hits(k):
            raise errors.DUPLICATE_KEY
        puts.add(k)
    return puts, dels


def check_txn(r: pb.TxnRequest, max_txn_ops: int) -> tuple[bool, int]:
    """Everything etcd checks on a Txn before proposing it (checkTxnRequest, then
    checkIntervals on each branch), its ops read once. Returns whether the Txn only
    reads (`kv.txn.is_read_only`) and its quota cost: its costlier branch's puts, nested
    txns' not counted (etcd's quota.go, costTxnReq)."""
    then, else_ = _check_txn_ops(r, max_txn_ops)
    _check_intervals(then)
    _check_intervals(else_)
    return then[4] and else_[4], max(then[3], else_[3])
