"""gRPC calls on an HTTP/2 stream: message framing, handler dispatch, status and trailers.

Handlers come in three kinds, chosen once per method when it is registered:
  inline  plain function marked with `@inline`, run on the event loop; it must
          not block. It may return a response or an asyncio.Future of one; a future
          with `answer_with(fn)` (a Raft proposal, replication/raft_node.py) answers
          the call as it resolves and leaves the write to its resolver, which makes
          one per connection for a batch: the answer leaves in that loop pass, not
          two passes later (a done callback, then a scheduled flush).
          Client streaming (not server streaming): called with the context when the
          call starts, it returns a `RequestSink`, whose `message` takes each request
          in the loop pass that parsed it (no task, no queue: the peer port's Raft
          messages) and whose `end` answers.
  async   `async def` (or an async generator for server streaming), a task.
  thread  any other plain function or generator, run on a worker thread with
          blocking request iterators (grpc's thread-pool model, for code that waits).
          A streaming generator may yield a list of messages: they are handed to
          the loop and written together.
"""

from __future__ import annotations

import asyncio
import contextvars
import gzip
import inspect
import logging
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from kubekv_server.auth.caller import call_principal
from kubekv_server.log_limit import RateLimitedLog, client_key, short_error
from kubekv_server.rpc import frames as f
from kubekv_server.rpc import grpc_messages as gm
from kubekv_server.rpc.context import (
    AbortError,
    Deferred,
    RpcContext,
    status_number,
)

log = logging.getLogger("kubekv.rpc")
# malformed requests: a line per client per interval, never a flood
_refusal_log = RateLimitedLog(log)
# characters of a refusal's status message put in the log line
LOGGED_MESSAGE_CHARS = 200

_LEN = struct.Struct(">I")
_END = object()
_CANCELLED = object()

OK = 0
CANCELLED = 1
UNKNOWN = 2
INTERNAL = 13
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
# grpc-go's gzip compressor writes at compress/gzip's default level.
GZIP_LEVEL = 6


def inline(fn):
    """Mark a plain handler as safe to run on the event loop (it never blocks)."""
    fn._kubekv_inline = True
    return fn


class RequestSink(Protocol):
    """What an inline client-streaming handler returns: it takes the call's requests as
    they are parsed. Both methods run on the loop and must not block; raising (an
    `AbortError` from `context.abort`) ends the call with that status."""

    def message(self, request: Any, size: int) -> None:
        """One request, `size` its encoded bytes."""

    def end(self) -> Any:
        """The client ended its side: the response, or an asyncio.Future of it."""


@dataclass
class Method:
    path: bytes
    request_class: type
    client_streaming: bool
    server_streaming: bool
    handler: object
    kind: str  # "inline", "async", "thread"
    # grpc_prometheus labels: (grpc_method, grpc_service, grpc_type)
    labels: tuple[str, str, str] = ("", "", "")
    # client streaming only: each request's bytes stay counted against the connection
    # window until the handler takes it, and the handler's iterator yields
    # (request, encoded size) pairs (the peer port: a handler slower than its sender, such
    # as a snapshot receive writing to disk, holds at most a window of requests)
    hold_requests: bool = False

    @classmethod
    def of(cls, path: bytes, request_class, client_streaming: bool, server_streaming: bool,
           handler) -> Method:
        if getattr(handler, "_kubekv_inline", False) and not server_streaming:
            kind = "inline"
        elif inspect.iscoroutinefunction(handler) or inspect.isasyncgenfunction(handler):
            kind = "async"
        else:
            kind = "thread"
        service, _, name = path.decode().lstrip("/").partition("/")
        grpc_type = ("bidi_stream" if client_streaming and server_streaming else
                     "client_stream" if client_streaming else
                     "server_stream" if server_streaming else "unary")
        return cls(path, request_class, client_streaming, server_streaming, handler, kind,
                   (name, service, grpc_type))


