"""etcdserverpb.Cluster: member list and membership changes through Raft conf changes."""

from __future__ import annotations

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.etcdserverpb import rpc_pb2_grpc
from kubekv_server.api.status import chain, etcd_errors
from kubekv_server.member.member import Member
from kubekv_server.rpc.calls import inline


def _fill(member: Member, resp) -> None:
    for m in member.members:
        resp.members.add(ID=m["id"], name=m["name"], peerURLs=m["peerURLs"],
                         clientURLs=m["clientURLs"], isLearner=m["isLearner"])
    member.header(resp.header)  # etcd's ClusterServer header has no revision


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, member: Member) -> None:
        self.member = member

    @inline
    @etcd_errors
    def MemberList(self, request, context):
        """etcd 3.5: `linearizable` waits for a read index first (LinearizableReadNotify),
        so a list read anywhere after a MemberAdd/Remove answered shows it."""
        def answer() -> pb.MemberListResponse:
            resp = pb.MemberListResponse()
            _fill(self.member, resp)
            return resp

        if request.linearizable:
            barrier = self.member.read_barrier()
            if barrier is not None:
                return chain(barrier, answer)
        return answer()

    @etcd_errors
    async def MemberAdd(self, request, context):
        m = await self.member.member_add(list(request.peerURLs), request.isLearner)
        resp = pb.MemberAddResponse()
        resp.member.ID = m["id"]
        resp.member.peerURLs.extend(m["peerURLs"])
        resp.member.isLearner = m["isLearner"]
        _fill(self.member, resp)
        return resp

    @etcd_errors
    async def MemberRemove(self, request, context):
        await self.member.member_remove(request.ID)
        resp = pb.MemberRemoveResponse()
        _fill(self.member, resp)
        return resp

    @etcd_errors
    async def MemberUpdate(self, request, context):
        await self.member.member_update(request.ID, list(request.peerURLs))
        resp = pb.MemberUpdateResponse()
        _fill(self.member, resp)
        return resp

    @etcd_errors
    async def MemberPromote(self, request, context):
        await self.member.member_promote(request.ID)
        resp = pb.MemberPromoteResponse()
        _fill(self.member, resp)
        return resp
