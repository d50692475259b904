#!/usr/bin/env python
"""Round trip of one Raft message over the peer transport, in one process on one loop.

Member 1's GrpcTransport sends a MsgHeartbeat to member 2's peer server (kubekv's own,
rpc/peer_server.py, as a member serves it); member 2's stand-in runner answers each
heartbeat it is stepped with a MsgHeartbeatResp through its own transport, and member
1's records the time from `send` to `step`. So each round trip is two peer messages,
each the sender's write (stream_client), the receiver's read, parse and checks, and
its `Runner.step`, with no Raft and no disk: the peer path's own hops and CPU, far less
sensitive to the machine's load than a cluster benchmark. One message in flight.

    PYTHONPATH=TREE python bench/peer_rtt.py [--n 5000]   # the tree's peer code

Prints p50/p90/p99 of the round trip and the process CPU per round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time


async def run(n: int, warmup: int) -> None:
    from etcdproto.raftpb import peer_pb2
    from etcdproto.raftpb import raft_pb2 as pb
    from kubekv_server.peer.call_guard import PeerCallGuard
    from kubekv_server.peer.receiver import RaftPeerServicer
    from kubekv_server.peer.sender import GrpcTransport
    from kubekv_server.rpc.peer_server import PeerServer

    cid = 0xC1
    loop = asyncio.get_running_loop()
    transports: dict[int, GrpcTransport] = {}
    done: list[asyncio.Future] = []
    sent = [0]

    class Stepper:
        """Member `me`'s runner: 2 answers heartbeats, 1 times the answers."""

        def __init__(self, me: int) -> None:
            self.me = me

        def step(self, m: pb.Message) -> bool:
            if self.me == 2:
                transports[2].send([pb.Message(type=pb.MsgHeartbeatResp, from_=2, to=1,
                                               term=1, commit=m.commit)])
            elif done and not done[-1].done():
                done[-1].set_result(time.perf_counter_ns() - sent[0])
            return True

    servers = []
    for me in (1, 2):
        server = PeerServer(PeerCallGuard())
        server.add_service(peer_pb2.DESCRIPTOR.services_by_name["RaftPeer"],
                           RaftPeerServicer(me, cid, Stepper(me)), [peer_pb2])
        await server.listen("127.0.0.1:0", None)
        servers.append(server)
        transports[me] = GrpcTransport(me, cid)
    transports[1].add_peer(2, [f"http://127.0.0.1:{servers[1].bound_port()}"])
    transports[2].add_peer(1, [f"http://127.0.0.1:{servers[0].bound_port()}"])
    rtts = []
    cpu0 = 0.0
    for i in range(warmup + n):
        if i == warmup:
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            cpu0 = cpu0.ru_utime + cpu0.ru_stime
        done.append(loop.create_future())
        sent[0] = time.perf_counter_ns()
        transports[1].send([pb.Message(type=pb.MsgHeartbeat, from_=1, to=2, term=1, commit=i)])
        rtt = await asyncio.wait_for(done[-1], 5)
        done.clear()
        if i >= warmup:
            rtts.append(rtt / 1e3)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - cpu0
    for t in transports.values():
        await t.close()
    for s in servers:
        await s.stop(0)
    rtts.sort()
    q = lambda p: rtts[min(len(rtts) - 1, int(len(rtts) * p))]  # noqa: E731
    print(f"round trip µs: p50 {q(0.5):.0f}  p90 {q(0.9):.0f}  p99 {q(0.99):.0f}  "
          f"(n={n}); CPU per round trip {cpu / n * 1e6:.0f} µs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="round trips measured")
    ap.add_argument("--warmup", type=int, default=200)
    a = ap.parse_args()
    asyncio.run(run(a.n, a.warmup))


if __name__ == "__main__":
    main()
