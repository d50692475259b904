"""The message streams' HTTP/2 gRPC client (`kubekv_server/peer/stream_client.py`).

Its framing and status parsing as pure functions; then against a scripted server (h2's
server side on 127.0.0.1) that answers what a hostile or broken peer would, and against
kubekv's own peer server. Every failure must end the call with an exception the sender
logs, never hang or leave a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import threading

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from etcdproto.raftpb import peer_pb2 as peer_pb
from etcdproto.raftpb import raft_pb2 as pb
from kubekv_server.event_loop import run as run_loop
from kubekv_server.peer import stream_client as sc
from kubekv_server.peer.call_guard import PeerCallGuard
from kubekv_server.peer.receiver import RaftPeerServicer
from kubekv_server.rpc.peer_server import PeerServer
from kubekv_testing.pki import CA
from kubekv_testing.polling import wait_for_async

CID = 0xC1C1


# -- pure functions ------------------------------------------------------------------------------


def test_a_message_is_length_prefixed_and_uncompressed():
    assert sc.grpc_message(b"abc") == b"\x00" + struct.pack(">I", 3) + b"abc"
    assert sc.grpc_message(b"") == b"\x00\x00\x00\x00\x00"


def test_request_headers_are_a_grpc_call():
    h = dict(sc.request_headers("/raftpb.RaftPeer/Stream", "h:1", tls=True))
    assert h[":method"] == "POST" and h[":scheme"] == "https" and h["te"] == "trailers"
    assert h["content-type"] == "application/grpc" and h[":authority"] == "h:1"
    assert dict(sc.request_headers("/p", "h:1", tls=False))[":scheme"] == "http"


def test_status_is_read_from_trailers_with_its_message_decoded_and_bounded():
    assert sc.grpc_status([(b"grpc-status", b"0")]) == (grpc.StatusCode.OK, "")
    assert sc.grpc_status([(b"grpc-status", b"9"), (b"grpc-message", b"raft%3A a b")]) == (
        grpc.StatusCode.FAILED_PRECONDITION, "raft: a b")
    assert sc.grpc_status([(b"content-type", b"application/grpc")]) is None
    assert sc.grpc_status([(b"grpc-status", b"99")])[0] == grpc.StatusCode.UNKNOWN
    assert sc.grpc_status([(b"grpc-status", b"x")])[0] == grpc.StatusCode.UNKNOWN
    long = sc.grpc_status([(b"grpc-status", b"2"), (b"grpc-message", b"a" * 100_000)])
    assert len(long[1]) == sc.MAX_STATUS_MESSAGE


def test_frame_headers_are_checked_before_their_payload_is_buffered():
    def header(length: int) -> bytes:
        return length.to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00\x01"

    g = sc.FrameLengthGuard(16384)
    stream = header(10) + b"x" * 10 + header(16384) + b"y" * 16384 + header(0)
    for i in range(0, len(stream), 7):  # split anywhere, headers included
        assert g.feed(stream[i:i + 7])
    assert g.feed(header(16385)[:5])  # not known yet
    assert not g.feed(header(16385)[5:])
    assert not sc.FrameLengthGuard(16384).feed(b"HTTP/1.1 400 Bad Request\r\n")


def test_an_endless_header_block_is_refused():
    def frame(kind: int, flags: int, payload: bytes = b"x") -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + b"\x00\x00\x00\x01" \
            + payload

    g = sc.FrameLengthGuard(16384)
    assert g.feed(frame(0x1, 0x0) + frame(0x9, 0x4))  # a block in two frames ends
    assert g.feed(frame(0x1, 0x4))  # a block in one
    assert g.feed(frame(0x1, 0x0))
    for _ in range(sc.MAX_HEADER_BLOCK_FRAMES - 1):
        assert g.feed(frame(0x9, 0x0))
    assert not g.feed(frame(0x9, 0x0))


# -- a scripted server -------------------------------------------------------------------------


class Scripted(asyncio.Protocol):
    """h2's server side; `script(conn, stream_id, events)` answers a request's events."""

    def __init__(self, script, settings=None) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.script = script
        self.settings = settings or {}
        self.received = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        if self.settings:
            self.conn.update_settings(self.settings)
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        events = self.conn.receive_data(data)
        for e in events:
            if isinstance(e, h2.events.RequestReceived) and not self.received.done():
                self.received.set_result(e.stream_id)
        self.script(self, events)
        self.transport.write(self.conn.data_to_send())


async def scripted(script, settings=None, raw=None):
    """(server, the open call): a call started against a scripted server."""
    loop = asyncio.get_running_loop()
    protos: list = []

    def make():
        if raw is not None:
            return raw
        p = Scripted(script, settings)
        protos.append(p)
        return p

    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    call = await sc.open_stream(f"127.0.0.1:{port}", "/raftpb.RaftPeer/Stream")
    return server, call, protos


def answer_status(code: int, message: bytes = b""):
    def script(p: Scripted, events) -> None:
        for e in events:
            if isinstance(e, h2.events.DataReceived):
                p.conn.send_headers(e.stream_id, [(b":status", b"200"),
                                                  (b"content-type", b"application/grpc")])
                p.conn.send_headers(e.stream_id, [(b"grpc-status", str(code).encode()),
                                                  (b"grpc-message", message)], end_stream=True)
    return script


def test_the_peers_status_ends_the_call():
    async def main() -> None:
        server, call, _ = await scripted(answer_status(9, b"raft%3A cluster ID mismatch"))
        try:
            await call.write(b"\x08\x01")
            with pytest.raises(sc.PeerCallError) as err:
                await call.result()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert err.value.details() == "raft: cluster ID mismatch"
            assert call.done()
            with pytest.raises(sc.PeerCallError):  # later writes fail the same way
                await call.write(b"")
        finally:
            call.cancel()
            server.close()

    asyncio.run(main())


def test_an_answer_bigger_than_an_acknowledgement_ends_the_connection():
    streams: list[int] = []

    def flood(p: Scripted, events) -> None:
        """Answer DATA with all the window the client gives, again as it gives more."""
        for e in events:
            if isinstance(e, h2.events.DataReceived) and not streams:
                streams.append(e.stream_id)
                p.conn.send_headers(e.stream_id, [(b":status", b"200")])
        for sid in streams:
            while (n := min(16384, p.conn.local_flow_control_window(sid))) > 0:
                p.conn.send_data(sid, b"\0" * n)

    async def main() -> None:
        server, call, _ = await scripted(flood)
        try:
            await call.write(b"x")
            with pytest.raises(sc.PeerProtocolError):
                await call.result()
        finally:
            call.cancel()
            server.close()

    asyncio.run(main())


class Garbage(asyncio.Protocol):
    """Not HTTP/2 at all."""

    def connection_made(self, transport) -> None:
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\xff" * 64)


def test_bytes_that_are_not_http2_end_the_call_with_a_protocol_error():
    async def main() -> None:
        server, call, _ = await scripted(None, raw=Garbage())
        try:
            with pytest.raises(sc.PeerProtocolError, match="protocol error"):
                await call.result()
        finally:
            call.cancel()
            server.close()

    asyncio.run(main())


def test_a_write_waiting_for_window_ends_when_the_call_is_cancelled():
    async def main() -> None:
        # the server never gives window: the sender's write timeout cancels the call
        settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        server, call, protos = await scripted(lambda p, events: None, settings)
        try:
            await protos[0].received  # headers are in: the write waits for window
            write = asyncio.ensure_future(call.write(b"x" * 100))
            await asyncio.wait([write], timeout=0)  # it has started and waits
            assert not write.done()
            call.cancel()
            with pytest.raises(ConnectionError):
                await write
        finally:
            server.close()

    asyncio.run(main())


def test_direct_writes_are_frames_h2_takes_and_keep_its_windows_exact():
    """write_now builds its DATA frame itself: h2 (the server here) must parse every one,
    and the client's h2 windows must stay what its own send_data would have left, so a
    write that does not fit waits and the peer's WINDOW_UPDATE opens it again."""
    got: list[bytes] = []

    def script(p: Scripted, events) -> None:
        for e in events:
            if isinstance(e, h2.events.DataReceived):
                got.append(e.data)  # window deliberately not given back

    async def main() -> None:
        settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
        server, call, protos = await scripted(script, settings)
        try:
            await protos[0].received
            await wait_for_async(lambda: call.h2.local_flow_control_window(call.stream_id)
                                 == 1000, 10, "the server's settings")
            sizes = [95, 195, 395]  # 100 + 200 + 400 bytes framed
            for n in sizes:
                assert call.write_now(b"x" * n)
            window = call.h2.local_flow_control_window(call.stream_id)
            assert window == 1000 - 700
            assert not call.write_now(b"y" * 300)  # 305 framed: over the window, unsent
            await wait_for_async(lambda: len(got) == 3, 10, "three frames at the server")
            assert got == [sc.grpc_message(b"x" * n) for n in sizes]
            p = protos[0]
            p.conn.increment_flow_control_window(700, stream_id=call.stream_id)
            p.conn.increment_flow_control_window(700)
            p.transport.write(p.conn.data_to_send())
            await wait_for_async(lambda: call.h2.local_flow_control_window(call.stream_id)
                                 == 1000, 10, "the window given back")
            assert call.write_now(b"y" * 300) and not call.done()
            await wait_for_async(lambda: len(got) == 4, 10, "the fourth frame")
            assert got[-1] == sc.grpc_message(b"y" * 300)
        finally:
            call.cancel()
            server.close()

    asyncio.run(main())


