"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2_grpc

from .. import request_checks
from ..member import Member
from .status import etcd_errors


class KVService(rpc_pb2_grpc.KVServicer):
    """Thin handlers: validate, then read locally or propose, as etcd's kvServer does."""

    def __init__(self, member: Member) -> None:
        self.member = member

    @etcd_errors
    def Range(self, request, context):
        request_checks.check_range(request)
        if not request.serializable:
            self.member.wait_linearizable()
        return self.member.range(request)

    @etcd_errors
    def Put(self, request, context):
        request_checks.check_put(request)
        return self.member.put(request)

    @etcd_errors
    def DeleteRange(self, request, context):
        request_checks.check_delete(request)
        return self.member.delete_range(request)

    @etcd_errors
    def Txn(self, request, context):
        request_checks.check_txn(request, self.member.cfg.max_txn_ops)
        return self.member.txn(request)

    @etcd_errors
    def Compact(self, request, context):
        return self.member.compact(request)
