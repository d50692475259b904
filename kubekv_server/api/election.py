"""v3electionpb.Election: etcd's v3election, the Election recipe run in the server."""

from __future__ import annotations

from etcdproto.v3electionpb import v3election_pb2 as epb
from etcdproto.v3electionpb import v3election_pb2_grpc
from kubekv_server import errors
from kubekv_server.api.recipes import Recipes
from kubekv_server.api.status import etcd_errors
from kubekv_server.errors import EtcdError
from kubekv_server.member.member import Member


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, member: Member) -> None:
        self.member = member
        self.recipes = Recipes(member)

    @etcd_errors
    def Campaign(self, request, context):
        hdr, key, rev, lease = self.recipes.campaign(
            request.name, request.lease, request.value, context.is_active)
        resp = epb.CampaignResponse()
        resp.header.CopyFrom(hdr)
        resp.leader.name = request.name
        resp.leader.key = key
        resp.leader.rev = rev
        resp.leader.lease = lease
        return resp

    @etcd_errors
    def Proclaim(self, request, context):
        if not request.HasField("leader"):
            raise errors.MISSING_LEADER_KEY
        ld = request.leader
        hdr = self.recipes.proclaim(ld.key, ld.rev, ld.lease, request.value)
        resp = epb.ProclaimResponse()
        resp.header.CopyFrom(hdr)
        return resp

    @etcd_errors
    def Leader(self, request, context):
        hdr, kv = self.recipes.leader(request.name)
        resp = epb.LeaderResponse(kv=kv)
        resp.header.CopyFrom(hdr)
        return resp

    def Observe(self, request, context):
        try:
            for hdr, kv in self.recipes.observe(request.name, context.is_active):
                resp = epb.LeaderResponse(kv=kv)
                resp.header.CopyFrom(hdr)
                yield resp
        except EtcdError as exc:
            if context.is_active():
                context.abort(exc.code, exc.message)

    @etcd_errors
    def Resign(self, request, context):
        if not request.HasField("leader"):
            raise errors.MISSING_LEADER_KEY
        hdr = self.recipes.resign(request.leader.key, request.leader.rev)
        resp = epb.ResignResponse()
        resp.header.CopyFrom(hdr)
        return resp
