"""HTTP/1.1 on the client port: etcd answers /health, /version (and more) there, next to gRPC."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("kubekv.http")

MAX_HEAD = 64 << 10
MAX_BODY = 8 << 20

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class Http1Handler:
    """Parses HTTP/1.1 requests on a connection and answers them through the server's handler."""

    def __init__(self, server, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        self._buf = b""
        self._busy = False
        self._closed = False

    def connection_lost(self) -> None:
        self._closed = True

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
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            self._reply(413, b"request body too large\n", close=True)
            return
        if len(self._buf) < head_end + 4 + length:
            return
        body = self._buf[head_end + 4 : head_end + 4 + length]
        self._buf = self._buf[head_end + 4 + length :]
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        handler = self.server.http_handler
        if handler is None:
            self._reply(404, b"404 page not found\n", close=close)
            return
        self._busy = True
        task = asyncio.ensure_future(handler(method, target, headers, body))
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
        status, content_type, body = task.result()
        self._reply(status, body, content_type=content_type, close=close)
        self._next()

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
               close: bool = False) -> None:
        if self._closed:
            return
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        self.transport.write(head.encode() + body)
        if close:
            self.transport.close()
            self._closed = True