def _bound(principal) -> contextvars.Context | None:
    """A copy of the current context with `principal` as the caller (None: no copy)."""
    if principal is None:
        return None
    run_in = contextvars.copy_context()
    run_in.run(call_principal.set, principal)
    return run_in


class CallCancelled(Exception):
    """The client cancelled the call (or went away) while a handler was reading requests."""


class Call:
    """One gRPC call: its stream's flow-control state, request messages and response side."""

    __slots__ = (
        "conn", "stream_id", "headers", "fields", "counted", "finished", "callbacks", "method",
        "_reader", "_message", "_held", "_requests", "_headers_sent", "_task", "_writable",
        "_ended_requests", "_compress", "_refusal", "_encoding", "_reading", "_started",
        "_sink", "_sink_context",
    )

    def __init__(self, conn, stream_id: int, headers, fields: dict | None = None) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.headers = headers
        # each header's first value, what a lookup by name finds (http2.header_lookups)
        self.fields = dict(reversed(headers)) if fields is None else fields
        self.counted = 0  # the part of `buffered` the connection has counted
        self.finished = False
        self.callbacks: list = []
        self.method: Method | None = None
        # whether request DATA is still read: from start() until a unary call has its one
        # message (grpc-go reads one and ignores the rest) or the call is refused
        self._reading = False
        self._encoding: str | None = None  # the request's grpc-encoding (None: identity)
        # partial-message state, made only when a payload is not exactly one plain message
        self._reader: gm.MessageReader | None = None
        # the request's encoding, which the responses use too (grpc-go): None, gzip, deflate
        self._compress: str | None = None
        self._refusal: tuple[int, str] | None = None  # refused at start, answered next pass
        self._message = None  # a unary call's parsed request, until END_STREAM
        self._held = 0  # the size of that request's message
        self._requests = None  # queue for streaming requests
        self._sink: RequestSink | None = None  # an inline client stream's request taker
        self._sink_context: contextvars.Context | None = None  # the caller it runs as
        self._headers_sent = False
        self._task = None
        self._writable: threading.Event | asyncio.Event | None = None
        self._ended_requests = False
        self._started = 0.0  # perf_counter at start(), when the observer times calls

    # ------------------------------------------------------------ requests

    @property
    def buffered(self) -> int:
        """Request bytes held that no handler has taken yet: a partial message, or a unary
        call's request waiting for the client to end its side."""
        reader = self._reader
        return (reader.buffered if reader is not None else 0) + self._held

    def start(self, method: Method) -> None:
        encoding = self.fields.get(b"grpc-encoding")
        if encoding is not None:
            try:
                encoding = gm.request_encoding(encoding)
            except gm.GrpcStatusError as exc:
                # refused before the handler (and grpc_prometheus's interceptor) runs, as
                # grpc-go
                self.refuse(exc.code, exc.message)
                return
        self._encoding = encoding
        self._reading = True
        self._compress = encoding
        self.method = method
        observer = self.conn.server.observer
        if observer is not None:
            if observer.timed:  # --metrics extensive: grpc_server_handling_seconds
                self._started = time.perf_counter()
            observer.started(method)
        if method.client_streaming:
            if method.kind == "inline":
                self._open_sink()
            else:
                self._start_streaming_requests()

    def refuse(self, code: int, message: str) -> None:
        """Refuse a call that is not started (bad grpc-encoding, unknown method): the call
        stays in `conn.calls`, ignoring its DATA, and answers on the next loop pass, once
        this read's frames are in; whether the client had half-closed by then (END_STREAM
        on the request's DATA, typically in the same read) decides the RST_STREAM, as in
        grpc-go, whose handler goroutine writes the status after the transport read them."""
        self._refusal = (code, message)
        self.conn.loop.call_soon(self._refuse)

    def _refuse(self) -> None:
        if not self.finished:
            self._fail_now(*self._refusal)

    def data_received(self, payload: bytes) -> None:
        if not self._reading or self.finished:
            return  # a unary call's extra messages (grpc-go never reads them), or refused
        reader = self._reader
        if reader is None:
            n = len(payload)
            if (n >= 5 and payload[0] == 0 and _LEN.unpack_from(payload, 1)[0] == n - 5
                    and n - 5 <= self.conn.server.max_receive_bytes):
                # the common case, one plain message in one DATA payload (the reader's
                # fast path, without making one): nothing is left partial
                self._on_message(payload[5:])
                return
            reader = self._reader = gm.MessageReader(
                self.conn.server.max_receive_bytes, self._encoding,
                single=not self.method.client_streaming)
        try:
            messages = reader.feed(payload)
        except gm.GrpcStatusError as exc:
            self._fail_now(exc.code, exc.message)
            return
        for msg in messages:
            self._on_message(msg)
            if self.finished or not self._reading:
                return

    def _parse(self, msg: bytes):
        """A request message, or None after failing the call with etcd's unmarshal error."""
        observer = self.conn.server.observer
        if observer is not None:  # etcd's codec counts each message it unmarshals
            observer.received_bytes += len(msg)
        try:
            return self.method.request_class.FromString(msg)
        except DecodeError:
            exc = gm.unmarshal_status(msg, self.method.request_class.DESCRIPTOR)
            self._fail_now(exc.code, exc.message)
            return None

    def _on_message(self, msg: bytes) -> None:
        if self._sink is not None:
            req = self._parse(msg)
            if req is not None:
                self._to_sink(self._sink.message, req, len(msg))
        elif self._requests is not None:
            req = self._parse(msg)
            if req is not None:
                if self.method.hold_requests:
                    self._held += len(msg)
                    self._push_request((req, len(msg)))
                else:
                    self._push_request(req)
        else:
            # parsed now: garbage is answered at once, as grpc-go does, even if the client
            # keeps its side open (a good request still waits for END_STREAM to run)
            self._reading = False
            self._reader = None
            self._message = self._parse(msg)
            self._held = len(msg) if self._message is not None else 0

    def end_of_requests(self) -> None:
        ended, self._ended_requests = self._ended_requests, True
        if ended or self.finished or self._refusal is not None:
            return
        if self._reader is not None and self._reading:
            try:
                self._reader.end()
            except gm.GrpcStatusError as exc:
                self._fail_now(exc.code, exc.message)
                return
        if self._requests is not None:
            self._push_request(_END)
            return
        if self._sink is not None:
            result = self._to_sink(self._sink.end)
            if isinstance(result, asyncio.Future):
                result.add_done_callback(self._future_done)
                self._task = result
            elif not self.finished:
                self.respond(result)
            return
        if self._message is None:
            # etcd 3.5.1 never answers this call (grpc-go v1.38 writes no status for io.EOF):
            # the client would wait for its deadline; an answer is kinder
            self._fail_now(INTERNAL, "grpc: no request message")
            return
        req, self._message, self._held = self._message, None, 0
        if self.method.server_streaming:
            self._run_server_stream(req)
        else:
            self._run_unary(req)

    # ------------------------------------------------------------- unary

    def _principal(self, req, ctx):
        """Run the server's gate: the caller to bind while the handler runs (None: none).
        Raises what the gate raises."""
        gate = self.conn.server.gate
        return None if gate is None else gate(self.method.path, req, ctx)

    def _admit(self, req, ctx) -> contextvars.Context | None:
        """Run the server's gate; the context to run the handler in (None: as is).
        Raises what the gate raises."""
        return _bound(self._principal(req, ctx))

    def _run_unary(self, req, deferred: bool = False) -> None:
        m = self.method
        ctx = RpcContext(self)
        gate = self.conn.server.gate
        try:
            principal = None if gate is None else gate(m.path, req, ctx)
        except Deferred as d:
            if deferred:
                self._fail(d.otherwise)
            else:
                self._task = d.future
                d.future.add_done_callback(
                    lambda _f: None if self.finished else self._run_unary(req, True))
            return
        except BaseException as exc:
            self._fail(exc)
            return
        if m.kind == "inline":
            # the caller is bound in the loop's own context for the handler's duration:
            # cheaper than a context copy per call, and the same to the handler and to the
            # callbacks it schedules (they copy the context they are scheduled in)
            try:
                if principal is None:
                    result = m.handler(req, ctx)
                else:
                    token = call_principal.set(principal)
                    try:
                        result = m.handler(req, ctx)
                    finally:
                        call_principal.reset(token)
            except BaseException as exc:
                self._fail(exc)
                return
            if isinstance(result, asyncio.Future):
                answer_with = getattr(result, "answer_with", None)
                if answer_with is not None:  # a proposal: answered as it resolves
                    answer_with(self._answer)
                else:
                    result.add_done_callback(self._future_done)
                self._task = result
            else:
                self.respond(result)
            return
        run_in = _bound(principal)
        if m.kind == "async":
            task = self.conn.loop.create_task(m.handler(req, ctx), context=run_in)
            task.add_done_callback(self._future_done)
            self._task = task
        else:
            loop = self.conn.loop
            if run_in is None:
                fut = loop.run_in_executor(self.conn.server.executor, m.handler, req, ctx)
            else:
                fut = loop.run_in_executor(self.conn.server.executor, run_in.run, m.handler,
                                           req, ctx)
            fut.add_done_callback(self._future_done)
            self._task = fut

    def _answer(self, fut: asyncio.Future) -> Callable[[], None]:
        """A proposal resolved (`answer_with`): answer now; the returned write is the
        resolver's to run, once per connection for all the answers it gives together."""
        return self.conn.held_write(self._future_done, fut)

    def _future_done(self, fut: asyncio.Future) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(exc)
        else:
            self.respond(fut.result())

    def respond(self, resp) -> None:
        """Answer a unary call: headers, one message, OK trailers, in one write."""
        if self.finished:
            return
        data = resp.SerializeToString()
        self.finished = True
        conn = self.conn
        observer = conn.server.observer
        if observer is not None and self.method is not None:
            observer.handled(self.method, OK, self._started)
        if self._compress is None:  # _response_headers() and _frame(data), inline
            if observer is not None:  # etcd's codec counts each message it marshals
                observer.sent_bytes += len(data)
            conn.send_response(self, f.RESPONSE_HEADERS, b"\x00" + _LEN.pack(len(data)) + data,
                               f.TRAILERS_OK)
        else:
            conn.send_response(self, self._response_headers(), self._frame(data),
                               f.TRAILERS_OK)
        if self.callbacks:
            self._run_callbacks()

    # --------------------------------------------------------- responses

    def send_message(self, resp) -> None:
        """Send one message of a streaming response (loop thread)."""
        if self.finished:
            return
        if not self._headers_sent:
            self._headers_sent = True
            self.conn.send_headers(self, self._response_headers(), end_stream=False)
        data = resp if isinstance(resp, bytes) else resp.SerializeToString()
        self.conn.send_data(self, self._frame(data))

    def _response_headers(self) -> bytes:
        if self._compress is None:
            return f.RESPONSE_HEADERS
        return f.RESPONSE_HEADERS_GZIP if self._compress == "gzip" else f.RESPONSE_HEADERS_DEFLATE

    def _frame(self, data: bytes) -> bytes:
        """One response message with its prefix; compressed when the request was, as
        grpc-go (etcd) answers a request whose grpc-encoding names a compressor it has."""
        observer = self.conn.server.observer
        if observer is not None:  # etcd's codec counts each message it marshals
            observer.sent_bytes += len(data)
        if self._compress is not None:
            if self._compress == "gzip":
                data = gzip.compress(data, GZIP_LEVEL, mtime=0)
            else:
                data = zlib.compress(data, GZIP_LEVEL)
            return b"\x01" + _LEN.pack(len(data)) + data
        return b"\x00" + _LEN.pack(len(data)) + data

    def finish(self, code: int, message: str = "") -> None:
        """End the call with a status (trailers-only if nothing was sent yet)."""
        if self.finished:
            return
        self.finished = True
        if self.conn.server.observer is not None and self.method is not None:
            self.conn.server.observer.handled(self.method, code, self._started)
        block = f.trailers(code, message)
        if self._headers_sent:
            self.conn.send_trailers(self, block)
        else:
            self.conn.send_headers(self, f.RESPONSE_HEADERS + block, end_stream=True)
            self.conn.calls.pop(self.stream_id, None)
        self._run_callbacks()

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, AbortError):
            self.finish(status_number(exc.code), exc.details)
        elif isinstance(exc, CallCancelled | asyncio.CancelledError):
            self.finish(CANCELLED, "context canceled")
        else:
            code = getattr(exc, "code", None)
            if isinstance(code, grpc.StatusCode):  # an EtcdError that escaped a handler
                self.finish(status_number(code), getattr(exc, "message", str(exc)))
                return
            # a bug in a handler: its traceback, but at most once a minute per client
            _refusal_log.error(client_key(self.conn.peername), "handler_failed",
                               "method=%s error=%s",
                               self.method.path.decode() if self.method else "?",
                               short_error(exc), exc_info=(type(exc), exc, exc.__traceback__))
            self.finish(UNKNOWN, str(exc))

    def _fail_now(self, code: int, message: str) -> None:
        """A malformed request: answer with the status, stop reading this stream. The
        connection resets the stream (NO_ERROR) only if the client has not ended its side,
        as grpc-go does; the HTTP/2 machine knows that as of the frame being handled."""
        self._reading = False
        self._reader = None
        self._message = None
        self._held = 0
        _refusal_log.info(client_key(self.conn.peername), "grpc_request_refused",
                          "code=%d message=%r", code, message[:LOGGED_MESSAGE_CHARS])
        self.finish(code, message)
        self._cancel_handler()

    def cancel(self) -> None:
        """The client reset the stream or the connection ended."""
        if not self.finished:
            self.finished = True
            observer = self.conn.server.observer
            if observer is not None and self.method is not None:
                observer.handled(self.method, CANCELLED, self._started)
            self._run_callbacks()
        self._cancel_handler()

    def _cancel_handler(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        if self._requests is not None:
            self._push_request(_CANCELLED)
        if self._writable is not None:
            self._writable.set()

    def _run_callbacks(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:
                log.exception("event=call_callback_failed")

    def writable_changed(self) -> None:
        w = self._writable
        if w is not None and (self.finished or self.conn.writable(self)):
            w.set()

    # ------------------------------------------------------------ streams

    def _open_sink(self) -> None:
        """An inline client stream: the handler's sink takes each request as it is parsed."""
        ctx = RpcContext(self)
        try:
            run_in = self._sink_context = self._admit(None, ctx)
            handler = self.method.handler
            self._sink = handler(ctx) if run_in is None else run_in.run(handler, ctx)
        except BaseException as exc:
            self._fail(exc)

    def _to_sink(self, fn, *args):
        """Run a sink's method as the call's caller; what it raises ends the call (and
        the reading of its requests)."""
        try:
            run_in = self._sink_context
            return fn(*args) if run_in is None else run_in.run(fn, *args)
        except BaseException as exc:
            self._fail(exc)
            return None

    def _start_streaming_requests(self) -> None:
        if self.method.kind == "async":
            self._requests = asyncio.Queue()
        else:
            self._requests = queue.SimpleQueue()
        self._run_stream_handler(None)

    def _push_request(self, item) -> None:
        self._requests.put_nowait(item) if isinstance(self._requests, asyncio.Queue) else \
            self._requests.put(item)

    def _run_server_stream(self, req) -> None:
        self._run_stream_handler(req)

    def _run_stream_handler(self, req) -> None:
        m = self.method
        ctx = RpcContext(self)
        arg = req if not m.client_streaming else None
        try:
            run_in = self._admit(arg, ctx)
        except BaseException as exc:
            self._fail(exc)
            return
        if m.kind == "async":
            self._writable = asyncio.Event()
            self._task = self.conn.loop.create_task(self._drive_async(arg, ctx), context=run_in)
        else:
            self._writable = threading.Event()
            if run_in is None:
                self._task = self.conn.loop.run_in_executor(
                    self.conn.server.executor, self._drive_thread, arg, ctx
                )
            else:
                self._task = self.conn.loop.run_in_executor(
                    self.conn.server.executor, run_in.run, self._drive_thread, arg, ctx
                )

    async def _request_iter(self, held: bool = False):
        """The call's requests as they arrive. `held` (Method.hold_requests): each is a
        (request, size) pair whose flow-control window is given back as it is taken."""
        q = self._requests
        while True:
            item = await q.get()
            if item is _END:
                return
            if item is _CANCELLED:
                raise CallCancelled()
            if held:
                self._held -= item[1]
                self.conn.release_held(self)
            yield item

    async def _drive_async(self, req, ctx) -> None:
        m = self.method
        try:
            if m.client_streaming:
                arg = self._request_iter(m.hold_requests)
            else:
                arg = req
            result = m.handler(arg, ctx)
            if m.server_streaming:
                async for resp in result:
                    self.send_message(resp)
                    if not self.conn.writable(self):
                        self._writable.clear()
                        await self._writable.wait()
                    if self.finished:
                        return
                self.finish(OK)
            else:
                resp = await result
                self.respond(resp)
        except BaseException as exc:  # noqa: BLE001 - every outcome becomes a status
            if not self.finished:
                self._fail(exc)

    def _blocking_requests(self):
        q = self._requests
        while True:
            item = q.get()
            if item is _END:
                return
            if item is _CANCELLED:
                raise CallCancelled()
            yield item

    def _drive_thread(self, req, ctx) -> None:
        """Worker thread: run a blocking handler, posting each response to the loop."""
        m = self.method
        loop = self.conn.loop
        try:
            arg = self._blocking_requests() if m.client_streaming else req
            result = m.handler(arg, ctx)
            if not m.server_streaming:
                loop.call_soon_threadsafe(self.respond, result)
                return
            for resp in result:
                if self.finished:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                    return
                if isinstance(resp, list):  # a batch of messages, sent in one pass
                    data = [r.SerializeToString() for r in resp]
                else:
                    data = resp.SerializeToString()
                self._writable.clear()
                loop.call_soon_threadsafe(self._send_and_check, data)
                self._writable.wait()
            loop.call_soon_threadsafe(self.finish, OK)
        except BaseException as exc:  # noqa: BLE001 - every outcome becomes a status
            loop.call_soon_threadsafe(self._fail_if_open, exc)

    def send_messages(self, msgs: list[bytes]) -> None:
        """Send several messages of a streaming response, packed into as few DATA
        frames as the frame size allows (as grpc-go's buffered writer does)."""
        if self.finished or not msgs:
            return
        if not self._headers_sent:
            self._headers_sent = True
            self.conn.send_headers(self, self._response_headers(), end_stream=False)
        if self._compress is not None:
            self.conn.send_data(self, b"".join([self._frame(d) for d in msgs]))
            return
        pack = _LEN.pack
        framed = b"".join([b"\x00" + pack(len(d)) + d for d in msgs])
        observer = self.conn.server.observer
        if observer is not None:
            observer.sent_bytes += len(framed) - 5 * len(msgs)  # the messages, as _frame
        self.conn.send_data(self, framed)

    def _send_and_check(self, data: bytes | list[bytes]) -> None:
        if isinstance(data, list):
            self.send_messages(data)
        else:
            self.send_message(data)
        if self.finished or self.conn.writable(self):
            self._writable.set()

    def _fail_if_open(self, exc: BaseException) -> None:
        if not self.finished:
            self._fail(exc)
