"""A gRPC client-streaming call over one HTTP/2 connection of its own, on asyncio with `h2`.

Why not grpc.aio: at one write in flight a 3-member leader spent about half of its busy
CPU in grpc.aio (its poller thread and per-message callbacks). The sender's hot call,
`RaftPeer.Stream`, is one long-lived client stream per peer: this module carries it
with `h2`'s state machine on the event loop, one `transport.write` per batch. The wire
is gRPC over HTTP/2 as grpc.aio speaks it, so any member's peer server takes it.

The server is a peer, so hostile: every buffer is bounded by a constant below, and a
protocol violation (h2's `ProtocolError`), an oversized answer, a stuck window or a
peer that does not read ends the call with a `ConnectionError` or the peer's
`PeerCallError` status, never a traceback or a stalled loop; the sender logs it
(once per distinct error) and reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import urllib.parse
from collections.abc import Callable

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from kubekv_server.tls import alerts as tls_alerts

__all__ = [
    "PeerCallError",
    "PeerProtocolError",
    "StreamCall",
    "grpc_message",
    "grpc_status",
    "open_stream",
    "request_headers",
]

_LEN = struct.Struct(">I")
# Response bytes (DATA) a client stream takes: RaftPeer.Stream answers one empty StreamAck;
# more is a hostile or broken server, and the call ends rather than buffering it.
MAX_RESPONSE_BYTES = 64 << 10
# The decoded response header list we accept (SETTINGS_MAX_HEADER_LIST_SIZE): a gRPC status
# and a message; grpc-go's servers send a few hundred bytes.
MAX_RESPONSE_HEADER_LIST = 64 << 10
# Bytes of the peer's status message kept (it reaches logs and PeerStatus.last_error).
MAX_STATUS_MESSAGE = 1024
# Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE): enough for any answer.
RECEIVE_WINDOW = MAX_RESPONSE_BYTES
# Bytes waiting in our socket buffer beyond which the connection is given up: a server
# that does not read (or floods PINGs whose ACKs it never reads) cannot grow our memory;
# a batch is at most max_batch_bytes (1 MiB) above what the socket has taken.
MAX_OUTPUT_BUFFER = 8 << 20
# Output at which a write waits for the socket to drain before returning.
OUTPUT_HIGH_WATER = 1 << 20
# Frames one response header block may take (HEADERS + CONTINUATIONs): a status block
# is one frame; h2 would keep every fragment of an endless block.
MAX_HEADER_BLOCK_FRAMES = 16
_HEADERS, _CONTINUATION, _END_HEADERS = 0x1, 0x9, 0x4
# a DATA frame of one gRPC message, up to its payload: the frame's 24-bit length (a byte
# and 16 bits), type DATA, no flags, the stream id; then the message's prefix
# (uncompressed, its 32-bit length)
_DATA_HEAD = struct.Struct(">BHxxIxI")
# Shortest wait for a keepalive PING's ACK (grpc's keepalive_timeout default floor here).
KEEPALIVE_MIN_TIMEOUT = 5.0
# Seconds to wait for TCP connect plus the TLS handshake and the server's SETTINGS.
CONNECT_TIMEOUT = 5.0


class PeerProtocolError(ConnectionError):
    """The server broke HTTP/2 or the bounds above: the connection was ended (GOAWAY)."""


class PeerCallError(Exception):
    """The peer ended the call with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def grpc_message(payload: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + _LEN.pack(len(payload)) + payload


def request_headers(path: str, authority: str, tls: bool) -> list[tuple[str, str]]:
    """The request headers of a gRPC call, as grpc-go and grpc.aio send them."""
    return [
        (":method", "POST"),
        (":scheme", "https" if tls else "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "kubekv-peer"),
    ]


def grpc_status(headers: list[tuple[bytes, bytes]]) -> tuple[grpc.StatusCode, str] | None:
    """The (status, message) a trailer block (or trailers-only answer) carries; None if
    it names none. An unknown status number is UNKNOWN, as gRPC clients read it."""
    code = message = None
    for k, v in headers:
        if k == b"grpc-status":
            code = v
        elif k == b"grpc-message":
            message = v
    if code is None:
        return None
    try:
        status = _CODES.get(int(code), grpc.StatusCode.UNKNOWN)
    except ValueError:
        status = grpc.StatusCode.UNKNOWN
    text = urllib.parse.unquote(message[:MAX_STATUS_MESSAGE * 3].decode("latin-1"),
                                errors="replace") if message else ""
    return status, text[:MAX_STATUS_MESSAGE]


class FrameLengthGuard:
    """Reads frame headers ahead of h2, which buffers a whole frame before it checks its
    length against SETTINGS_MAX_FRAME_SIZE (a server announcing a 16 MiB frame and
    trickling it would make us hold it), and keeps every CONTINUATION of a header block
    until the block ends (the 2024 "CONTINUATION flood"). `feed(data)` is False once a
    frame header announces more than `limit` payload bytes, or a header block runs to
    more than MAX_HEADER_BLOCK_FRAMES frames."""

    __slots__ = ("limit", "_header", "_skip", "_block_frames")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._header = b""  # the start of a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._block_frames = 0  # HEADERS and CONTINUATION frames of the block going on

    def feed(self, data: bytes) -> bool:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            need = 9 - len(self._header)
            self._header += data[pos:pos + need]
            pos += need
            if len(self._header) < 9:
                return True
            header, self._header = self._header, b""
            length = int.from_bytes(header[:3], "big")
            if length > self.limit:
                return False
            kind, flags = header[3], header[4]
            if kind == _HEADERS or (kind == _CONTINUATION and self._block_frames):
                self._block_frames = 0 if flags & _END_HEADERS else self._block_frames + 1
                if self._block_frames > MAX_HEADER_BLOCK_FRAMES:
                    return False
            self._skip = length
        return True


class StreamCall(asyncio.Protocol):
    """One connection carrying one client-streaming call: `write(payload)` sends a
    message, `done()`/`add_done_callback`/`await call.result()` report how it ended,
    `cancel()` ends it (RST_STREAM CANCEL and the connection closed)."""

    def __init__(self, path: str, authority: str, tls: bool, keepalive: float = 0.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=True))
        # we never raise SETTINGS_MAX_FRAME_SIZE above the RFC's default, h2's limit
        self._frames = FrameLengthGuard(self.h2.max_inbound_frame_size)
        self._settings_timer: asyncio.TimerHandle | None = None
        self._path = path
        self._authority = authority
        self._tls = tls
        self.transport: asyncio.Transport | None = None
        self.stream_id = 0
        self._result = self.loop.create_future()  # the call's end: None or an exception
        self._window = asyncio.Event()  # flow-control window or socket room became free
        self._write_paused = False
        self._response_bytes = 0
        self._status: tuple[grpc.StatusCode, str] | None = None
        self._http_status = b""
        # keepalive: a PING every `keepalive` seconds; one unanswered for
        # max(keepalive, KEEPALIVE_MIN_TIMEOUT) ends the call (grpc's keepalive_time/timeout)
        self._keepalive = keepalive
        self._ping_sent = 0.0  # loop time of the PING not acknowledged yet (0: none)
        self._ping_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        h = self.h2
        h.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_RESPONSE_HEADER_LIST,
        })
        h.initiate_connection()
        self.stream_id = h.get_next_available_stream_id()
        h.send_headers(self.stream_id, request_headers(self._path, self._authority, self._tls))
        self._flush()
        self._settings_timer = self.loop.call_later(CONNECT_TIMEOUT, self._no_settings)
        if self._keepalive:
            self._ping_timer = self.loop.call_later(self._keepalive, self._ping)

    def _no_settings(self) -> None:
        self._settings_timer = None
        self._fail_connection(h2.errors.ErrorCodes.SETTINGS_TIMEOUT,
                              "peer sent no HTTP/2 SETTINGS in time")

    def _ping(self) -> None:
        self._ping_timer = None
        if self._result.done():
            return
        now = self.loop.time()
        if self._ping_sent and now - self._ping_sent > max(self._keepalive,
                                                            KEEPALIVE_MIN_TIMEOUT):
            self._fail_connection(h2.errors.ErrorCodes.NO_ERROR, "keepalive ping timed out")
            return
        if not self._ping_sent:
            self._ping_sent = now
            self.h2.ping(b"kubekvka")
            self._flush()
        self._ping_timer = self.loop.call_later(self._keepalive, self._ping)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end(ConnectionError(f"connection lost: {exc}" if exc else "connection closed"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._window.set()

    def data_received(self, data: bytes) -> None:
        if self._result.done():
            return
        if not self._frames.feed(data):
            self._fail_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR,
                                  "peer HTTP/2 protocol error: frame over the size limit")
            return
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._on_event(event)
        except h2.exceptions.ProtocolError as exc:
            self._fail_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR,
                                  f"peer HTTP/2 protocol error: {type(exc).__name__}")
            return
        self._flush()

    def _on_event(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.WindowUpdated:
            self._window.set()
        elif kind is h2.events.RemoteSettingsChanged:
            if self._settings_timer is not None:
                self._settings_timer.cancel()
                self._settings_timer = None
            self._window.set()
        elif kind is h2.events.ResponseReceived:
            for k, v in event.headers:
                if k == b":status":
                    self._http_status = v
            self._status = grpc_status(event.headers)
            if self._http_status != b"200" and self._status is None:
                self._status = (grpc.StatusCode.UNKNOWN,
                                f"peer answered HTTP {self._http_status.decode('latin-1')[:8]}")
        elif kind is h2.events.DataReceived:
            self._response_bytes += len(event.data)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if self._response_bytes > MAX_RESPONSE_BYTES:
                self._fail_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                      "peer answered more than a stream acknowledgement")
        elif kind is h2.events.TrailersReceived:
            self._status = grpc_status(event.headers) or self._status
        elif kind is h2.events.StreamEnded:
            status = self._status or (grpc.StatusCode.UNKNOWN, "peer sent no gRPC status")
            if status[0] is grpc.StatusCode.OK:
                self._end(None)
            else:
                self._end(PeerCallError(*status))
            self._close_transport()
        elif kind is h2.events.StreamReset:
            self._end(self._status and self._status[0] is not grpc.StatusCode.OK
                      and PeerCallError(*self._status)
                      or ConnectionError(f"peer reset the stream (code {event.error_code})"))
            self._close_transport()
        elif kind is h2.events.PingAckReceived:
            self._ping_sent = 0.0
        elif kind is h2.events.ConnectionTerminated:
            self._end(ConnectionError(f"peer closed the connection (GOAWAY "
                                      f"{int(event.error_code or 0)})"))
            self._close_transport()
        # PINGs and SETTINGS are acknowledged by h2; nothing else matters to one stream

    # ---------------------------------------------------------------- call

    async def write(self, payload: bytes) -> None:
        """Send one message; waits for flow-control window and a draining socket."""
        data = grpc_message(payload)
        view = memoryview(data)
        h = self.h2
        sid = self.stream_id
        while view:
            self._check()
            room = min(h.local_flow_control_window(sid), h.max_outbound_frame_size)
            if room <= 0:
                self._window.clear()
                await self._wait()
                continue
            chunk, view = view[:room], view[room:]
            try:
                h.send_data(sid, chunk.tobytes())
            except h2.exceptions.ProtocolError as exc:
                self._fail_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR,
                                      f"peer HTTP/2 state: {type(exc).__name__}")
                self._check()
        self._flush()
        if self._write_paused or self.transport.get_write_buffer_size() > OUTPUT_HIGH_WATER:
            while self._write_paused and not self._result.done():
                self._window.clear()
                await self._wait()
        self._check()

    def write_now(self, payload: bytes) -> bool:
        """Send one message at once if that needs no wait: the call is open, the socket
        takes output and the flow-control window holds the whole message. False (and
        nothing sent): the caller uses `write`, which waits."""
        t = self.transport
        if self._result.done() or self._write_paused or t is None:
            return False
        if t.get_write_buffer_size() > OUTPUT_HIGH_WATER:
            return False
        h = self.h2
        sid = self.stream_id
        stream = h.streams.get(sid)
        n = len(payload) + 5
        # h2's local_flow_control_window, read as it computes it: the call is open (an
        # ended stream has ended it, `_end`), so the stream is h2's
        if stream is None or min(h.outbound_flow_control_window,
                                 stream.outbound_flow_control_window) < n:
            return False
        if n <= h.max_outbound_frame_size:
            # one DATA frame, built here rather than by h2's send_data, whose frame
            # objects and state machines were ~10 µs a call, most of a Raft batch's send;
            # h2's windows are charged as its send_data charges them, so its flow
            # control, and its check of the peer's WINDOW_UPDATEs, stay exact
            h.outbound_flow_control_window -= n
            stream.outbound_flow_control_window -= n
            self._flush(_DATA_HEAD.pack(n >> 16, n & 0xFFFF, sid, len(payload)) + payload)
            return True
        data = grpc_message(payload)
        frame = h.max_outbound_frame_size
        try:
            for start in range(0, n, frame):
                h.send_data(sid, data[start:start + frame])
        except h2.exceptions.ProtocolError as exc:
            self._fail_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR,
                                  f"peer HTTP/2 state: {type(exc).__name__}")
            return False
        self._flush()
        return True

    async def _wait(self) -> None:
        waiter = self.loop.create_task(self._window.wait())
        try:
            await asyncio.wait((waiter, self._result), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def _check(self) -> None:
        if self._result.done():
            exc = self._result.exception()
            raise exc if exc is not None else ConnectionError("peer ended the stream")

    def done(self) -> bool:
        return self._result.done()

    def add_done_callback(self, fn: Callable[[asyncio.Future], None]) -> None:
        self._result.add_done_callback(fn)

    async def result(self) -> None:
        """Wait for the call's end: returns on OK, raises the peer's status or the
        connection's failure."""
        await asyncio.shield(self._result)

    def cancel(self) -> None:
        """End the call and its connection (a write timeout, a removed peer, close)."""
        if self._result.done():
            self._close_transport()
            return
        self._end(ConnectionError("call cancelled"))
        try:
            self.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            self.h2.close_connection()
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        self._close_transport()

    # ------------------------------------------------------------- helpers

    def _end(self, exc: BaseException | None) -> None:
        for timer in (self._ping_timer, self._settings_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._settings_timer = None
        if not self._result.done():
            if exc is None:
                self._result.set_result(None)
            else:
                self._result.set_exception(exc)
                self._result.exception()  # retrieved: nobody may await a cancelled call
        self._window.set()

    def _fail_connection(self, code: h2.errors.ErrorCodes, reason: str) -> None:
        self._end(PeerProtocolError(reason))
        try:
            self.h2.close_connection(code)
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        self._close_transport()

    def _flush(self, frame: bytes = b"") -> None:
        """Write what h2 queued, then `frame` (bytes built outside h2), in one write."""
        t = self.transport
        if t is None or t.is_closing():
            return
        data = self.h2.data_to_send() + frame if frame else self.h2.data_to_send()
        if data:
            t.write(data)
            if t.get_write_buffer_size() > MAX_OUTPUT_BUFFER:
                self._end(PeerProtocolError("peer is not reading"))
                t.abort()

    def _close_transport(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()


async def open_stream(target: str, path: str, ssl_context: ssl.SSLContext | None = None,
                      *, keepalive: float = 0.0) -> StreamCall:
    """Connect to a peer's gRPC target ("host:port" or "unix:path") and start a
    client-streaming call to `path` (PINGs every `keepalive` seconds if given)."""
    loop = asyncio.get_running_loop()
    if target.startswith("unix:"):
        call = StreamCall(path, "localhost", False, keepalive)
        connect = loop.create_unix_connection(lambda: call, target[len("unix:"):])
    else:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        call = StreamCall(path, target, ssl_context is not None, keepalive)
        if ssl_context is None:
            connect = loop.create_connection(lambda: call, host, int(port))
        else:  # asyncio's TLS on either loop: a refused certificate gets its alert
            connect = tls_alerts.connect(loop, call, host, int(port), ssl_context, host)
    if ssl_context is None or target.startswith("unix:"):
        await asyncio.wait_for(connect, CONNECT_TIMEOUT)
        return call
    transport = await asyncio.wait_for(connect, CONNECT_TIMEOUT)
    proto = transport.get_extra_info("ssl_object").selected_alpn_protocol()
    if proto != "h2":
        transport.close()
        raise ConnectionError(f"peer did not negotiate h2 (ALPN {proto!r})")
    return call
