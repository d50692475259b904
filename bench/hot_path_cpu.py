"""Thread CPU per request of four parts of the write path, in-process, without a server:
numbers a shared machine's load moves far less than kv_bench.py's CPU per 1k requests.

    PYTHONPATH=$TREE python3 $TREE/bench/hot_path_cpu.py rpc [--observer]
    PYTHONPATH=$TREE python3 $TREE/bench/hot_path_cpu.py apply put|txn [--server-like]
    PYTHONPATH=$TREE python3 $TREE/bench/hot_path_cpu.py apply put --server-like --batch 1
    PYTHONPATH=$TREE python3 $TREE/bench/hot_path_cpu.py api
    PYTHONPATH=$TREE python3 $TREE/bench/hot_path_cpu.py propose [txn]

rpc    unary Puts over `Http2Connection` and a fake socket, 64 requests per read from an
       `h2` client (whose own work is not timed); an inline handler answers at once.
       `--observer` counts them in grpc_server_{started,handled}_total as the server does.
apply  `Applier.apply` on batches of 64 Put or kube-style update Txn entries (If
       mod_revision == last seen, Then Put, Else Get), state db in /dev/shm.
       `--server-like`: as the server at 64 in flight instead: batches of 20 entries on
       keys drawn at random from 10,000 preloaded ones, the state db on disk (TMPDIR) and
       its apply txn committed every 900 entries (~0.1 s of Puts at 9k/s, the backend's
       batch interval), so the uncommitted view and LMDB's dirty pages grow as there.
       `--batch 1`: as at 1 in flight instead, one entry per batch, committed every 150
       (~0.1 s of Puts at 1 in flight): the per-batch cost, commits included.
       `--inline`: through `Applier.apply_inline` as the loop applies a small batch
       while the apply thread is idle, `apply` where it declines (the count printed);
       a commit landing is waited for between batches, outside the clock (at 1 in
       flight the server's land between writes, not under the next one).
api    what the loop thread does to a kube Txn (and a Put) before proposing it: the
       request checks, is_read_only, the quota cost, serialization, the log entry.
propose  a Put's handler and the member's side of it on the loop thread, RaftNode
       stubbed: `KVService.Put` (checks, quota cost, id, log entry, proposal, request
       timeout) for 64 requests, then their applied batch answered (headers filled,
       proposals resolved) as `RaftNode._applied` does; the responses are made before
       the clock starts. `propose txn`: kube update Txns through `KVService.Txn`.

Each prints the best of 7 rounds of thread CPU (`time.thread_time`) per request.
Alternate trees (A, B, A, B...) to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.kube_txn import update_request  # noqa: E402
from etcdproto.etcdserverpb import rpc_pb2 as pb  # noqa: E402

VALUE = b"v" * 256
KEY = b"bench/key/00001"
ID = (0x1234 << 48) | (1 << 30) | 777


def rpc(observer: bool) -> float:
    import h2.config
    import h2.connection
    import h2.events

    from kubekv_server.rpc.calls import Method, inline
    from kubekv_server.rpc.connection import Http2Connection
    from kubekv_server.rpc.server import RpcServer
    from tests.rpc.fake_transport import FakeTransport

    path = b"/etcdserverpb.KV/Put"

    @inline
    def put(req, ctx):
        resp = pb.PutResponse()
        h = resp.header
        h.revision, h.cluster_id, h.member_id, h.raft_term = 5, 123456789, 987654321, 2
        return resp

    loop = asyncio.new_event_loop()
    srv = RpcServer(loop, max_receive_bytes=2 << 20)
    srv.methods[path] = Method.of(path, pb.PutRequest, False, False, put)
    if observer:
        from kubekv_server.metrics.exposition import Counter
        from kubekv_server.metrics.member_metrics import MemberMetrics

        class Observer:  # MemberMetrics' call counting, without a member behind it
            timed = False
            received_bytes = sent_bytes = 0
            grpc_handling = None
            grpc_started = Counter("s", "s", ("grpc_method", "grpc_service", "grpc_type"))
            grpc_handled = Counter("h", "h", ("grpc_code", "grpc_method", "grpc_service",
                                              "grpc_type"))
            started = MemberMetrics.started
            handled = MemberMetrics.handled

        srv.observer = Observer()
    conn = Http2Connection(srv)
    transport = FakeTransport()
    conn.connection_made(transport)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    body = pb.PutRequest(key=KEY, value=VALUE).SerializeToString()
    message = b"\x00" + len(body).to_bytes(4, "big") + body
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
               (":authority", "x"), ("content-type", "application/grpc"),
               ("te", "trailers"), ("grpc-timeout", "30S"), ("user-agent", "grpc-python")]

    def drain() -> None:
        for _ in range(1000):
            loop.run_until_complete(asyncio.sleep(0))
            if not loop._ready:  # noqa: SLF001 - nothing scheduled: the passes are done
                return

    def one_read(n: int = 64) -> float:
        for _ in range(n):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, headers)
            client.send_data(sid, message, end_stream=True)
        data = client.data_to_send()
        t = time.thread_time()
        conn.data_received(data)
        drain()
        spent = time.thread_time() - t
        for ev in client.receive_data(transport.take()):
            if isinstance(ev, h2.events.DataReceived):
                client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        return spent

    for _ in range(20):
        one_read()
    return min(sum(one_read() for _ in range(40)) / (40 * 64) for _ in range(7))


def apply(kind: str, server_like: bool = False, per_batch: int = 20,
          inline: bool = False) -> float:
    import random

    from etcdproto.raftpb import raft_pb2
    from kubekv_server.apply.applier import Applier
    from kubekv_server.auth import AuthStore
    from kubekv_server.auth.tokens import provider_from_flags
    from kubekv_server.backend.state_db import Backend
    from kubekv_server.lease import LeaseStore
    from kubekv_server.member.proposals import encode_internal
    from kubekv_server.mvcc import MVCCStore

    shm = pathlib.Path("/dev/shm")
    tmp = tempfile.mkdtemp(dir=None if server_like or not shm.is_dir() else shm)
    nkeys, size = (10000, per_batch) if server_like else (64, 64)
    rng = random.Random(1)
    try:
        backend = Backend(tmp + "/db", batch_interval=1e9,
                          batch_limit=900 if per_batch > 1 else 150) \
            if server_like else Backend(tmp + "/db")
        auth = AuthStore(backend, provider_from_flags("simple", 300), False,
                         applied_index=lambda: 0)
        applier = Applier(backend, MVCCStore(backend.env), LeaseStore(backend, 5), auth=auth)
        index, rid = applier.applied_index, ID
        revisions: dict[bytes, int] = {}
        declined = [0, 0]  # of the batches tried inline: declined, all

        def batch(keys: list[bytes]) -> list:
            nonlocal index, rid
            entries = []
            for key in keys:
                if kind == "put":
                    field, req = "put", pb.PutRequest(key=key, value=VALUE)
                else:
                    field, req = "txn", update_request(key, VALUE, revisions.get(key, 0))
                index += 1
                rid += 1
                data = encode_internal(rid, field, req.SerializeToString(), ("", 0))
                entries.append(raft_pb2.Entry(index=index, term=1, data=data,
                                              type=raft_pb2.EntryNormal))
            return entries

        def run(keys: list[bytes]) -> float:
            entries = batch(keys)
            if inline and backend.landing:  # (the server's commits land between writes)
                backend.wait_landing()
            t = time.thread_time()
            out = applier.apply_inline(entries) if inline else None
            if inline:
                declined[0] += out is None
                declined[1] += 1
            if out is None:
                out = applier.apply(entries)
            spent = time.thread_time() - t
            for key, (_rid, resp) in zip(keys, out.results, strict=True):
                if kind == "txn":
                    assert resp.succeeded, resp
                    revisions[key] = resp.header.revision
            return spent

        all_keys = [b"bench/key/%05d" % i for i in range(nkeys)]
        if server_like:  # preload, as the server's keys after its first seconds of load
            for i in range(0, nkeys, 500):
                run(all_keys[i:i + 500])
            backend.commit()

        def rounds(n: int = 30) -> float:
            if not server_like:
                return sum(run(all_keys) for _ in range(n)) / (n * size)
            n *= 3 if size > 1 else 60
            return sum(run(rng.sample(all_keys, size)) for _ in range(n)) / (n * size)

        rounds()
        best = min(rounds() for _ in range(7))
        if inline:
            print(f"apply_inline declined {declined[0]} of {declined[1]} batches")
        return best
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def api() -> tuple[float, float]:
    from kubekv_server.api import request_checks
    from kubekv_server.member.proposals import encode_internal

    # requests parsed afresh, as the server parses each one: reading the same message
    # again and again finds its upb wrappers warm and measures about half the cost
    n = 4096
    keys = [b"bench/key/%05d" % i for i in range(n)]
    txns = [update_request(k, VALUE, 12345 + i).SerializeToString() for i, k in enumerate(keys)]
    puts = [pb.PutRequest(key=k, value=VALUE).SerializeToString() for k in keys]

    def txn_path(reqs: list) -> None:  # KVService.Txn, Member.txn, Proposer._encode
        for txn in reqs:
            request_checks.check_txn(txn, 128)
            encode_internal(ID, "txn", txn.SerializeToString(), ("", 0))

    def put_path(reqs: list) -> None:  # KVService.Put, Member.put, Proposer._encode
        for put in reqs:
            request_checks.check_put(put)  # and the quota cost
            encode_internal(ID, "put", put.SerializeToString(), ("", 0))

    def best(path, data: list, parse) -> float:
        spent = []
        for _ in range(7):
            reqs = [parse(d) for d in data]
            t = time.thread_time()
            path(reqs)
            spent.append(time.thread_time() - t)
        return min(spent) / len(data)

    return (best(txn_path, txns, pb.TxnRequest.FromString),
            best(put_path, puts, pb.PutRequest.FromString))


def propose(kind: str = "put") -> float:
    from types import MethodType, SimpleNamespace

    from kubekv_server.api.kv import KVService
    from kubekv_server.apply.applier import BatchResult
    from kubekv_server.member.member import Member
    from kubekv_server.member.proposals import Proposer
    from kubekv_server.replication.raft_node import Proposal, resolve_proposals

    loop = asyncio.new_event_loop()
    futures: dict[int, asyncio.Future] = {}
    listeners: list = []
    ids = iter(range(ID, ID + 10**9))

    def node_propose(rid: int, data: bytes) -> asyncio.Future:  # RaftNode.propose's part
        fut = futures[rid] = Proposal(loop=loop)
        return fut

    node = SimpleNamespace(next_id=ids.__next__, propose=node_propose, term=2,
                           add_listener=lambda fn, before_answers=False: listeners.append(fn))
    member = SimpleNamespace(cluster_id=123456789, member_id=987654321, node=node,
                             cfg=SimpleNamespace(max_txn_ops=128))
    proposer = Proposer(loop, node, 987654321, 1536 * 1024, 2 << 30, lambda: 1 << 20,
                        lambda h, revision=None, term=None: Member.header(member, h, revision,
                                                                            term))
    member.proposer = proposer
    for name in ("put", "txn", "propose_future"):  # bound as on a Member
        setattr(member, name, MethodType(getattr(Member, name), member))
    service = KVService(member)
    keys = [b"bench/key/%05d" % i for i in range(64)]
    if kind == "put":
        request_class, response_class, handler = pb.PutRequest, pb.PutResponse, service.Put
        data = [pb.PutRequest(key=k, value=VALUE).SerializeToString() for k in keys]
    else:
        request_class, response_class, handler = pb.TxnRequest, pb.TxnResponse, service.Txn
        data = [update_request(k, VALUE, 5).SerializeToString() for k in keys]

    def one_batch() -> float:
        reqs = [request_class.FromString(d) for d in data]
        responses = []
        for _ in reqs:
            resp = response_class()
            resp.header.revision = 5
            if kind == "txn":  # as apply_txn answers a kube update whose compare holds
                resp.succeeded = True
                resp.responses.add().response_put.header.revision = 5
            responses.append(resp)
        t = time.thread_time()
        made = [handler(r, None) for r in reqs]
        batch = BatchResult(results=list(zip(futures, responses, strict=True)))
        for fn in listeners:
            fn(batch)
        resolve_proposals(futures, batch.results)
        spent = time.thread_time() - t
        assert all(f.done() for f in made)
        return spent

    for _ in range(50):
        one_batch()
    return min(sum(one_batch() for _ in range(100)) / (100 * 64) for _ in range(7))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("rpc", "apply", "api", "propose"))
    p.add_argument("kind", nargs="?", choices=("put", "txn"), default="put",
                   help="apply, propose: Put or kube Txn requests")
    p.add_argument("--observer", action="store_true", help="rpc: count calls in metrics")
    p.add_argument("--server-like", action="store_true",
                   help="apply: random keys over 10,000, batches of 20, on disk (see above)")
    p.add_argument("--batch", type=int, default=20, choices=(1, 20),
                   help="apply --server-like: entries per batch")
    p.add_argument("--inline", action="store_true",
                   help="apply: Applier.apply_inline first, as the loop does")
    args = p.parse_args()
    if args.part == "rpc":
        print(f"rpc: {rpc(args.observer) * 1e6:.2f} us thread CPU per unary call")
    elif args.part == "apply":
        us = apply(args.kind, args.server_like, args.batch, args.inline) * 1e6
        print(f"apply {args.kind}: {us:.2f} us thread CPU per request")
    elif args.part == "propose":
        what = "Txn" if args.kind == "txn" else "Put"
        print(f"propose: {propose(args.kind) * 1e6:.2f} us thread CPU per {what}")
    else:
        t, u = api()
        print(f"api: txn {t * 1e6:.2f} us, put {u * 1e6:.2f} us thread CPU per request")


if __name__ == "__main__":
    main()
