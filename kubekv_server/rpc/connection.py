"""One client connection on the event loop: the socket, the HTTP/2 state machine and the calls.

The protocol itself lives in `http2.py` (sans-I/O); this module moves bytes between
it and the socket, turns its events into gRPC calls (`calls.py`) or plain HTTP
requests (`http2_plain.py`), and keeps one connection from starving the others:
one pass handles a bounded number of frames and then yields the loop; reading
stops while the client is not taking our answers, and while a backlog of frames
waits. Frames produced in one pass leave in one write, so under load many calls
share a syscall. Unary handlers that answer at once (reads) run inline; writes
return a future and answer when it resolves; blocking handlers and streams run on
worker threads through `calls.py`. The first bytes decide the protocol: the HTTP/2
preface, or HTTP/1.1 (`http1.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kubekv_server.log_limit import RateLimitedLog, client_key
from kubekv_server.rpc import frames as f
from kubekv_server.rpc import http2, limits
from kubekv_server.rpc.calls import Call, Method
from kubekv_server.rpc.context import AbortError, status_number
from kubekv_server.rpc.grpc_messages import unknown_method_status
from kubekv_server.rpc.http2_plain import PlainRequest

log = logging.getLogger("kubekv.rpc")
violations = RateLimitedLog(log)

_PREFACE_LEN = len(f.PREFACE)
# What the connection is speaking.
_WAITING, _HTTP2, _HTTP1 = "waiting for preface", "HTTP/2", "HTTP/1.1"


class Http2Connection(asyncio.Protocol):
    """The server side of one client connection carrying gRPC calls (and HTTP/1.1 fallback)."""

    def __init__(self, server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peername = None
        self.peer_cert_der: bytes | None = None
        self.peer_common_name: str | None = None
        self.calls: dict[int, Call] = {}
        self.h2: http2.ServerConnection | None = None
        self.closed = False
        self._protocol = _WAITING
        self._prebuf = b""
        self._http1 = None
        self._client = "?"
        self._write_paused = False
        self._reading_paused = False
        self._process_scheduled = False
        self._flush_scheduled = False
        self._ack_timer: asyncio.TimerHandle | None = None  # a held PING ACK's deadline
        self._terminated = False
        # bytes calls hold of requests not complete yet (what the connection window bounds)
        self._buffered_requests = 0
        self._preface_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        self._client = client_key(self.peername)
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
                violations.warning(self._client, "client_cert_refused",
                                   'msg="client certificate authentication failed"')
                transport.abort()
                return
        self.server.connections.add(self)
        self._preface_timer = self.loop.call_later(self.server.preface_timeout,
                                                   self._preface_expired)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        for call in list(self.calls.values()):
            call.cancel()
        self.calls.clear()
        if self._http1 is not None:
            self._http1.connection_lost()

    def eof_received(self) -> bool | None:
        """The client half-closed: HTTP/1.1 still answers what it sent (as Go does);
        HTTP/2 and an undecided connection close."""
        if self._http1 is not None:
            return self._http1.eof_received()
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.h2 is not None:
            self.h2.socket_drained()
        for call in list(self.calls.values()):
            call.writable_changed()
        self._schedule_process()
        self._update_reading()

    def _preface_expired(self) -> None:
        self._preface_timer = None
        if self.closed or self._protocol == _HTTP1:
            return
        if self.h2 is None or not self.h2.established:
            violations.info(self._client, "http2_preface_timeout",
                            "seconds=%g", self.server.preface_timeout)
            self.transport.abort()

    # -------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        if self._protocol is _HTTP2:
            self.h2.receive_data(data)
        elif self._protocol is _HTTP1:
            self._http1.data_received(data)
            return
        else:
            buf = self._prebuf + data if self._prebuf else data
            if not f.PREFACE.startswith(buf[:_PREFACE_LEN]):
                self._start_http1(buf)
                return
            if len(buf) < _PREFACE_LEN:
                self._prebuf = buf
                return
            self._prebuf = b""
            self._protocol = _HTTP2
            self.h2 = http2.ServerConnection(self.server.max_concurrent_streams,
                                             connection_window=max(
                                                 limits.CONNECTION_WINDOW,
                                                 2 * self.server.max_receive_bytes + 10),
                                             clock=self.loop.time)
            self.h2.initiate()
            self.h2.receive_data(buf)
        self._process()

    def _start_http1(self, buf: bytes) -> None:
        from kubekv_server.rpc.http1 import Http1Handler

        self._protocol = _HTTP1
        self._prebuf = b""
        if self._preface_timer is not None:
            self._preface_timer.cancel()
            self._preface_timer = None
        self._http1 = Http1Handler(self.server, self.transport)
        self._http1.data_received(buf)

    def _schedule_process(self) -> None:
        if not self._process_scheduled and self.h2 is not None and not self.closed:
            self._process_scheduled = True
            self.loop.call_soon(self._process)

    def _process(self) -> None:
        """One pass: a bounded number of frames parsed and acted on, then the output
        written; what is left waits for the next pass, with reading paused."""
        self._process_scheduled = False
        h2 = self.h2
        if self.closed or self._terminated:
            return
        h2.accepting = h2.queued_bytes < limits.MAX_CONNECTION_OUTPUT
        try:
            for event in h2.next_events():
                self._dispatch(event)
        except Exception:  # noqa: BLE001 - a bug must not take the loop down with it
            violations.error(self._client, "connection_failed", exc_info=True)
            h2.terminate(f.INTERNAL_ERROR, "internal error")
            self._terminated = True
        if self._preface_timer is not None and h2.established:
            self._preface_timer.cancel()
            self._preface_timer = None
        if self.calls and not self._terminated and h2.only_a_ping_ack_queued():
            # an answer is on its way (a call is open): the ACK leaves with it
            if self._ack_timer is None:
                self._ack_timer = self.loop.call_later(limits.PING_ACK_DELAY, self.flush)
        else:
            self.flush()
        if self._terminated:
            self.transport.close()
            return
        waiting = h2.has_complete_frame()
        if waiting and not self._write_paused:
            self._schedule_process()
        self._update_reading(waiting)

    def _update_reading(self, waiting: bool | None = None) -> None:
        """Read only while the client takes our answers and no frames wait to be parsed
        (`waiting`: whether frames wait, if the caller just asked)."""
        if self.closed or self.transport is None or self._protocol is not _HTTP2:
            return
        if waiting is None:
            waiting = self.h2.has_complete_frame()
        pause = self._write_paused or waiting
        if pause and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _dispatch(self, event) -> None:
        kind = type(event)
        if kind is http2.DataReceived:
            data = event.data
            call = self.calls.get(event.stream_id)
            if call is None:
                self.h2.acknowledge(len(data))
                return
            if data:
                call.data_received(data)
            if event.end_stream and not call.finished:
                call.end_of_requests()
            self._account(call, len(data))
        elif kind is http2.RequestReceived:
            self._start_call(event.stream_id, event.headers, event.end_stream, event.first,
                             event.last)
        elif kind is http2.StreamReset:
            call = self.calls.get(event.stream_id)
            if call is not None:
                self._forget(call)
                call.cancel()
            if not event.remote:
                violations.info(self._client, "http2_stream_error", "code=%d", event.error_code)
        elif kind is http2.TrailersReceived:
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.end_of_requests()
                self._account(call, 0)
        elif kind is http2.StreamWritable:
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.writable_changed()
        elif kind is http2.ConnectionTerminated:
            self._terminated = True
            violations.info(self._client, "http2_protocol_error", "code=%d error=%r",
                            event.error_code, event.reason)

    def _account(self, call: Call, received: int) -> None:
        """After a call took `received` bytes: what it still holds stays counted against
        the connection window, the rest is given back to the client."""
        if self.calls.get(call.stream_id) is call:
            delta = call.buffered - call.counted
            call.counted += delta
            self._buffered_requests += delta
            received -= delta
        if received:
            self.h2.acknowledge(received)

    def release_held(self, call: Call) -> None:
        """A handler took requests its call held (Method.hold_requests): their bytes go
        back to the client's connection window."""
        if not self.closed and self.h2 is not None:
            self._account(call, 0)
            self._schedule_flush()

    def _start_call(self, sid: int, headers, end_stream: bool, first: dict,
                    last: dict) -> None:
        """`first` and `last`: each header's first and last value (`header_lookups`)."""
        path = last.get(b":path", b"")
        content_type = last.get(b"content-type", b"")
        server = self.server
        if not content_type.startswith(b"application/grpc") and server.http_handler is not None:
            request = PlainRequest(self, sid, headers)
            self.calls[sid] = request
            if end_stream:
                request.end_of_requests()
            return
        call = Call(self, sid, headers, first)
        method: Method | None = server.methods.get(path)
        if method is None:
            self.calls[sid] = call  # kept: its DATA and END_STREAM must reach it
            call.refuse(*unknown_method_status(path, server.methods))
            if end_stream:
                call.end_of_requests()
            return
        guard = server.guard
        if guard is not None:
            refused = guard(headers)
            if refused is not None:
                self.calls[sid] = call
                call.finish(*refused)
                return
        self.calls[sid] = call
        call.start(method)
        if end_stream:
            call.end_of_requests()

    # -------------------------------------------------------------- writing

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def held_write(self, answer: Callable[..., None], *args) -> Callable[[], None]:
        """answer(*args) (a call's response) without scheduling the write it queues; the
        returned `flush` writes it, for a caller that answers several calls at once and
        writes once per connection after (`Call._answer`)."""
        if self._flush_scheduled:  # a write is due anyway: flushing sooner is no harm
            answer(*args)
            return self.flush
        self._flush_scheduled = True  # what send_* queue meanwhile waits for our flush
        try:
            answer(*args)
        except BaseException:
            self._flush_scheduled = False
            self._schedule_flush()
            raise
        return self.flush

    def flush(self) -> None:
        """Write what the state machine has queued; note whether the socket keeps up."""
        self._flush_scheduled = False
        if self._ack_timer is not None:  # a held PING ACK leaves with this write
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.closed or self.h2 is None:
            return
        h2 = self.h2
        data = h2.data_to_send()
        if data:
            self.transport.write(data)
        if h2.control_frames_queued and not self._write_paused \
                and self.transport.get_write_buffer_size() == 0:
            h2.socket_drained()

    def send_headers(self, call: Call, block: bytes, end_stream: bool) -> None:
        self.h2.send_headers(call.stream_id, block, end_stream)
        if end_stream:
            self._forget(call)
        self._schedule_flush()

    def send_data(self, call: Call, data: bytes) -> None:
        """DATA on a call's stream, within both flow-control windows; the rest is queued."""
        self.h2.send_data(call.stream_id, data)
        self._schedule_flush()

    def send_response(self, call: Call, block: bytes, data: bytes, trailers: bytes) -> None:
        """A unary answer: headers, one DATA, trailers."""
        self.h2.send_response(call.stream_id, block, data, trailers)
        self._forget(call)
        if not self._flush_scheduled:  # (a held write's owner flushes: `held_write`)
            self._schedule_flush()

    def send_trailers(self, call: Call, block: bytes) -> None:
        """End a call's stream with trailers, after any DATA still waiting for window."""
        self.h2.send_trailers(call.stream_id, block)
        self._forget(call)
        self._schedule_flush()

    def reset_call(self, call: Call, code: int = f.CANCEL) -> None:
        """Reset a stream we no longer serve."""
        self._forget(call)
        self.h2.reset_stream(call.stream_id, code)
        self._schedule_flush()

    def abort_call(self, call: Call) -> None:
        """Reset a stream whose handler failed before answering."""
        self.reset_call(call, f.CANCEL)

    def _forget(self, call: Call) -> None:
        if self.calls.pop(call.stream_id, None) is not None and call.counted:
            self._buffered_requests -= call.counted
            self.h2.acknowledge(call.counted)
            call.counted = 0

    def pending_bytes(self, call: Call) -> int:
        """Response bytes of a call still waiting for the client's flow-control window."""
        return self.h2.pending_bytes(call.stream_id)

    def unacknowledged_bytes(self, call: Call) -> int:
        return self.h2.unacknowledged_bytes(call.stream_id)

    def writable(self, call: Call) -> bool:
        return not self._write_paused and \
            self.h2.pending_bytes(call.stream_id) < limits.STREAM_HIGH_WATER

    def close(self) -> None:
        """Close now, politely: HTTP/2 gets GOAWAY(NO_ERROR) and what is already queued,
        then the socket closes (asyncio writes out its buffer first). Calls still running
        are not waited for; `RpcServer.close` gives connections a grace period to go."""
        if self.transport is None or self.closed:
            return
        if self.h2 is not None:
            self.h2.close(f.NO_ERROR)
            self.flush()
        self.transport.close()


__all__ = ["Http2Connection", "AbortError", "status_number"]
