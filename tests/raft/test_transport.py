"""GrpcTransport and RaftPeerServicer over real gRPC on 127.0.0.1.

Each test runs one event loop (asyncio.run). Waiting is always for a condition with a
deadline (`eventually`), never a sleep standing in for synchronisation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import ssl
import struct
import time
from typing import Any

import grpc
import pytest

from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import peer_pb2_grpc as peer_grpc
from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.raft import Config
from kubekv_raft.driver.lmdb_storage import LMDBStorage
from kubekv_raft.driver.runner import Runner
from kubekv_server.peer.bounds import peer_server_options
from kubekv_server.peer.receiver import RaftPeerServicer
from kubekv_server.peer.sender import GrpcTransport
from kubekv_server.peer.snapshot_files import received_snapshot
from kubekv_server.tls.peer import (
    channel_credentials,
    fetch_peer_certificate,
    self_signed_cert,
    server_credentials,
    stream_ssl_context,
)
from kubekv_testing.polling import wait_for_async

CID = 0xC1C1


# Poll `cond` until it holds, every 5 ms (loopback transports answer within a few).
eventually = functools.partial(wait_for_async, timeout=10.0, what="condition", interval=0.005)


class Recorder:
    """Stands in for a Runner on either side: records what it is stepped and told."""

    def __init__(self) -> None:
        self.stepped: list[pb.Message] = []
        self.unreachable: list[int] = []
        self.snapshots: list[tuple[int, bool]] = []

    def step(self, m: pb.Message) -> None:
        self.stepped.append(m)

    def report_unreachable(self, to: int) -> None:
        self.unreachable.append(to)

    def report_snapshot(self, to: int, ok: bool) -> None:
        self.snapshots.append((to, ok))


async def serve(servicer: RaftPeerServicer, port: int = 0, creds=None) -> tuple[Any, int]:
    server = grpc.aio.server(options=peer_server_options())
    peer_grpc.add_RaftPeerServicer_to_server(servicer, server)
    addr = f"127.0.0.1:{port}"
    port = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
    await server.start()
    return server, port


def hb(to: int, frm: int = 1, k: int = 0, ctx: bytes = b"") -> pb.Message:
    return pb.Message(type=pb.MsgHeartbeat, to=to, from_=frm, term=1, commit=k, context=ctx)


def fast_transport(local_id: int, cluster_id: int = CID, **kw) -> GrpcTransport:
    kw.setdefault("backoff_initial", 0.02)
    kw.setdefault("backoff_max", 0.3)
    return GrpcTransport(local_id, cluster_id, **kw)


# -- the stream ---------------------------------------------------------------------------------


def test_batches_carry_queued_messages_in_order_and_split_by_size():
    async def main() -> None:
        rx = Recorder()
        server, port = await serve(RaftPeerServicer(2, CID, rx))
        tx = Recorder()
        t = fast_transport(1, max_batch_bytes=4096, max_message_bytes=64 << 10,
                           snapshot_chunk_size=16 << 10)  # fmt: skip
        t.attach(tx)
        t.add_peer(2, [f"http://127.0.0.1:{port}"])
        try:
            # 200 messages of ~130 bytes queued at once: a handful of writes of <= 4 KiB.
            t.send([hb(2, k=k, ctx=b"x" * 100) for k in range(200)])
            await eventually(lambda: len(rx.stepped) == 200, what="200 messages")
            assert [m.commit for m in rx.stepped] == list(range(200))
            need = -(-sum(m.ByteSize() for m in rx.stepped) // 4096)  # writes of <= 4 KiB
            assert need >= 5 and need <= t.status(2).batches_sent <= need + 2, t.status(2)
            # One message bigger than a batch goes alone; one over the hard limit is dropped.
            t.send([hb(2, k=1000), hb(2, k=1001, ctx=b"y" * 10000), hb(2, k=1002, ctx=b"z" * 70000),
                    hb(2, k=1003)])  # fmt: skip
            await eventually(lambda: len(rx.stepped) == 203, what="the three sendable ones")
            assert [m.commit for m in rx.stepped[200:]] == [1000, 1001, 1003]
            assert t.status(2).messages_dropped == 1 and tx.unreachable == [2]
            # Messages for unknown peers are dropped without fuss.
            t.send([hb(7)])
        finally:
            await t.close()
            await server.stop(0)

    asyncio.run(main())


@pytest.mark.parametrize("cluster_id", [CID, 0, (1 << 64) - 1])
def test_a_batch_is_the_bytes_protobuf_makes_of_it(cluster_id: int):
    """The sender joins a peer's header and each queued message's encoding instead of
    building a MessageBatch: the bytes must be protobuf's, for entries around every
    varint length boundary, and split into batches as the size limits say."""
    t = GrpcTransport(0x8E9E05C52164694D, cluster_id, max_batch_bytes=40000)
    t.add_peer(0x91BC3C398FB3C146, ["http://127.0.0.1:1"])
    peer = t._peers[0x91BC3C398FB3C146]  # noqa: SLF001
    sizes = [0, 1, 100, 127, 128, 129, 16383, 16384, 16385, 30000, 5]
    msgs = [pb.Message(type=pb.MsgApp, to=0x91BC3C398FB3C146, from_=0x8E9E05C52164694D,
                       term=3, index=k, entries=[pb.Entry(term=3, index=k + 1, data=b"d" * n)])
            for k, n in enumerate(sizes)]
    for m in msgs:
        assert peer.enqueue(m)
    batches = peer._batches(peer._take())  # noqa: SLF001
    assert [m for _, items, _ in batches for m, _ in items] == msgs
    assert len(batches) > 1
    for payload, items, size in batches:
        made = peer_pb.MessageBatch(cluster_id=cluster_id, from_=0x8E9E05C52164694D,
                                    to=0x91BC3C398FB3C146, messages=[m for m, _ in items])
        assert payload == made.SerializeToString()
        assert size == sum(m.ByteSize() + 8 for m, _ in items) <= 40000


def test_an_idle_stream_writes_in_the_senders_turn_and_falls_back_to_its_task():
    async def main() -> None:
        rx = Recorder()
        server, port = await serve(RaftPeerServicer(2, CID, rx))
        t = fast_transport(1)
        t.attach(Recorder())
        t.add_peer(2, [f"http://127.0.0.1:{port}"])
        try:
            t.send([hb(2, k=0)])  # opens the stream (its task writes the first batch)
            await eventually(lambda: len(rx.stepped) == 1, what="the first message")
            peer = t._peers[2]
            await eventually(lambda: peer.call is not None, what="an idle stream")
            sent = peer.status.batches_sent
            t.send([hb(2, k=1), hb(2, k=2)])
            # written before send() returned: no loop iteration in between
            assert peer.status.batches_sent == sent + 1 and not peer.queue
            await eventually(lambda: len(rx.stepped) == 3, what="the direct write")

            # a stream that cannot take a batch now: it and the rest go to the task, in order
            real = peer.call
            refused: list[bytes] = []

            class Full:
                def write_now(self, payload: bytes) -> bool:
                    refused.append(payload)
                    return False

            peer.call = Full()
            t.send([hb(2, k=3), hb(2, k=4)])
            assert len(refused) == 1 and [m.commit for m, _ in peer.queue] == [3, 4]
            peer.call = real
            await eventually(lambda: len(rx.stepped) == 5, what="the task's write")
            assert [m.commit for m in rx.stepped] == [0, 1, 2, 3, 4]

            # a direct write that raises never reaches the caller (the Runner): the call
            # ends, the task counts the message dropped and reconnects for the next
            await eventually(lambda: peer.call is not None, what="an idle stream again")
            broken = peer.call

            def boom(payload: bytes) -> bool:
                raise RuntimeError("broken")

            broken.write_now = boom
            dropped = peer.status.messages_dropped
            t.send([hb(2, k=5)])
            await eventually(lambda: peer.status.messages_dropped == dropped + 1,
                             what="the message counted dropped")
            t.send([hb(2, k=6)])
            await eventually(lambda: len(rx.stepped) == 6, what="a write after reconnecting")
            assert rx.stepped[-1].commit == 6
        finally:
            await t.close()
            await server.stop(0)

    asyncio.run(main())


def test_another_cluster_is_refused_on_stream_and_snapshot():
    async def main() -> None:
        rx = Recorder()
        servicer = RaftPeerServicer(2, CID, rx)
        server, port = await serve(servicer)
        url = f"http://127.0.0.1:{port}"
        tx = Recorder()
        alien = fast_transport(1, cluster_id=0xBAD)
        alien.attach(tx)
        alien.add_peer(2, [url])
        wrong_member = fast_transport(1)
        wrong_member.attach(Recorder())
        wrong_member.add_peer(3, [url])  # member 3's URL points at member 2
        good = fast_transport(1)
        good.attach(Recorder())
        good.add_peer(2, [url])
        try:
            alien.send([hb(2)])
            await eventually(lambda: alien.status(2).failures >= 1, what="refusal")
            assert "cluster ID mismatch" in alien.status(2).last_error
            assert tx.unreachable and tx.unreachable[0] == 2
            snap = pb.Message(type=pb.MsgSnap, to=2, from_=1, term=1)
            snap.snapshot.metadata.index = 5
            alien.send([snap])
            await eventually(lambda: tx.snapshots == [(2, False)], what="snapshot refusal")
            wrong_member.send([hb(3)])
            await eventually(lambda: wrong_member.status(3).failures >= 1, what="refusal")
            assert "reached member 2" in wrong_member.status(3).last_error
            assert rx.stepped == [] and servicer.refused >= 3
            good.send([hb(2, k=9)])  # the same server takes its own cluster's messages
            await eventually(lambda: [m.commit for m in rx.stepped] == [9], what="delivery")
        finally:
            for t in (alien, wrong_member, good):
                await t.close()
            await server.stop(0)

    asyncio.run(main())


def test_reconnects_after_the_peer_server_restarts():
    async def main() -> None:
        rx = Recorder()
        server, port = await serve(RaftPeerServicer(2, CID, rx))
        tx = Recorder()
        t = fast_transport(1)
        t.attach(tx)
        t.add_peer(2, [f"http://127.0.0.1:{port}"])
        k = 0

        async def keep_sending(stop: asyncio.Event) -> None:  # what a leader's heartbeats do
            nonlocal k
            while not stop.is_set():
                k += 1
                t.send([hb(2, k=k)])
                await asyncio.sleep(0.01)

        stop = asyncio.Event()
        sender = asyncio.create_task(keep_sending(stop))
        try:
            await eventually(lambda: len(rx.stepped) >= 5 and t.status(2).active)
            await server.stop(0)
            await eventually(lambda: tx.unreachable, what="report_unreachable")
            await eventually(lambda: t.status(2).failures >= 2, what="failed reconnects")
            seen = len(rx.stepped)
            server, _ = await serve(RaftPeerServicer(2, CID, rx), port=port)
            await eventually(lambda: len(rx.stepped) > seen + 5, what="delivery after restart")
            ks = [m.commit for m in rx.stepped]
            assert ks == sorted(ks)  # lost while down, never reordered
        finally:
            stop.set()
            await sender
            await t.close()
            await server.stop(0)

    asyncio.run(main())


def test_peers_added_updated_and_removed_at_runtime():
    async def main() -> None:
        rx2, rx2b, rx3 = Recorder(), Recorder(), Recorder()
        s2, p2 = await serve(RaftPeerServicer(2, CID, rx2))
        s2b, p2b = await serve(RaftPeerServicer(2, CID, rx2b))  # member 2, moved
        s3, p3 = await serve(RaftPeerServicer(3, CID, rx3))
        t = fast_transport(1)
        t.attach(Recorder())
        try:
            t.send([hb(2)])  # not a peer yet: dropped
            t.add_peer(2, [f"http://127.0.0.1:{p2}"])
            t.add_peer(3, [f"http://127.0.0.1:{p3}"])
            t.send([hb(2, k=1), hb(3, k=1)])
            await eventually(lambda: len(rx2.stepped) == 1 and len(rx3.stepped) == 1)
            t.update_peer(2, [f"http://127.0.0.1:{p2b}"])
            t.remove_peer(3)
            assert sorted(t.peers()) == [2]
            t.send([hb(2, k=2), hb(3, k=2)])
            await eventually(lambda: [m.commit for m in rx2b.stepped] == [2])
            assert [m.commit for m in rx2.stepped] == [1]
            assert [m.commit for m in rx3.stepped] == [1]
        finally:
            await t.close()
            for s in (s2, s2b, s3):
                await s.stop(0)

    asyncio.run(main())


def test_mutual_tls(tmp_path):
    async def main() -> None:
        cert, key = self_signed_cert(str(tmp_path / "tls"), ["127.0.0.1"])
        assert self_signed_cert(str(tmp_path / "tls"), ["127.0.0.1"]) == (cert, key)  # once
        rx = Recorder()
        creds = server_credentials(cert, key, trusted_ca_file=cert, client_cert_auth=True)
        server, port = await serve(RaftPeerServicer(2, CID, rx), creds=creds)
        t = fast_transport(1, credentials=channel_credentials(cert, cert, key),
                           ssl_context=stream_ssl_context(cert, cert, key))
        no_client_cert = fast_transport(1, credentials=channel_credentials(cert),
                                        ssl_context=stream_ssl_context(cert))
        for x in (t, no_client_cert):
            x.attach(Recorder())
            x.add_peer(2, [f"https://127.0.0.1:{port}"])
        try:
            t.send([hb(2, k=1)])
            await eventually(lambda: [m.commit for m in rx.stepped] == [1], what="TLS delivery")
            no_client_cert.send([hb(2, k=2)])
            await eventually(lambda: no_client_cert.status(2).failures >= 1, what="refusal")
            assert [m.commit for m in rx.stepped] == [1]
        finally:
            await t.close()
            await no_client_cert.close()
            await server.stop(0)

    asyncio.run(main())


def test_auto_tls_trusts_the_peer_certificate_on_first_contact(tmp_path):
    async def main() -> None:
        cert, key = self_signed_cert(str(tmp_path / "member2"), ["127.0.0.1"])
        rx = Recorder()
        server, port = await serve(
            RaftPeerServicer(2, CID, rx), creds=server_credentials(cert, key)
        )
        trusted: list[str] = []

        def creds_for(target: str) -> grpc.ChannelCredentials:  # runs in an executor thread
            host, _, p = target.rpartition(":")
            trusted.append(target)
            return channel_credentials(root_pem=fetch_peer_certificate(host, int(p)))

        def context_for(target: str) -> ssl.SSLContext:  # runs in an executor thread
            host, _, p = target.rpartition(":")
            trusted.append(target)
            return stream_ssl_context(root_pem=fetch_peer_certificate(host, int(p)))

        t = fast_transport(1, credentials=creds_for, ssl_context=context_for)
        t.attach(Recorder())
        t.add_peer(2, [f"https://127.0.0.1:{port}"])
        try:
            t.send([hb(2, k=1)])
            await eventually(lambda: [m.commit for m in rx.stepped] == [1], what="TLS delivery")
            assert trusted == [f"127.0.0.1:{port}"]
        finally:
            await t.close()
            await server.stop(0)

    asyncio.run(main())


# -- snapshot transfer ------------------------------------------------------------------------


class FileSource:
    """SnapshotSource: Snapshot.data is the path of the state file; optionally slow or failing."""

    def __init__(self, delay: float = 0.0, fail_after: int | None = None) -> None:
        self.delay = delay
        self.fail_after = fail_after
        self.first_read: float | None = None
        self.eof: float | None = None

    def open(self, snapshot: pb.Snapshot):
        src = self
        f = open(snapshot.data.decode(), "rb")  # noqa: SIM115 - closed by the transport

        class Reader:
            reads = 0

            def read(self, n: int) -> bytes:
                if src.first_read is None:
                    src.first_read = time.monotonic()
                if src.fail_after is not None and self.reads >= src.fail_after:
                    raise OSError("disk went away")
                self.reads += 1
                time.sleep(src.delay)
                data = f.read(n)
                if not data:
                    src.eof = time.monotonic()
                return data

            def close(self) -> None:
                f.close()

        return Reader()


def msg_snap(path: str, index: int = 50, term: int = 3) -> pb.Message:
    m = pb.Message(type=pb.MsgSnap, to=2, from_=1, term=term)
    m.snapshot.data = path.encode()
    m.snapshot.metadata.index = index
    m.snapshot.metadata.term = term
    m.snapshot.metadata.conf_state.voters.extend([1, 2, 3])
    return m


def test_snapshot_file_arrives_whole_or_not_at_all(tmp_path):
    async def main() -> None:
        state = tmp_path / "state.db"
        payload = os.urandom((3 << 20) + 12345)
        state.write_bytes(payload)
        recv = tmp_path / "recv"
        recv.mkdir()
        (recv / "leftover.partial").write_bytes(b"from a crash")
        rx = Recorder()
        servicer = RaftPeerServicer(2, CID, rx, snapshot_dir=str(recv))
        assert not (recv / "leftover.partial").exists()  # removed at startup
        server, port = await serve(servicer)
        try:
            # A source that fails after two chunks: failure reported, nothing left behind.
            tx = Recorder()
            t = fast_transport(1, snapshot_source=FileSource(fail_after=2))
            t.attach(tx)
            t.add_peer(2, [f"http://127.0.0.1:{port}"])
            t.send([msg_snap(str(state))])
            await eventually(lambda: tx.snapshots == [(2, False)], what="failed transfer report")
            await eventually(lambda: not os.listdir(recv), what="partial file removed")
            assert rx.stepped == [] and t.status(2).snapshots_failed == 1
            await t.close()
            # A whole transfer: durable .snap file, MsgSnap stepped with a ReceivedSnapshot.
            tx = Recorder()
            t = fast_transport(1, snapshot_source=FileSource())
            t.attach(tx)
            t.add_peer(2, [f"http://127.0.0.1:{port}"])
            t.send([msg_snap(str(state))])
            await eventually(lambda: tx.snapshots == [(2, True)], what="transfer report")
            assert len(rx.stepped) == 1 and t.status(2).snapshot_chunks_sent == 4
            rs = received_snapshot(rx.stepped[0].snapshot)
            assert rs.data == str(state).encode() and rs.size == len(payload)
            assert rs.sha256 == hashlib.sha256(payload).digest()
            assert os.path.dirname(rs.path) == str(recv) and rs.path.endswith(".snap")
            with open(rs.path, "rb") as f:
                assert f.read() == payload
            assert os.listdir(recv) == [os.path.basename(rs.path)]
            assert rx.stepped[0].snapshot.metadata.index == 50
            await t.close()
            # Without a SnapshotSource the snapshot travels inline, unchanged.
            tx = Recorder()
            t = fast_transport(1)
            t.attach(tx)
            t.add_peer(2, [f"http://127.0.0.1:{port}"])
            t.send([msg_snap("inline-state", index=60)])
            await eventually(lambda: tx.snapshots == [(2, True)], what="inline transfer")
            assert rx.stepped[1].snapshot.data == b"inline-state"
            await t.close()
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_receiver_refuses_a_snapshot_cut_short_or_corrupted(tmp_path):
    async def main() -> None:
        recv = tmp_path / "recv"
        rx = Recorder()
        server, port = await serve(RaftPeerServicer(2, CID, rx, snapshot_dir=str(recv)))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = peer_grpc.RaftPeerStub(channel)
        head = peer_pb.SnapshotChunk(cluster_id=CID, message=msg_snap("x"), has_file=True)
        try:
            cases = {
                "cut short": [head, peer_pb.SnapshotChunk(data=b"a" * 1000)],
                "checksum": [
                    head,
                    peer_pb.SnapshotChunk(data=b"a" * 1000),
                    peer_pb.SnapshotChunk(last=True, size=1000, sha256=b"\0" * 32),
                ],
            }
            for name, chunks in cases.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.SendSnapshot(iter(chunks))
                codes = (grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS)
                assert err.value.code() in codes, name
                assert os.listdir(recv) == [], name
            assert rx.stepped == []
        finally:
            await channel.close()
            await server.stop(0)

    asyncio.run(main())


# -- three Runners over GrpcTransport ---------------------------------------------------------


class KVApplier:
    """The state machine: the list of applied payloads, restorable from a snapshot file."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []

    def apply(self, entries: list[pb.Entry]) -> None:
        self.applied += [e.data for e in entries if e.type == pb.EntryNormal and e.data]

    def write_snapshot(self, path: str, padding: int) -> None:
        """A fake state file: the applied list, then `padding` random bytes."""
        head = json.dumps([d.hex() for d in self.applied]).encode()
        with open(path, "wb") as f:
            f.write(struct.pack(">I", len(head)) + head + os.urandom(padding))

    def install(self, snapshot: pb.Snapshot) -> None:
        with open(received_snapshot(snapshot).path, "rb") as f:
            (n,) = struct.unpack(">I", f.read(4))
            self.applied = [bytes.fromhex(h) for h in json.loads(f.read(n))]


