"""etcdserverpb.Maintenance: status, alarms, hashes."""

from __future__ import annotations

import hashlib

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.api.status import etcd_errors
from kubekv_server.member.member import Member
from kubekv_server.rpc.calls import inline

# etcd sends the snapshot in 32 KiB messages.
SNAPSHOT_CHUNK = 32 * 1024


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
            from kubekv_server.apply.applier import mvcc_error

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
        from kubekv_server.backend.state_snapshot import LOCAL_META_KEYS

        self.member.node.commit_state()  # every applied change in the file it hashes
        resp = pb.HashResponse(hash=self.member.backend.hash(LOCAL_META_KEYS))
        self.member.header(resp.header, self.member.current_revision())
        return resp

    def Snapshot(self, request, context):
        """Stream the state as an etcd backend file, then its SHA-256 (worker thread).

        `etcdctl snapshot save/status/restore` and real etcd read the result; like
        etcd, the last message carries only the checksum, so the saved file is
        whole pages plus 32 bytes.
        """
        data = self.member.export_snapshot()
        digest = hashlib.sha256()
        total, sent = len(data), 0
        while sent < total:
            chunk = data[sent : sent + SNAPSHOT_CHUNK]
            sent += len(chunk)
            digest.update(chunk)
            yield pb.SnapshotResponse(remaining_bytes=total - sent, blob=chunk)
        yield pb.SnapshotResponse(remaining_bytes=0, blob=digest.digest())

    @etcd_errors
    async def Defragment(self, request, context):
        await self.member.defragment()
        resp = pb.DefragmentResponse()
        self.member.header(resp.header, self.member.current_revision())
        return resp
