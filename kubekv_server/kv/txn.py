"""etcd's write semantics (Put, DeleteRange, Txn) on top of one MVCC write transaction.

Everything that can refuse a request is checked before the first write, as in
etcd's applier, so a refused request changes nothing. A writing request uses
exactly one revision, however many operations it holds.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb import kv_pb2
from kubekv_server import errors
from kubekv_server.kv.range import execute_range, range_end_arg

LeaseExists = Callable[[int], bool]

_EMPTY_KV = kv_pb2.KeyValue()
_parse_kv = kv_pb2.KeyValue.FromString


# ---------------------------------------------------------------- compares


# The operand field of each compare target, named alike in Compare and KeyValue.
_OPERANDS = {pb.Compare.VALUE: "value", pb.Compare.CREATE: "create_revision",
             pb.Compare.MOD: "mod_revision", pb.Compare.VERSION: "version",
             pb.Compare.LEASE: "lease"}
_RESULTS = {pb.Compare.EQUAL: operator.eq, pb.Compare.NOT_EQUAL: operator.ne,
            pb.Compare.GREATER: operator.gt, pb.Compare.LESS: operator.lt}


def _compare(txn, c: pb.Compare) -> bool:
    """etcd's applyCompare: the compare holds for every key in its range (for a missing
    key, against an empty KeyValue, but never on its value)."""
    range_end = c.range_end
    try:
        if range_end:
            kvs = txn.range(c.key, range_end_arg(range_end)).kvs
        else:  # one key (kube's compares): its live row, no RangeResult
            raw = txn.live_kv(c.key)
            kvs = () if raw is None else (_parse_kv(raw),)
    except Exception:  # etcd treats a failed read as a failed compare
        return False
    name = _OPERANDS.get(c.target)
    if not kvs:
        if name == "value":
            return False  # a missing key has no value to compare, not an empty one
        kvs = (_EMPTY_KV,)
    holds = _RESULTS.get(c.result)
    if holds is None:
        return True  # etcd's compareKV: an unknown result holds
    if name is None:
        return holds(0, 0)  # etcd's compareKV: an unknown target compares as equal
    b = getattr(c, name)  # the default if the operand set is another target's
    for kv in kvs:
        if not holds(getattr(kv, name), b):
            return False
    return True


# A Txn's taken branch as read once: (compares held, its ops as (oneof field, request,
# the nested txn's taken branch or None)). Each read of a repeated message field makes
# its upb wrappers again: the checks and the execution walk this instead.
Taken = tuple[bool, list[tuple[str | None, object, "Taken | None"]]]


def taken_branch(txn, r: pb.TxnRequest) -> Taken:
    """Evaluate the compares of a txn and of the nested txns on its taken branch, depth
    first (all before any write, as etcd); the taken branch, read once."""
    succeeded = True
    for c in r.compare[:]:  # slices: iterating upb's container itself costs more
        if not _compare(txn, c):
            succeeded = False
            break
    ops: list[tuple[str | None, object, Taken | None]] = []
    for op in (r.success if succeeded else r.failure)[:]:
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            nested = op.request_txn
            ops.append((kind, nested, taken_branch(txn, nested)))
        else:
            ops.append((kind, None if kind is None else getattr(op, kind), None))
    return succeeded, ops


def is_read_only(r: pb.TxnRequest) -> bool:
    """A txn whose both branches hold only Ranges: served without a log entry.

    As etcd's isTxnReadonly, a nested txn makes a txn a write even if it only
    reads: it is proposed, so --max-request-bytes applies to it.
    """
    for op in r.success[:]:
        if op.WhichOneof("request") != "request_range":
            return False
    for op in r.failure[:]:
        if op.WhichOneof("request") != "request_range":
            return False
    return True


# ---------------------------------------------------------- pre-write checks


def _check_ops(txn, taken: Taken, lease_exists: LeaseExists,
               ranges: list[pb.RangeRequest]) -> None:
    """Check every put on the taken branches, in order, and gather their ranges into
    `ranges`."""
    for kind, req, nested in taken[1]:
        if kind == "request_put":
            _check_put(txn, req, lease_exists)
        elif kind == "request_range":
            ranges.append(req)
        elif kind == "request_txn":
            _check_ops(txn, nested, lease_exists, ranges)


def _check_put(txn, put: pb.PutRequest, lease_exists: LeaseExists) -> None:
    if put.ignore_value or put.ignore_lease:
        if not txn.range(put.key, None).kvs:
            raise errors.KEY_NOT_FOUND
    if put.lease and not lease_exists(put.lease):
        raise errors.LEASE_NOT_FOUND


def _check_range_revision(txn, rr: pb.RangeRequest) -> None:
    if rr.revision == 0:
        return
    if rr.revision > txn.current_revision:
        raise errors.FUTURE_REV
    if rr.revision < txn.compact_revision:
        raise errors.COMPACTED


# --------------------------------------------------------------- execution


def apply_put(txn, p: pb.PutRequest, lease_exists: LeaseExists, checked: bool = False,
              resp: pb.PutResponse | None = None):
    """Put into an open write txn; returns the PutResponse (header.revision set): `resp`
    filled in place when given (a Txn's own response_put), else a new one."""
    value, lease = p.value, p.lease
    prev = None
    if p.ignore_value or p.ignore_lease or p.prev_kv:
        found = txn.range(p.key, None).kvs
        prev = found[0] if found else None
    if not checked:
        if p.lease and not lease_exists(p.lease):
            raise errors.LEASE_NOT_FOUND
        if (p.ignore_value or p.ignore_lease) and prev is None:
            raise errors.KEY_NOT_FOUND
    if p.ignore_value:
        value = prev.value
    if p.ignore_lease:
        lease = prev.lease
    if resp is None:
        resp = pb.PutResponse()
    if p.prev_kv and prev is not None:
        resp.prev_kv.CopyFrom(prev)
    txn.put(p.key, value, lease)
    resp.header.revision = txn.current_revision + 1
    return resp


def apply_delete_range(txn, d: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
    """DeleteRange in an open write txn; returns the response (deleted count, prev_kvs)."""
    deleted = txn.delete_range(d.key, range_end_arg(d.range_end))
    resp = pb.DeleteRangeResponse(deleted=len(deleted))
    if d.prev_kv and deleted:
        resp.prev_kvs.extend(deleted)
    changed = bool(deleted) or txn.changed
    resp.header.revision = txn.current_revision + (1 if changed else 0)
    return resp


def _apply_txn_ops(txn, taken: Taken, resp: pb.TxnResponse, lease_exists: LeaseExists) -> None:
    """Run the taken branch's ops into `resp`: one response per op, in order."""
    resp.header.SetInParent()  # etcd sends nested txns an empty header, not none
    succeeded, ops = taken
    resp.succeeded = succeeded
    add = resp.responses.add
    for kind, req, nested in ops:
        out = add()
        if kind == "request_range":
            out.response_range.CopyFrom(execute_range(txn, req))
        elif kind == "request_put":
            apply_put(txn, req, lease_exists, checked=True, resp=out.response_put)
        elif kind == "request_delete_range":
            out.response_delete_range.CopyFrom(apply_delete_range(txn, req))
        elif kind == "request_txn":
            _apply_txn_ops(txn, nested, out.response_txn, lease_exists)


def check_txn(txn, taken: Taken, lease_exists: LeaseExists) -> None:
    """Refuse, before any write, what etcd's applier refuses: missing keys and leases
    (every put on the taken branches first, in order), then revisions (every range).
    One walk of the branches checks the puts and gathers the ranges."""
    ranges: list[pb.RangeRequest] = []
    _check_ops(txn, taken, lease_exists, ranges)
    for rr in ranges:
        _check_range_revision(txn, rr)


def apply_txn(txn, r: pb.TxnRequest, lease_exists: LeaseExists) -> pb.TxnResponse:
    """Run a Txn in an open MVCC transaction (read or write); returns the TxnResponse."""
    taken = taken_branch(txn, r)
    check_txn(txn, taken, lease_exists)
    resp = pb.TxnResponse()
    _apply_txn_ops(txn, taken, resp, lease_exists)
    resp.header.revision = txn.current_revision + (1 if getattr(txn, "changed", False) else 0)
    return resp
