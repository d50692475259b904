"""HTTP/1.1 on the client port: etcd answers /health, /version (and more) there, next to gRPC."""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate

from .context import request_tls

log = logging.getLogger("kubekv.http")

MAX_HEAD = 64 << 10
MAX_BODY = 8 << 20
# bytes of a streamed response waiting for the client beyond which the stream waits
STREAM_HIGH_WATER = 1 << 20

REASONS = {200: "OK", 301: "Moved Permanently", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            409: "Conflict", 412: "Precondition Failed", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def request_body(buf: bytes, start: int, headers: dict) -> tuple[bytes, int] | None:
    """The body of a request whose head ends at `start`: (body, end offset), or None
    while incomplete. Content-Length or chunked transfer coding; BadRequest otherwise."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _chunked_body(buf, start)
    text = headers.get("content-length", "0") or "0"
    if not text.isdigit():
        raise BadRequest(400, "bad Content-Length")
    length = int(text)
    if length > MAX_BODY:
        raise BadRequest(413, "request body too large")
    if len(buf) < start + length:
        return None
    return buf[start:start + length], start + length


def _chunked_body(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 1024:
                raise BadRequest(400, "malformed chunked encoding")
            return None
        size_text = buf[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest(400, "malformed chunked encoding") from None
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # after any trailer fields
            return None if end < 0 else (bytes(out), end + 4)
        if len(out) + size > MAX_BODY:
            raise BadRequest(413, "request body too large")
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


def response_fields(headers, content_type: str | None) -> list[tuple[str, str]]:
    """A response's header fields as Go's net/http writes them: sorted by name, then
    Date (HTTP/1.1 and plain HTTP/2 answers alike)."""
    fields = sorted([*headers, *([("Content-Type", content_type)] if content_type else [])])
    fields.append(("Date", formatdate(usegmt=True)))
    return fields


def _header_lines(headers, content_type: str | None) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in response_fields(headers, content_type))


class Http1Handler:
    """Parses HTTP/1.1 requests on a connection and answers them through the server's handler."""

    def __init__(self, server, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        self._buf = b""
        self._busy = False
        self._closed = False
        self._continued = False
        self._stream_task: asyncio.Task | None = None

    def connection_lost(self) -> None:
        self._closed = True
        if self._stream_task is not None and not self._stream_task.done():
            self._stream_task.cancel()  # ends the gRPC stream behind it

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._next()

    def _next(self) -> None:
        if self._busy or self._closed:
            return
        head_end = self._buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buf) > MAX_HEAD:
                self._reply(400, b"request header too large\n", close=True)
            return
        head = self._buf[:head_end].decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._reply(400, b"malformed request line\n", close=True)
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        try:
            got = request_body(self._buf, head_end + 4, headers)
        except BadRequest as exc:
            self._reply(exc.status, exc.text.encode() + b"\n", close=True)
            return
        if got is None:
            if headers.get("expect", "").lower() == "100-continue" and not self._continued:
                self._continued = True  # curl waits for this before sending a large body
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._continued = False
        body, end = got
        self._buf = self._buf[end:]
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        handler = self.server.http_handler
        if handler is None:
            self._reply(404, b"404 page not found\n", close=close)
            return
        self._busy = True
        token = request_tls.set(self.transport.get_extra_info("ssl_object") is not None)
        try:
            task = asyncio.ensure_future(handler(method, target, headers, body))
        finally:
            request_tls.reset(token)
        task.add_done_callback(lambda t: self._done(t, close))

    def _done(self, task: asyncio.Future, close: bool) -> None:
        self._busy = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("event=http_handler_failed error=%r", exc)
            self._reply(500, b"internal error\n", close=True)
            return
        status, content_type, body, *extra = task.result()
        headers = extra[0] if extra else ()
        if not isinstance(body, bytes | bytearray):  # an async iterator of chunks
            self._busy = True
            stream = asyncio.ensure_future(self._stream(status, content_type, body, headers))
            stream.add_done_callback(lambda t: self._streamed(t, close))
            self._stream_task = stream
            return
        self._reply(status, body, content_type=content_type, close=close, headers=headers)
        self._next()

    async def _stream(self, status: int, content_type: str, chunks, headers) -> None:
        """A chunked response, each chunk written as it comes, until the iterator ends
        or the client goes away."""
        self.transport.write((
            f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
            + _header_lines(headers, content_type)
            + "Transfer-Encoding: chunked\r\n\r\n").encode())
        try:
            async for chunk in chunks:
                if self._closed:
                    break
                if chunk:
                    self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                # a slow client holds the stream back instead of growing our buffer
                while (not self._closed
                       and self.transport.get_write_buffer_size() > STREAM_HIGH_WATER):
                    await asyncio.sleep(0.01)
            if not self._closed:
                self.transport.write(b"0\r\n\r\n")
        finally:
            await chunks.aclose()

    def _streamed(self, task: asyncio.Future, close: bool) -> None:
        self._busy = False
        self._stream_task = None
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("event=http_stream_failed error=%r", task.exception())
            close = True
        if close and not self._closed:
            self.transport.close()
            self._closed = True
            return
        self._next()

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
               close: bool = False, headers=()) -> None:
        if self._closed:
            return
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
            + _header_lines(headers, content_type)
            + f"Content-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        self.transport.write(head.encode() + body)
        if close:
            self.transport.close()
            self._closed = True


class Http1Protocol(asyncio.Protocol):
    """A listener that speaks only HTTP/1.1 (etcd's --listen-metrics-urls)."""

    def __init__(self, http_handler) -> None:
        self._server = _HandlerOnly(http_handler)
        self._h: Http1Handler | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._h = Http1Handler(self._server, transport)

    def data_received(self, data: bytes) -> None:
        self._h.data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._h.connection_lost()


class _HandlerOnly:
    def __init__(self, http_handler) -> None:
        self.http_handler = http_handler
