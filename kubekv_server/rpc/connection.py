"""One client connection: HTTP/2 framing, flow control and gRPC calls, on the event loop.

Everything a connection receives in one read is parsed and answered before the
next read, and all the frames produced meanwhile leave in one write: under load
many calls share a syscall. Unary handlers that answer at once (reads) run
inline; writes return a future and answer when it resolves; blocking handlers
and streams with blocking code run on worker threads through `calls.py`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct

import hpack

from . import frames as f
from .calls import Call, Method
from .context import AbortError, status_number
from .http2_plain import PlainRequest

log = logging.getLogger("kubekv.rpc")

# What we advertise: a large initial stream window so that requests up to a few
# MiB never wait for a WINDOW_UPDATE, and a connection window of 1 GiB.
INITIAL_STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 1 << 30
STREAM_WINDOW_REFILL = 1 << 20
CONNECTION_WINDOW_REFILL = 16 << 20
# Output waiting for flow-control window beyond which a streaming sender waits for the
# client to read (so a slow watcher falls behind into catch-up instead of buffering here).
HIGH_WATER = 64 << 10

_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Http2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection carrying gRPC calls (and HTTP/1.1 fallback)."""

    def __init__(self, server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peername = None
        self.peer_cert_der: bytes | None = None
        self.peer_common_name: str | None = None
        self._buf = b""
        self._mode = 0  # 0: waiting for the preface, 1: HTTP/2, 2: HTTP/1.1
        self._decoder = hpack.Decoder()
        self.calls: dict[int, Call] = {}
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._send_window = f.DEFAULT_WINDOW
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME
        self._recv_unacked = 0
        self._last_stream_id = 0
        self._headers_in_progress: tuple[int, int, bytearray] | None = None  # sid, flags, block
        self._blocked: collections.OrderedDict[int, Call] = collections.OrderedDict()
        self._paused = False
        self._closing = False
        self._http1 = None
        self.closed = False

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.peer_cert_der = sslobj.getpeercert(binary_form=True)
            cert = sslobj.getpeercert() or {}
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        self.peer_common_name = value
            if self.peer_cert_der is not None and not self.server.accept_peer_cert(
                self.peer_cert_der, cert
            ):
                log.warning('msg="client certificate authentication failed" peer=%s',
                            self.peername)
                transport.abort()
                return
        self.server.connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            call.cancel()
        self.calls.clear()
        self._blocked.clear()
        if self._http1 is not None:
            self._http1.connection_lost()

    def eof_received(self) -> bool | None:
        """The client half-closed: HTTP/1.1 still answers what it sent (as Go does);
        HTTP/2 and an undecided connection close."""
        if self._http1 is not None:
            return self._http1.eof_received()
        return None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for call in list(self.calls.values()):
            call.writable_changed()

    def write(self, data: bytes) -> None:
        """Queue bytes for the socket; they leave at the end of this loop iteration."""
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and not self.closed:
            data = b"".join(self._out)
            self._out.clear()
            self.transport.write(data)

    # -------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except ProtocolError as exc:
            log.info("event=http2_protocol_error peer=%s error=%s", self.peername, exc)
            self._out.append(f.goaway(self._last_stream_id, exc.code, str(exc).encode()[:200]))
            self.flush()
            self.transport.close()
        except Exception:
            log.exception("event=connection_failed peer=%s", self.peername)
            self._out.append(f.goaway(self._last_stream_id, f.INTERNAL_ERROR))
            self.flush()
            self.transport.close()

    def _received(self, data: bytes) -> None:
        if self._mode == 2:
            self._http1.data_received(data)
            return
        buf = self._buf + data if self._buf else data
        if self._mode == 0:
            if len(buf) < len(f.PREFACE):
                if not f.PREFACE.startswith(buf):
                    self._start_http1(buf)
                    return
                self._buf = buf
                return
            if not buf.startswith(f.PREFACE):
                self._start_http1(buf)
                return
            buf = buf[len(f.PREFACE) :]
            self._mode = 1
            self._out.append(
                f.settings({
                    f.SETTINGS_MAX_CONCURRENT_STREAMS: min(self.server.max_concurrent_streams,
                                                           2**32 - 1),
                    f.SETTINGS_INITIAL_WINDOW_SIZE: INITIAL_STREAM_WINDOW,
                    f.SETTINGS_MAX_HEADER_LIST_SIZE: 1 << 20,
                })
            )
            self._out.append(f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW))
        pos, n = 0, len(buf)
        while n - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            end = pos + 9 + length
            if end > n:
                break
            if length > 1 << 24:
                raise ProtocolError(f.FRAME_SIZE_ERROR, "frame too large")
            ftype = buf[pos + 3]
            flags = buf[pos + 4]
            sid = _LEN.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
            payload = buf[pos + 9 : end]
            pos = end
            if self._headers_in_progress is not None and ftype != f.CONTINUATION:
                raise ProtocolError(f.PROTOCOL_ERROR, "expected CONTINUATION")
            if ftype == f.DATA:
                self._on_data(sid, flags, payload, length)
            elif ftype == f.HEADERS:
                self._on_headers(sid, flags, payload)
            elif ftype == f.CONTINUATION:
                self._on_continuation(sid, flags, payload)
            elif ftype == f.SETTINGS:
                self._on_settings(flags, payload)
            elif ftype == f.PING:
                if not flags & f.ACK:
                    self._out.append(f.frame(f.PING, f.ACK, 0, payload))
            elif ftype == f.WINDOW_UPDATE:
                self._on_window_update(sid, payload)
            elif ftype == f.RST_STREAM:
                call = self.calls.pop(sid, None)
                if call is not None:
                    self._blocked.pop(sid, None)
                    call.cancel()
            elif ftype == f.GOAWAY:
                self._closing = True
            elif ftype == f.PUSH_PROMISE:
                raise ProtocolError(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # PRIORITY and unknown frame types are ignored, as RFC 9113 requires.
        self._buf = buf[pos:]
        if self._recv_unacked >= CONNECTION_WINDOW_REFILL:
            self._out.append(f.window_update(0, self._recv_unacked))
            self._recv_unacked = 0
        if self._out:
            self.flush()

    def _start_http1(self, buf: bytes) -> None:
        from .http1 import Http1Handler

        self._mode = 2
        self._buf = b""
        self._http1 = Http1Handler(self.server, self.transport)
        self._http1.data_received(buf)

    def _on_settings(self, flags: int, payload: bytes) -> None:
        if flags & f.ACK:
            return
        for key, value in f.parse_settings(payload):
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise ProtocolError(f.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for call in self.calls.values():
                    call.send_window += delta
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame = value
        self._out.append(f.frame(f.SETTINGS, f.ACK, 0))
        self._unblock()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        increment = f.u32(payload) & 0x7FFFFFFF
        if sid == 0:
            self._send_window += increment
        else:
            call = self.calls.get(sid)
            if call is None:
                return
            call.send_window += increment
        self._unblock()

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        block = payload
        if flags & f.PADDED:
            pad = block[0]
            block = block[1 : len(block) - pad]
        if flags & f.PRIORITY_FLAG:
            block = block[5:]
        if not flags & f.END_HEADERS:
            self._headers_in_progress = (sid, flags, bytearray(block))
            return
        self._headers_complete(sid, flags, block)

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if self._headers_in_progress is None or self._headers_in_progress[0] != sid:
            raise ProtocolError(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._headers_in_progress[2].extend(payload)
        if flags & f.END_HEADERS:
            psid, pflags, block = self._headers_in_progress
            self._headers_in_progress = None
            self._headers_complete(psid, pflags, bytes(block))

    def _decode_headers(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """HPACK-decode a header block. A client's repeated calls mostly send blocks of
        one-byte references to table entries; those are looked up directly, since such a
        block cannot change the dynamic table. Anything else goes through the decoder."""
        if block and all(b & 0x80 and b != 0xFF and b != 0x80 for b in block):
            get = self._decoder.header_table.get_by_index
            try:
                return [get(b & 0x7F) for b in block]
            except Exception:
                pass  # an invalid index: the decoder reports it
        try:
            return self._decoder.decode(block, raw=True)
        except Exception as exc:
            raise ProtocolError(f.COMPRESSION_ERROR, f"header block: {exc}") from None

    def _headers_complete(self, sid: int, flags: int, block: bytes) -> None:
        headers = self._decode_headers(block)
        call = self.calls.get(sid)
        if call is not None:  # trailers from the client
            if flags & f.END_STREAM:
                call.end_of_requests()
            return
        if sid % 2 == 0 or sid <= self._last_stream_id:
            raise ProtocolError(f.PROTOCOL_ERROR, "bad stream id")
        self._last_stream_id = sid
        if len(self.calls) >= self.server.max_concurrent_streams:
            # beyond what our SETTINGS allowed: refused, the client may retry it later
            self._out.append(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        path = b""
        content_type = b""
        for k, v in headers:
            if k == b":path":
                path = v
            elif k == b"content-type":
                content_type = v
        if not content_type.startswith(b"application/grpc") and \
                self.server.http_handler is not None:
            request = PlainRequest(self, sid, headers, self._peer_initial_window)
            self.calls[sid] = request
            if flags & f.END_STREAM:
                request.end_of_requests()
            return
        call = Call(self, sid, headers, self._peer_initial_window)
        method: Method | None = self.server.methods.get(path)
        if method is None:
            call.finish(12, f"unknown method {path.decode('latin-1')}")  # UNIMPLEMENTED
            self._out.append(f.rst_stream(sid, f.NO_ERROR))
            return
        guard = self.server.guard
        if guard is not None:
            refused = guard(headers)
            if refused is not None:
                call.finish(*refused)
                self._out.append(f.rst_stream(sid, f.NO_ERROR))
                return
        self.calls[sid] = call
        call.start(method)
        if flags & f.END_STREAM:
            call.end_of_requests()

    def _on_data(self, sid: int, flags: int, payload: bytes, length: int) -> None:
        self._recv_unacked += length
        if flags & f.PADDED:
            pad = payload[0]
            payload = payload[1 : len(payload) - pad]
        call = self.calls.get(sid)
        if call is None:
            return  # a call we already answered (or reset): its data is only flow control
        call.recv_unacked += length
        if payload:
            call.data_received(payload)
        if flags & f.END_STREAM:
            call.end_of_requests()
        elif call.recv_unacked >= STREAM_WINDOW_REFILL and not call.finished:
            self._out.append(f.window_update(sid, call.recv_unacked))
            call.recv_unacked = 0

    # -------------------------------------------------------------- writing

    def send_headers(self, call: Call, block: bytes, end_stream: bool) -> None:
        self.write(f.frame(f.HEADERS, f.END_HEADERS | (f.END_STREAM if end_stream else 0),
                           call.stream_id, block))

    def send_data(self, call: Call, data: bytes) -> None:
        """Send DATA on a call's stream, within both flow-control windows; queue the rest."""
        if call.pending or self._blocked:
            call.pending.append(data)
            call.pending_bytes += len(data)
            self._blocked[call.stream_id] = call
            return
        n = len(data)
        if n <= self._send_window and n <= call.send_window:
            self._send_window -= n
            call.send_window -= n
            size = self._peer_max_frame
            if n <= size:
                self.write(f.frame(f.DATA, 0, call.stream_id, data))
            else:
                sid = call.stream_id
                self.write(b"".join([f.frame(f.DATA, 0, sid, data[i:i + size])
                                     for i in range(0, n, size)]))
            return
        call.pending.append(data)
        call.pending_bytes += n
        self._blocked[call.stream_id] = call
        self._unblock()

    def send_trailers(self, call: Call, block: bytes) -> None:
        """End a call's stream with trailers, after any DATA still waiting for window."""
        if call.pending:
            call.pending.append(("trailers", block))
            self._blocked[call.stream_id] = call
            return
        self.send_headers(call, block, end_stream=True)
        self.calls.pop(call.stream_id, None)

    def _unblock(self) -> None:
        """Send queued DATA as far as the windows allow, streams in the order they blocked."""
        progress = True
        while self._blocked and progress:
            progress = False
            for sid, call in list(self._blocked.items()):
                while call.pending:
                    item = call.pending[0]
                    if isinstance(item, tuple):
                        call.pending.popleft()
                        self.send_headers(call, item[1], end_stream=True)
                        self.calls.pop(sid, None)
                        progress = True
                        continue
                    room = min(self._send_window, call.send_window, self._peer_max_frame)
                    if room <= 0:
                        break
                    chunk = item[:room]
                    if len(chunk) == len(item):
                        call.pending.popleft()
                    else:
                        call.pending[0] = item[room:]
                    self._send_window -= len(chunk)
                    call.send_window -= len(chunk)
                    call.pending_bytes -= len(chunk)
                    self.write(f.frame(f.DATA, 0, sid, chunk))
                    progress = True
                if not call.pending:
                    self._blocked.pop(sid, None)
                    call.writable_changed()
                if self._send_window <= 0:
                    return

    def writable(self, call: Call) -> bool:
        return not self._paused and call.pending_bytes < HIGH_WATER

    def close(self) -> None:
        """Graceful: no new calls (GOAWAY), close once the ongoing ones end."""
        if self.transport is None or self.closed:
            return
        if self._mode == 1:
            self.write(f.goaway(self._last_stream_id, f.NO_ERROR))
            self.flush()
        self.transport.close()

    def abort_call(self, call: Call) -> None:
        """Reset a stream we no longer serve (the handler failed before answering)."""
        self.calls.pop(call.stream_id, None)
        self._blocked.pop(call.stream_id, None)
        self.write(f.rst_stream(call.stream_id, f.CANCEL))


__all__ = ["Http2Connection", "AbortError", "status_number"]