# -- kubekv's peer server ------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.stepped: list[pb.Message] = []

    def step(self, m: pb.Message) -> None:
        self.stepped.append(m)


def batch(cluster_id: int, *commits: int) -> bytes:
    return peer_pb.MessageBatch(cluster_id=cluster_id, from_=1, to=2, messages=[
        pb.Message(type=pb.MsgHeartbeat, from_=1, to=2, term=1, commit=c) for c in commits
    ]).SerializeToString()


def test_batches_reach_kubekvs_peer_server_and_a_refusal_comes_back_as_its_status():
    async def main() -> None:
        rx = Recorder()
        server = PeerServer(PeerCallGuard())
        server.add_service(peer_pb.DESCRIPTOR.services_by_name["RaftPeer"],
                           RaftPeerServicer(2, CID, rx), [peer_pb])
        await server.listen("127.0.0.1:0", None)
        target = f"127.0.0.1:{server.bound_port()}"
        try:
            call = await sc.open_stream(target, "/raftpb.RaftPeer/Stream")
            await call.write(batch(CID, 1, 2))
            await call.write(batch(CID, 3))
            await wait_for_async(lambda: len(rx.stepped) >= 3, 10, "three messages stepped")
            assert [m.commit for m in rx.stepped] == [1, 2, 3]
            call.cancel()
            other = await sc.open_stream(target, "/raftpb.RaftPeer/Stream")
            await other.write(batch(CID + 1, 4))
            with pytest.raises(sc.PeerCallError) as err:
                await other.result()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "cluster ID mismatch" in err.value.details()
            assert len(rx.stepped) == 3
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_a_sender_facing_a_hostile_server_reports_it_and_logs_it_once(caplog, monkeypatch):
    from kubekv_server.log_limit import RateLimitedLog
    from kubekv_server.peer import bounds
    from kubekv_server.peer.sender import GrpcTransport

    monkeypatch.setattr(bounds, "violations", RateLimitedLog(bounds.log))
    unreachable: list[int] = []

    class Reporter:
        def report_unreachable(self, to: int) -> None:
            unreachable.append(to)

        def report_snapshot(self, to: int, ok: bool) -> None:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        t = GrpcTransport(1, CID, backoff_initial=0.01, backoff_max=0.01)
        t.attach(Reporter())
        t.add_peer(2, [f"http://127.0.0.1:{port}"])
        try:
            for k in range(1, 200):  # Raft keeps sending; each send redials after a failure
                t.send([pb.Message(type=pb.MsgHeartbeat, from_=1, to=2, term=1, commit=k)])
                if t.status(2).failures >= 3:
                    break
                await wait_for_async(lambda: not t._peers[2].queue, 10, "the queue taken")  # noqa: SLF001
            assert t.status(2).failures >= 3
            assert "protocol error" in t.status(2).last_error
        finally:
            await t.close()
            server.close()

    caplog.set_level(logging.INFO)
    asyncio.run(main())
    assert set(unreachable) == {2}
    lines = [r.getMessage() for r in caplog.records if "peer_protocol_violation" in
             r.getMessage()]
    assert len(lines) == 1, lines


def test_a_refused_server_certificate_is_answered_with_an_alert(tmp_path):
    """The peer client refuses a certificate its CA did not sign with a TLS alert (Go's
    client sends "unknown certificate authority"), not a bare close, on whichever loop
    runs (uvloop's own TLS would drop the alert: `tls/alerts.connect`)."""
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    CA(tmp_path / "ours")
    theirs = CA(tmp_path / "theirs")
    theirs.issue("peer", sans=["127.0.0.1"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "theirs" / "peer.pem", tmp_path / "theirs" / "peer.key")
    server_ctx.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                server_ctx.wrap_socket(conn, server_side=True).do_handshake()
                seen.append("handshake completed")
            except (ssl.SSLError, OSError) as exc:
                seen.append(str(exc))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ours" / "ca.pem"))
    client_ctx.set_alpn_protocols(["h2"])

    async def main() -> None:
        with pytest.raises(ssl.SSLError):
            await sc.open_stream(f"127.0.0.1:{port}", "/etcdserverpb.Raft/Stream", client_ctx)

    run_loop(main())
    t.join(10)
    listener.close()
    assert seen and "ALERT" in seen[0].upper(), seen