class InstallingStorage(LMDBStorage):
    """The Runner persists Ready.snapshot through storage.apply_snapshot; install it there too."""

    def __init__(self, path: str, applier: KVApplier) -> None:
        super().__init__(path, map_size=1 << 26)
        self.applier = applier

    def apply_snapshot(self, snapshot: pb.Snapshot) -> None:
        super().apply_snapshot(snapshot)
        self.applier.install(snapshot)


class RecordingTransport(GrpcTransport):
    """Records (time, type) of every message this member sends."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.sent: list[tuple[float, int]] = []

    def send(self, messages: list[pb.Message]) -> None:
        now = time.monotonic()
        self.sent += [(now, m.type) for m in messages]
        super().send(messages)


class Node:
    def __init__(self, i: int, root, source: FileSource | None = None) -> None:
        self.id = i
        self.dir = root / f"n{i}"
        self.source = source
        self.port = 0

    async def start(self) -> None:
        self.applier = KVApplier()
        (self.dir / "raft").mkdir(parents=True, exist_ok=True)
        self.storage = InstallingStorage(str(self.dir / "raft"), self.applier)
        if not self.storage.conf_state().voters:
            self.storage.set_conf_state(pb.ConfState(voters=[1, 2, 3]))
        self.transport = RecordingTransport(
            self.id, CID, snapshot_source=self.source, backoff_initial=0.02, backoff_max=0.3
        )
        cfg = Config(id=self.id, storage=self.storage, election_tick=10, heartbeat_tick=1,
                     pre_vote=True, check_quorum=True)  # fmt: skip
        self.runner = Runner(cfg, self.storage, self.transport, self.applier, tick_interval=0.05)
        self.transport.attach(self.runner)
        self.servicer = RaftPeerServicer(
            self.id, CID, self.runner, snapshot_dir=str(self.dir / "snap")
        )
        self.server, self.port = await serve(self.servicer, port=self.port)

    def connect(self, nodes: dict[int, Node]) -> None:
        for j, n in nodes.items():
            if j != self.id:
                self.transport.add_peer(j, [f"http://127.0.0.1:{n.port}"])

    async def stop(self) -> None:
        await self.runner.stop()
        await self.server.stop(0)
        await self.transport.close()
        self.storage.close()

    async def restart(self, nodes: dict[int, Node]) -> None:
        await self.start()  # same port, same data dir, fresh in-memory applier
        self.connect(nodes)
        await self.runner.start()


async def start_cluster(tmp_path, sources: dict[int, FileSource] | None = None) -> dict[int, Node]:
    nodes = {i: Node(i, tmp_path, (sources or {}).get(i)) for i in (1, 2, 3)}
    for n in nodes.values():
        await n.start()
    for n in nodes.values():
        n.connect(nodes)
    for n in nodes.values():
        await n.runner.start()
    return nodes


async def leader_of(nodes: dict[int, Node], among=None) -> int:
    ids = among or list(nodes)
    found: list[int] = []

    def one() -> bool:
        found[:] = [i for i in ids if nodes[i].runner.node.is_leader]
        return len(found) == 1

    await eventually(one, timeout=15, what="a leader")
    return found[0]


async def propose_all(nodes: dict[int, Node], via: int, keys: list[bytes]) -> None:
    await asyncio.wait_for(asyncio.gather(*(nodes[via].runner.propose(k) for k in keys)), 15)


async def same_state(nodes: dict[int, Node], ids, n: int) -> None:
    await eventually(
        lambda: all(len(nodes[i].applier.applied) == n for i in ids), what=f"{n} applied"
    )
    first = nodes[ids[0]].applier.applied
    assert all(nodes[i].applier.applied == first for i in ids)


def test_three_runners_commit_through_grpc_and_a_restarted_follower_catches_up(tmp_path):
    async def main() -> None:
        nodes = await start_cluster(tmp_path)
        try:
            leader = await leader_of(nodes)
            follower = leader % 3 + 1
            keys = [b"k%03d" % k for k in range(100)]
            await propose_all(nodes, leader, keys[:50])
            await propose_all(nodes, follower, keys[50:])  # forwarded to the leader
            await same_state(nodes, [1, 2, 3], 100)
            assert sorted(nodes[1].applier.applied) == keys
            # A follower stops; the other two go on; it comes back and catches up.
            await nodes[follower].stop()
            rest = [i for i in (1, 2, 3) if i != follower]
            more = [b"m%03d" % k for k in range(40)]
            await propose_all(nodes, leader, more)
            await same_state(nodes, rest, 140)
            await eventually(lambda: nodes[leader].transport.status(follower).failures >= 1)
            await nodes[follower].restart(nodes)
            await same_state(nodes, [1, 2, 3], 140)
            assert nodes[leader].runner.node.is_leader
        finally:
            for n in nodes.values():
                await n.stop()

    asyncio.run(main())


def test_lagging_follower_gets_a_chunked_snapshot_while_heartbeats_flow(tmp_path):
    async def main() -> None:
        # Every member's source is slow: ~0.3 s per 1 MiB chunk, 7 chunks, so the transfer
        # spans several election timeouts (10 ticks of 50 ms, randomized to 0.5-1 s).
        sources = {i: FileSource(delay=0.3) for i in (1, 2, 3)}
        nodes = await start_cluster(tmp_path, sources)
        try:
            leader = await leader_of(nodes)
            lagger = leader % 3 + 1
            rest = [i for i in (1, 2, 3) if i != lagger]
            await propose_all(nodes, leader, [b"a%03d" % k for k in range(20)])
            await same_state(nodes, [1, 2, 3], 20)
            await nodes[lagger].stop()
            await propose_all(nodes, leader, [b"b%03d" % k for k in range(60)])
            await same_state(nodes, rest, 80)
            # The leader snapshots its state to a multi-MiB file and compacts its log.
            ld = nodes[leader]
            index = ld.runner.applied
            path = str(tmp_path / f"leader-{index}.state")
            ld.applier.write_snapshot(path, padding=6 << 20)
            ld.storage.create_snapshot(index, pb.ConfState(voters=[1, 2, 3]), path.encode())
            ld.storage.compact(index)
            term = ld.runner.node.raft.term
            # Messages queued for the lagger before the compaction (a probe MsgApp that
            # would still fill its log) are dropped with the next failed reconnect.
            failures = ld.transport.status(lagger).failures
            await eventually(lambda: ld.transport.status(lagger).failures > failures)
            await nodes[lagger].restart(nodes)
            await eventually(lambda: sources[leader].eof is not None, timeout=20,
                             what="the snapshot read to its end")  # fmt: skip
            await same_state(nodes, [1, 2, 3], 80)
            # Applied through the snapshot, then new entries replicate as usual.
            await propose_all(nodes, leader, [b"c%03d" % k for k in range(10)])
            await same_state(nodes, [1, 2, 3], 90)
            st = ld.transport.status(lagger)
            assert st.snapshots_sent == 1 and st.snapshot_chunks_sent == 7, st
            got = nodes[lagger].servicer
            assert got.snapshots_received == 1
            # During the transfer the lagger heard heartbeats and never campaigned.
            t0, t1 = sources[leader].first_read, sources[leader].eof
            assert t1 - t0 > 1.5
            sent = [ty for at, ty in nodes[lagger].transport.sent if t0 <= at <= t1]
            assert sent.count(pb.MsgHeartbeatResp) >= 10, sent
            assert not {pb.MsgPreVote, pb.MsgVote} & set(sent), sent
            assert ld.runner.node.is_leader and ld.runner.node.raft.term == term
        finally:
            for n in nodes.values():
                await n.stop()

    asyncio.run(main())
