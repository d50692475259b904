"""What the Txn checks hand the handler besides their errors (the errors themselves are
compared with etcd's in tests/differential/test_txn.py): whether the Txn only reads
(etcd's isTxnReadonly: then it is not proposed) and its quota cost (etcd's costTxnReq)."""

from __future__ import annotations

import pytest

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server import errors
from kubekv_server.api.request_checks import check_txn
from kubekv_server.member.quota import KV_OVERHEAD


def _put(key: bytes, value: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def _get(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key))


def _delete(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


def _nested(*success: pb.RequestOp) -> pb.RequestOp:
    return pb.RequestOp(request_txn=pb.TxnRequest(success=success))


@pytest.mark.parametrize("success,failure,read_only", [
    ([], [], True),
    ([_get(b"a")], [_get(b"b"), _get(b"c")], True),
    ([_get(b"a")], [_put(b"b")], False),
    ([_delete(b"a")], [], False),
    # as etcd: a nested txn makes a write even if it only reads
    ([_nested(_get(b"a"))], [], False),
])
def test_read_only_is_etcds_is_txn_readonly(success, failure, read_only):
    assert check_txn(pb.TxnRequest(success=success, failure=failure), 128)[0] is read_only


def test_cost_is_the_costlier_branchs_top_level_puts():
    big, small = b"v" * 100, b"v" * 10
    r = pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=pb.Compare.MOD, mod_revision=3)],
        success=[_put(b"a", small), _get(b"x"), _put(b"bb", small)],
        failure=[_put(b"c", big), _delete(b"y"), _nested(_put(b"d", big * 10))],
    )
    then = 2 * KV_OVERHEAD + len(b"a") + len(b"bb") + 2 * len(small)
    else_ = KV_OVERHEAD + len(b"c") + len(big)  # the nested put is not counted
    assert check_txn(r, 128) == (False, max(then, else_))
    r.failure.pop(0)
    assert check_txn(r, 128) == (False, then)
    assert check_txn(pb.TxnRequest(success=[_get(b"a")]), 128) == (True, 0)


def test_the_kube_update_txn():
    """kube-apiserver's GuaranteedUpdate: If ModRevision == rev Then Put Else Get."""
    value = b"v" * 256
    r = pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=pb.Compare.MOD, mod_revision=7)],
        success=[_put(b"k", value)], failure=[_get(b"k")])
    assert check_txn(r, 128) == (False, KV_OVERHEAD + 1 + len(value))
    with pytest.raises(type(errors.DUPLICATE_KEY)) as err:
        check_txn(pb.TxnRequest(success=[_put(b"k"), _put(b"k", value)]), 128)
    assert err.value is errors.DUPLICATE_KEY
