"""What a hostile peer can send to the peer port, and what a member holds for it.

A real peer server (`PeerServer`) on 127.0.0.1 with RaftPeerServicer behind
PeerCallGuard, as a member serves it; the "peer" is a raw grpc.aio client that sends
what our transport never would. Every violation must end in a gRPC status, leave no
file behind, step nothing, and log no ERROR (a handler's traceback is logged there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading

import grpc
import pytest

from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import peer_pb2_grpc as peer_grpc
from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.raft import Config
from kubekv_raft.core.storage import MemoryStorage
from kubekv_raft.driver.runner import MAX_PEER_INBOX, Runner
from kubekv_server.log_limit import RateLimitedLog
from kubekv_server.peer import bounds, snapshot_files
from kubekv_server.peer.bounds import MAX_BATCH_MESSAGES
from kubekv_server.peer.call_guard import STOPPING_MESSAGE, PeerCallGuard
from kubekv_server.peer.receiver import RaftPeerServicer
from kubekv_server.rpc.peer_server import PeerServer
from kubekv_testing.polling import wait_for_async

CID = 0xC1C1


class Recorder:
    def __init__(self) -> None:
        self.stepped: list[pb.Message] = []

    def step(self, m: pb.Message) -> None:
        self.stepped.append(m)


async def serve(servicer: RaftPeerServicer) -> tuple[PeerServer, PeerCallGuard, int]:
    guard = PeerCallGuard()
    server = PeerServer(guard)
    server.add_service(peer_pb.DESCRIPTOR.services_by_name["RaftPeer"], servicer, [peer_pb])
    await server.listen("127.0.0.1:0", None)
    return server, guard, server.bound_port()


def run(servicer_kw: dict, body) -> Recorder:
    """Serve a servicer (member 2 of cluster CID), run body(stub, channel, servicer, guard)."""
    rx = Recorder()

    async def main() -> None:
        servicer = RaftPeerServicer(2, CID, rx, **servicer_kw)
        server, guard, port = await serve(servicer)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            await body(peer_grpc.RaftPeerStub(channel), channel, servicer, guard)
        finally:
            await channel.close()
            await server.stop(grace=0)
        assert guard.active == 0

    asyncio.run(main())
    return rx


@pytest.fixture(autouse=True)
def fresh_rate_limit(monkeypatch):
    """Each test starts with an empty rate limiter (its lines are asserted on)."""
    monkeypatch.setattr(bounds, "violations", RateLimitedLog(bounds.log))


@pytest.fixture
def no_errors(caplog):
    """Fail if anything logged at ERROR (grpc's tracebacks are logged there)."""
    caplog.set_level(logging.INFO)
    yield caplog
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def hb(frm: int = 1, to: int = 2) -> pb.Message:
    return pb.Message(type=pb.MsgHeartbeat, to=to, from_=frm, term=1)


def batch(*msgs: pb.Message, frm: int = 1, to: int = 2) -> peer_pb.MessageBatch:
    return peer_pb.MessageBatch(cluster_id=CID, from_=frm, to=to, messages=list(msgs))


def snap_head(index: int = 50, has_file: bool = True) -> peer_pb.SnapshotChunk:
    m = pb.Message(type=pb.MsgSnap, to=2, from_=1, term=3)
    m.snapshot.data = b"/etc/passwd"
    m.snapshot.metadata.index = index
    m.snapshot.metadata.term = 3
    return peer_pb.SnapshotChunk(cluster_id=CID, message=m, has_file=has_file)


async def status_of(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return err.value.code(), err.value.details()


# -- the message stream -------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["MsgSnap", "MsgHup", "unknown type", "from", "to", "count"])
def test_a_batch_our_sender_never_makes_is_refused_and_nothing_stepped(what, no_errors):
    bad = {
        "MsgSnap": batch(pb.Message(type=pb.MsgSnap, to=2, from_=1, term=9)),
        "MsgHup": batch(pb.Message(type=pb.MsgHup, to=2, from_=1)),
        "unknown type": batch(pb.Message(type=99, to=2, from_=1)),
        "from": batch(hb(frm=7)),  # a message claiming another sender than its batch
        "to": batch(hb(to=3)),
        "count": batch(*[hb()] * (MAX_BATCH_MESSAGES + 1)),
    }[what]

    async def body(stub, channel, servicer, guard) -> None:
        code, _ = await status_of(stub.Stream(iter([batch(hb()), bad])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert servicer.refused == 1

    rx = run({}, body)
    assert len(rx.stepped) == 1  # the good batch before it, nothing of the bad one


def test_batch_at_the_limit_is_taken():
    async def body(stub, channel, servicer, guard) -> None:
        await stub.Stream(iter([batch(*[hb()] * MAX_BATCH_MESSAGES)]))

    assert len(run({}, body).stepped) == MAX_BATCH_MESSAGES


@pytest.mark.parametrize("method", ["/raftpb.RaftPeer/Stream", "/raftpb.RaftPeer/SendSnapshot"])
def test_garbage_protobuf_ends_in_invalid_argument_not_a_traceback(method, no_errors):
    async def body(stub, channel, servicer, guard) -> None:
        raw = channel.stream_unary(method)  # bytes in, bytes out
        for _ in range(3):  # logged once, however often
            code, details = await status_of(raw(iter([b"\xff\xff\xff\xff\x0f garbage"])))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "malformed request"

    assert run({}, body).stepped == []
    lines = [r.getMessage() for r in no_errors.records if "peer_malformed_request" in
             r.getMessage()]
    assert len(lines) == 1 and method in lines[0]


# -- snapshots ----------------------------------------------------------------------------------


def test_a_snapshot_over_the_size_limit_is_cut_off_and_removed(tmp_path, no_errors):
    async def body(stub, channel, servicer, guard) -> None:
        chunks = [snap_head()] + [peer_pb.SnapshotChunk(data=b"x" * 4096)] * 10
        code, _ = await status_of(stub.SendSnapshot(iter(chunks)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    rx = run({"snapshot_dir": str(tmp_path), "max_snapshot_bytes": 10_000}, body)
    assert rx.stepped == [] and os.listdir(tmp_path) == []


def test_a_snapshot_that_stops_sending_is_cut_off_and_removed(tmp_path, no_errors):
    async def body(stub, channel, servicer, guard) -> None:
        call = stub.SendSnapshot()
        await call.write(snap_head())
        await call.write(peer_pb.SnapshotChunk(data=b"x" * 1000))
        # ... and nothing more, the stream left open
        code, details = await status_of(call)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details

    rx = run({"snapshot_dir": str(tmp_path), "snapshot_chunk_timeout": 0.3}, body)
    assert rx.stepped == [] and os.listdir(tmp_path) == []


def test_a_snapshot_that_never_ends_is_cut_off_at_the_receive_deadline(tmp_path, no_errors):
    async def body(stub, channel, servicer, guard) -> None:
        call = stub.SendSnapshot()
        await call.write(snap_head())
        while not call.done():  # a chunk well within the chunk timeout, for ever
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(peer_pb.SnapshotChunk(data=b"x" * 100))
            await asyncio.sleep(0.01)
        code, _ = await status_of(call)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED

    kw = {"snapshot_dir": str(tmp_path), "snapshot_receive_timeout": 0.5,
          "snapshot_chunk_timeout": 30}
    rx = run(kw, body)
    assert rx.stepped == [] and os.listdir(tmp_path) == []


def test_snapshot_receives_at_once_are_bounded(tmp_path, no_errors):
    async def body(stub, channel, servicer, guard) -> None:
        first = stub.SendSnapshot()
        await first.write(snap_head())
        await first.write(peer_pb.SnapshotChunk(data=b"x"))
        while servicer._receiving == 0:  # noqa: SLF001 - the first receive has begun
            await asyncio.sleep(0.01)
        code, _ = await status_of(stub.SendSnapshot(iter([snap_head(index=60)])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        await first.write(peer_pb.SnapshotChunk(last=True, size=1, sha256=b"\0" * 32))
        await first.done_writing()
        code, _ = await status_of(first)
        assert code == grpc.StatusCode.DATA_LOSS

    run({"snapshot_dir": str(tmp_path), "max_snapshot_receives": 1}, body)


def test_a_member_that_takes_files_refuses_an_inline_snapshot(tmp_path, no_errors):
    """Snapshot.data of an inline snapshot would be read as the path of a received file."""

    async def body(stub, channel, servicer, guard) -> None:
        chunks = [snap_head(has_file=False), peer_pb.SnapshotChunk(last=True)]
        code, _ = await status_of(stub.SendSnapshot(iter(chunks)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION

    rx = run({"snapshot_dir": str(tmp_path), "inline_snapshots": False}, body)
    assert rx.stepped == []


def test_calls_beyond_the_servers_limit_are_refused_before_they_start(no_errors):
    async def main() -> None:
        rx = Recorder()
        guard = PeerCallGuard()
        server = PeerServer(guard, max_concurrent_rpcs=1)
        server.add_service(peer_pb.DESCRIPTOR.services_by_name["RaftPeer"],
                           RaftPeerServicer(2, CID, rx), [peer_pb])
        await server.listen("127.0.0.1:0", None)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port()}")
        try:
            stub = peer_grpc.RaftPeerStub(channel)
            stream = stub.Stream()
            await stream.write(batch(hb()))
            await wait_for_async(lambda: guard.active == 1, 10, "the first call running")
            code, _ = await status_of(stub.Stream(iter([batch(hb())])))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(rx.stepped) == 1
            stream.cancel()
        finally:
            await channel.close()
            await server.stop(grace=0)

    asyncio.run(main())


# -- shutdown -----------------------------------------------------------------------------------


def test_stopping_ends_open_streams_with_unavailable_and_leaves_no_call_task(tmp_path,
                                                                            no_errors):
    async def body(stub, channel, servicer, guard) -> None:
        stream = stub.Stream()
        await stream.write(batch(hb()))
        snap = stub.SendSnapshot()
        await snap.write(snap_head())
        while guard.active < 2:
            await asyncio.sleep(0.01)
        await guard.close()
        for call in (stream, snap):
            code, details = await status_of(call)
            assert (code, details) == (grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
        code, details = await status_of(stub.Stream(iter([batch(hb())])))  # no new calls
        assert code == grpc.StatusCode.UNAVAILABLE
        assert guard.active == 0

    run({"snapshot_dir": str(tmp_path)}, body)
    assert os.listdir(tmp_path) == []


# -- the runner's inbox -------------------------------------------------------------------------


def test_runner_inbox_drops_peer_messages_beyond_its_bound():
    async def main() -> None:
        storage = MemoryStorage()
        storage.set_conf_state(pb.ConfState(voters=[1, 2]))
        runner = Runner(Config(id=1, storage=storage), storage, _NoTransport(), _NoApplier())
        took = [runner.step(hb(frm=2, to=1)) for _ in range(MAX_PEER_INBOX + 10)]
        assert took.count(True) == MAX_PEER_INBOX and runner.peer_messages_dropped == 10
        runner._feed()  # noqa: SLF001 - one Ready cycle's intake empties the inbox
        assert runner.step(hb(frm=2, to=1)) is True
        runner.report_unreachable(2)  # local reports are never dropped
        assert len(runner._inbox) == 2  # noqa: SLF001

    asyncio.run(main())


class _NoTransport:
    def send(self, messages) -> None:
        pass


class _NoApplier:
    def apply(self, entries) -> None:
        pass


# -- the hash endpoint --------------------------------------------------------------------------


def test_peer_hash_requests_are_bounded(no_errors):
    from kubekv_server.member import corruption

    release = threading.Event()

    class Mvcc:
        def hash_kv(self, rev):
            release.wait(10)
            return 1, 0, 5

    class Member:
        member_id = 9
        mvcc = Mvcc()

    class Aborted(Exception):
        pass

    class Context:
        code = None

        async def abort(self, code, details):
            self.code = code
            raise Aborted(details)

    async def main() -> None:
        s = corruption.HashPeerServicer(Member())
        limit = corruption.MAX_CONCURRENT_PEER_HASHES + corruption.MAX_WAITING_PEER_HASHES
        calls = [asyncio.ensure_future(s.HashKV(_Req(), Context())) for _ in range(limit)]
        while s._queued < limit:  # noqa: SLF001 - every call holds or waits for a slot
            await asyncio.sleep(0.01)
        ctx = Context()
        with pytest.raises(Aborted):
            await s.HashKV(_Req(), ctx)
        assert ctx.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        answers = await asyncio.gather(*calls)
        assert [a.hash for a in answers] == [1] * limit and s._queued == 0  # noqa: SLF001

    asyncio.run(main())


class _Req:
    revision = 0


def test_received_snapshots_older_than_the_installed_one_are_removed(tmp_path):
    def name(term: int, index: int) -> str:
        md = pb.SnapshotMetadata(term=term, index=index)
        return snapshot_files.snapshot_file_name(md)

    keep = [name(3, 50), name(2, 60), "state-0000000000000003-0000000000000010.mdb",
            "notes.snap", "zz-zz.snap"]
    for n in [*keep, name(3, 49), name(9, 10)]:
        (tmp_path / n).write_bytes(b"x")
    assert snapshot_files.remove_older_snapshots(str(tmp_path), 50) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
