"""etcd's write semantics (Put, DeleteRange, Txn) on top of one MVCC write transaction.

Everything that can refuse a request is checked before the first write, as in
etcd's applier, so a refused request changes nothing. A writing request uses
exactly one revision, however many operations it holds.
"""

from __future__ import annotations

from collections.abc import Callable

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb import kv_pb2
from kubekv_server import errors
from kubekv_server.kv.range import execute_range, range_end_arg

LeaseExists = Callable[[int], bool]

_EMPTY_KV = kv_pb2.KeyValue()


# ---------------------------------------------------------------- compares


def _compare_kv(c: pb.Compare, kv: kv_pb2.KeyValue) -> bool:
    target = c.target
    if target == pb.Compare.VALUE:
        a, b = kv.value, c.value
    elif target == pb.Compare.CREATE:
        a, b = kv.create_revision, c.create_revision
    elif target == pb.Compare.MOD:
        a, b = kv.mod_revision, c.mod_revision
    elif target == pb.Compare.VERSION:
        a, b = kv.version, c.version
    elif target == pb.Compare.LEASE:
        a, b = kv.lease, c.lease
    else:
        a = b = 0  # etcd's compareKV: an unknown target leaves the comparison "equal"
    result = c.result
    if result == pb.Compare.EQUAL:
        return a == b
    if result == pb.Compare.NOT_EQUAL:
        return a != b
    if result == pb.Compare.GREATER:
        return a > b
    if result == pb.Compare.LESS:
        return a < b
    return True


def _compare(txn, c: pb.Compare) -> bool:
    try:
        kvs = txn.range(c.key, range_end_arg(c.range_end)).kvs
    except Exception:  # etcd treats a failed read as a failed compare
        return False
    if not kvs:
        if c.target == pb.Compare.VALUE:
            return False  # a missing key has no value to compare, not an empty one
        return _compare_kv(c, _EMPTY_KV)
    return all(_compare_kv(c, kv) for kv in kvs)


def compare_path(txn, r: pb.TxnRequest) -> list[bool]:
    """Evaluate compares of a txn and of the nested txns on its taken branch, depth first."""
    succeeded = True
    for c in r.compare:
        if not _compare(txn, c):
            succeeded = False
            break
    path = [succeeded]
    for op in r.success if succeeded else r.failure:
        if op.WhichOneof("request") == "request_txn":
            path.extend(compare_path(txn, op.request_txn))
    return path


def is_read_only(r: pb.TxnRequest) -> bool:
    """A txn whose both branches hold only Ranges: served without a log entry.

    As etcd's isTxnReadonly, a nested txn makes a txn a write even if it only
    reads: it is proposed, so --max-request-bytes applies to it.
    """
    for op in r.success:
        if op.WhichOneof("request") != "request_range":
            return False
    for op in r.failure:
        if op.WhichOneof("request") != "request_range":
            return False
    return True


# ---------------------------------------------------------- pre-write checks


def _check_ops(txn, r: pb.TxnRequest, path: list[bool], lease_exists: LeaseExists,
               ranges: list[pb.RangeRequest]) -> int:
    """Check every put on the taken branches, in order, and gather their ranges into
    `ranges`; returns nested txns consumed."""
    count = 0
    for op in r.success if path[0] else r.failure:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            _check_put(txn, op.request_put, lease_exists)
        elif kind == "request_range":
            ranges.append(op.request_range)
        elif kind == "request_txn":
            used = _check_ops(txn, op.request_txn, path[1:], lease_exists, ranges)
            count += used + 1
            path = path[used + 1 :]
    return count


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


def _new_txn_response(kinds: list[str | None], succeeded: bool, resp: pb.TxnResponse) -> None:
    """The taken branch's responses, empty, one per op of `kinds` (their oneof fields)."""
    resp.header.SetInParent()  # etcd sends nested txns an empty header, not none
    resp.succeeded = succeeded
    add = resp.responses.add
    for kind in kinds:
        out = add()
        if kind == "request_range":
            out.response_range.SetInParent()
        elif kind == "request_put":
            out.response_put.SetInParent()
        elif kind == "request_delete_range":
            out.response_delete_range.SetInParent()
        elif kind == "request_txn":
            out.response_txn.SetInParent()


def _apply_txn_ops(
    txn, r: pb.TxnRequest, path: list[bool], resp: pb.TxnResponse, lease_exists: LeaseExists
) -> int:
    ops = r.success if path[0] else r.failure
    kinds = [op.WhichOneof("request") for op in ops]
    _new_txn_response(kinds, path[0], resp)
    used_total = 0
    for op, kind, out in zip(ops, kinds, resp.responses, strict=True):
        if kind == "request_range":
            out.response_range.CopyFrom(execute_range(txn, op.request_range))
        elif kind == "request_put":
            apply_put(txn, op.request_put, lease_exists, checked=True, resp=out.response_put)
        elif kind == "request_delete_range":
            out.response_delete_range.CopyFrom(apply_delete_range(txn, op.request_delete_range))
        elif kind == "request_txn":
            used = _apply_txn_ops(txn, op.request_txn, path[1:], out.response_txn, lease_exists)
            used_total += used + 1
            path = path[used + 1 :]
    return used_total


def check_txn(txn, r: pb.TxnRequest, path: list[bool], lease_exists: LeaseExists) -> None:
    """Refuse, before any write, what etcd's applier refuses: missing keys and leases
    (every put on the taken branches first, in order), then revisions (every range).
    One walk of the branches checks the puts and gathers the ranges."""
    ranges: list[pb.RangeRequest] = []
    _check_ops(txn, r, path, lease_exists, ranges)
    for rr in ranges:
        _check_range_revision(txn, rr)


def apply_txn(txn, r: pb.TxnRequest, lease_exists: LeaseExists) -> pb.TxnResponse:
    """Run a Txn in an open MVCC transaction (read or write); returns the TxnResponse."""
    path = compare_path(txn, r)
    check_txn(txn, r, path, lease_exists)
    resp = pb.TxnResponse()
    _apply_txn_ops(txn, r, path, resp, lease_exists)
    resp.header.revision = txn.current_revision + (1 if getattr(txn, "changed", False) else 0)
    return resp
