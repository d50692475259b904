"""kubekv's peer server steps a received Raft batch in the loop pass that parsed its bytes.

Driven over a fake socket (no loop iteration between the read and the assertion), with
`h2` as the sending peer: the batch is stepped, its flow-control window given back and
nothing left scheduled for a later pass; a refused batch ends the call in that pass too
and stops what came after it in the same read.
"""

from __future__ import annotations

import asyncio

import h2.events

from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import raft_pb2 as pb
from kubekv_server.peer.call_guard import PeerCallGuard
from kubekv_server.peer.receiver import RaftPeerServicer
from kubekv_server.rpc.connection import Http2Connection
from kubekv_server.rpc.peer_server import PeerServer
from tests.rpc.h2_client import open_grpc_call

CID = 0xC1C1


class Recorder:
    def __init__(self) -> None:
        self.stepped: list[pb.Message] = []

    def step(self, m: pb.Message) -> bool:
        self.stepped.append(m)
        return True


def framed(cluster_id: int, *commits: int) -> bytes:
    data = peer_pb.MessageBatch(cluster_id=cluster_id, from_=1, to=2, messages=[
        pb.Message(type=pb.MsgHeartbeat, from_=1, to=2, term=1, commit=c) for c in commits
    ]).SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def open_stream(loop: asyncio.AbstractEventLoop):
    """A peer server with a recording runner, a connection to it over a fake socket and
    an h2 client that opened RaftPeer.Stream on it (the setup's passes all run)."""
    rx = Recorder()

    async def setup() -> PeerServer:
        server = PeerServer(PeerCallGuard())
        server.add_service(peer_pb.DESCRIPTOR.services_by_name["RaftPeer"],
                           RaftPeerServicer(2, CID, rx), [peer_pb])
        return server

    server = loop.run_until_complete(setup())
    conn = Http2Connection(server.rpc)
    transport, client, sid = open_grpc_call(conn, "/raftpb.RaftPeer/Stream")
    loop.run_until_complete(asyncio.sleep(0))
    client.receive_data(transport.take())
    return server, conn, transport, client, sid, rx


def close(loop: asyncio.AbstractEventLoop, server: PeerServer, conn: Http2Connection) -> None:
    conn.connection_lost(None)
    loop.run_until_complete(server.stop(0))


def test_a_batch_is_stepped_in_the_pass_that_parsed_it():
    loop = asyncio.new_event_loop()
    try:
        server, conn, transport, client, sid, rx = open_stream(loop)
        assert server.guard.active == 1
        for commits in ((1, 2), (3,)):
            client.send_data(sid, framed(CID, *commits))
            conn.data_received(client.data_to_send())
            # no loop iteration ran: the read itself stepped the batch, gave its window
            # back and wrote; nothing waits for a later pass
            assert [m.commit for m in rx.stepped][-len(commits):] == list(commits)
            assert conn._buffered_requests == 0  # noqa: SLF001 - nothing held
            assert not loop._ready  # noqa: SLF001 - no task, callback or flush scheduled
        client.end_stream(sid)
        conn.data_received(client.data_to_send())
        events = client.receive_data(transport.take())
        ended = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        assert ended and (b"grpc-status", b"0") in ended[0].headers
        assert server.guard.active == 0
        close(loop, server, conn)
    finally:
        loop.close()


def test_a_refused_batch_ends_the_call_in_its_pass_and_stops_the_rest_of_the_read():
    loop = asyncio.new_event_loop()
    try:
        server, conn, transport, client, sid, rx = open_stream(loop)
        client.send_data(sid, framed(CID, 1) + framed(CID + 1, 2) + framed(CID, 3))
        conn.data_received(client.data_to_send())
        assert [m.commit for m in rx.stepped] == [1]
        assert server.guard.active == 0
        events = client.receive_data(transport.take())
        status = [dict(e.headers) for e in events
                  if isinstance(e, h2.events.TrailersReceived | h2.events.ResponseReceived)]
        assert status and status[-1][b"grpc-status"] == b"9"  # FAILED_PRECONDITION
        assert b"cluster ID mismatch" in status[-1][b"grpc-message"]
        close(loop, server, conn)
    finally:
        loop.close()
