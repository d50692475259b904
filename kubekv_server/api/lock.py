"""v3lockpb.Lock: etcd's v3lock, the Mutex recipe run in the server (see recipes.py)."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.v3lockpb import v3lock_pb2, v3lock_pb2_grpc
from kubekv_server.api.recipes import Recipes
from kubekv_server.api.status import etcd_errors
from kubekv_server.member.member import Member


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, member: Member) -> None:
        self.member = member
        self.recipes = Recipes(member)

    @etcd_errors
    def Lock(self, request, context):
        hdr, key = self.recipes.lock(request.name, request.lease, context.is_active)
        resp = v3lock_pb2.LockResponse(key=key)
        resp.header.CopyFrom(hdr)
        return resp

    @etcd_errors
    def Unlock(self, request, context):
        d = self.member.blocking(self.member.delete_range, pb.DeleteRangeRequest(key=request.key))
        resp = v3lock_pb2.UnlockResponse()
        resp.header.CopyFrom(d.header)
        return resp
