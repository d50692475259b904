"""etcdserverpb.Cluster: the member list (membership changes arrive with replication)."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc

from ..member import Member
from ..rpc.calls import inline
from .status import etcd_errors


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    @inline
    @etcd_errors
    def MemberList(self, request, context):
        resp = pb.MemberListResponse()
        for m in self.member.members:
            resp.members.add(
                ID=m["id"],
                name=m["name"],
                peerURLs=m["peerURLs"],
                clientURLs=m["clientURLs"],
                isLearner=m["isLearner"],
            )
        self.member.header(resp.header, self.member.current_revision())
        return resp
