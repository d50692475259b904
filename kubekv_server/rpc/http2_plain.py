"""Plain HTTP requests over HTTP/2 on the client port (not gRPC: their content-type is
not application/grpc). A TLS client such as curl negotiates h2 by ALPN and sends the
JSON gateway's and /health's requests this way; they go to the same handler as
HTTP/1.1 requests."""

from __future__ import annotations

import asyncio
import logging

from kubekv_server.log_limit import RateLimitedLog, client_key, short_error
from kubekv_server.rpc import frames as f
from kubekv_server.rpc.calls import Call
from kubekv_server.rpc.context import request_tls
from kubekv_server.rpc.http1 import STREAM_HIGH_WATER, response_fields

log = logging.getLogger("kubekv.http")
failures = RateLimitedLog(log)

MAX_BODY = 8 << 20


class PlainRequest(Call):
    """One HTTP/2 stream carrying a plain HTTP request; answered once its body is in."""

    __slots__ = ("_body", "_stream_task")

    def __init__(self, conn, stream_id: int, headers) -> None:
        super().__init__(conn, stream_id, headers)
        self._body = bytearray()
        self._stream_task: asyncio.Task | None = None

    @property
    def buffered(self) -> int:
        return len(self._body)

    def data_received(self, payload: bytes) -> None:
        if self.finished:
            return
        self._body += payload
        if len(self._body) > MAX_BODY:
            self._answer(413, "text/plain; charset=utf-8", b"request body too large\n", ())

    def end_of_requests(self) -> None:
        if self._ended_requests or self.finished:
            return
        self._ended_requests = True
        fields = {}
        for k, v in self.headers:
            fields[k.decode("latin-1").lower()] = v.decode("latin-1")
        method, target = fields.get(":method", "GET"), fields.get(":path", "/")
        token = request_tls.set(self.conn.transport.get_extra_info("ssl_object") is not None)
        try:
            task = asyncio.ensure_future(
                self.conn.server.http_handler(method, target, fields, bytes(self._body)))
        finally:
            request_tls.reset(token)
        task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Future) -> None:
        if task.cancelled() or self.finished:
            return
        exc = task.exception()
        if exc is not None:
            failures.error(client_key(self.conn.peername), "http_handler_failed", "error=%s",
                           short_error(exc), exc_info=(type(exc), exc, exc.__traceback__))
            self._answer(500, "text/plain; charset=utf-8", b"internal error\n", ())
            return
        status, content_type, body, *extra = task.result()
        headers = extra[0] if extra else ()
        if isinstance(body, bytes | bytearray):
            self._answer(status, content_type, body, headers)
        else:
            self._stream_task = asyncio.ensure_future(
                self._stream(status, content_type, body, headers))

    def _head(self, status: int, content_type: str | None, headers) -> bytes:
        block = f.literal(b":status", str(status).encode())
        for k, v in response_fields(headers, content_type):
            block += f.literal(k.lower().encode(), v.encode())
        return block

    def _answer(self, status: int, content_type: str | None, body: bytes, headers) -> None:
        self.finished = True
        conn = self.conn
        if not body:
            conn.send_headers(self, self._head(status, content_type, headers), end_stream=True)
            conn.calls.pop(self.stream_id, None)
            return
        conn.send_headers(self, self._head(status, content_type, headers), end_stream=False)
        conn.send_data(self, bytes(body))
        conn.send_trailers(self, b"")
        self._run_callbacks()

    async def _stream(self, status: int, content_type: str, chunks, headers) -> None:
        conn = self.conn
        conn.send_headers(self, self._head(status, content_type, headers), end_stream=False)
        try:
            async for chunk in chunks:
                if self.finished:
                    break
                if chunk:
                    conn.send_data(self, chunk)
                while not self.finished and (
                        conn.pending_bytes(self) > STREAM_HIGH_WATER
                        or conn.transport.get_write_buffer_size() > STREAM_HIGH_WATER):
                    await asyncio.sleep(0.01)  # a slow client holds the stream back
            if not self.finished:
                self.finished = True
                conn.send_trailers(self, b"")
        finally:
            await chunks.aclose()

    def cancel(self) -> None:
        self.finished = True
        task = self._stream_task
        if task is not None and not task.done():
            task.cancel()
