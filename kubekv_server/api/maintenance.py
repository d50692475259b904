"""etcdserverpb.Maintenance: status, alarms, hashes."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc

from ..member import Member
from ..rpc.calls import inline
from .status import etcd_errors


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    @inline
    @etcd_errors
    def Status(self, request, context):
        return self.member.status()

    @etcd_errors
    def Alarm(self, request, context):
        resp = pb.AlarmResponse()
        if request.action == pb.AlarmRequest.GET:
            resp.alarms.extend(self.member.alarms())
        else:
            resp = self.member.propose("alarm", request)
        self.member.header(resp.header, self.member.current_revision())
        return resp

    @etcd_errors
    def HashKV(self, request, context):
        try:
            h, compact_rev, _ = self.member.mvcc.hash_kv(request.revision)
        except Exception as exc:
            from ..applier import mvcc_error

            raise mvcc_error(exc) from None
        resp = pb.HashKVResponse(hash=h, compact_revision=compact_rev)
        self.member.header(resp.header, self.member.current_revision())
        return resp

    @etcd_errors
    async def MoveLeader(self, request, context):
        await self.member.move_leader(request.targetID)
        resp = pb.MoveLeaderResponse()
        self.member.header(resp.header, self.member.current_revision())
        return resp

    @etcd_errors
    def Hash(self, request, context):
        """CRC-32 of the whole state database (etcd hashes its backend file); worker thread."""
        from ..state_snapshot import LOCAL_META_KEYS

        resp = pb.HashResponse(hash=self.member.backend.hash(LOCAL_META_KEYS))
        self.member.header(resp.header, self.member.current_revision())
        return resp
