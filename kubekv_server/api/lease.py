"""etcdserverpb.Lease: grant, revoke, keep-alive stream, time-to-live, list (v3rpc/lease.go)."""

from __future__ import annotations

import logging

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.api.status import etcd_errors
from kubekv_server.errors import EtcdError
from kubekv_server.member.member import Member

log = logging.getLogger("kubekv.lease")


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    @etcd_errors
    def LeaseGrant(self, request, context):
        return self.member.lease_grant(request)

    @etcd_errors
    def LeaseRevoke(self, request, context):
        return self.member.lease_revoke(request)

    @etcd_errors
    def LeaseTimeToLive(self, request, context):
        return self.member.lease_time_to_live(request)

    @etcd_errors
    def LeaseLeases(self, request, context):
        return self.member.lease_leases()

    def LeaseKeepAlive(self, request_iterator, context):
        """One response per request, in order; a gone lease answers TTL 0 (etcd)."""
        m = self.member
        try:
            for req in request_iterator:
                ttl = m.lease_renew(req.ID)
                resp = pb.LeaseKeepAliveResponse(ID=req.ID, TTL=ttl)
                m.header(resp.header, m.current_revision())
                yield resp
        except EtcdError as exc:
            context.abort(exc.code, exc.message)
