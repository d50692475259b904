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
    async def Range(self, request, context):
        request_checks.check_range(request)
        if not request.serializable:
            await self.member.wait_linearizable()
        return self.member.range(request)

    @etcd_errors
    async def Put(self, request, context):
        request_checks.check_put(request)
        return await self.member.put(request)

    @etcd_errors
    async def DeleteRange(self, request, context):
        request_checks.check_delete(request)
        return await self.member.delete_range(request)

    @etcd_errors
    async def Txn(self, request, context):
        request_checks.check_txn(request, self.member.cfg.max_txn_ops)
        return await self.member.txn(request)

    @etcd_errors
    async def Compact(self, request, context):
        return await self.member.compact(request)
