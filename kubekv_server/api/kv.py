"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.api import request_checks
from kubekv_server.api.status import chain, etcd_errors
from kubekv_server.member.member import Member
from kubekv_server.rpc.calls import inline


class KVService(rpc_pb2_grpc.KVServicer):
    """Thin handlers on the event loop: validate, then read locally or propose."""

    def __init__(self, member: Member) -> None:
        self.member = member

    @inline
    @etcd_errors
    def Range(self, request, context):
        request_checks.check_range(request)
        if not request.serializable:
            barrier = self.member.read_barrier()
            if barrier is not None:
                return chain(barrier, lambda: self.member.range_for_client(request))
        return self.member.range_for_client(request)

    @inline
    @etcd_errors
    def Put(self, request, context):
        return self.member.put(request, request_checks.check_put(request))

    @inline
    @etcd_errors
    def DeleteRange(self, request, context):
        request_checks.check_delete(request)
        return self.member.delete_range(request)

    @inline
    @etcd_errors
    def Txn(self, request, context):
        member = self.member
        read_only, cost = request_checks.check_txn(request, member.cfg.max_txn_ops)
        if not read_only:
            return member.txn(request, cost)
        barrier = member.read_barrier()
        if barrier is not None:
            return chain(barrier, lambda: member.read_only_txn(request))
        return member.read_only_txn(request)

    @etcd_errors
    def Compact(self, request, context):
        """Blocking (a physical compaction waits for its rows to go): runs on a worker thread."""
        return self.member.compact(request)
