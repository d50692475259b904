"""HTTP/1.1 on the client port: etcd answers /health, /version, /metrics and the JSON
gateway there, next to gRPC. Requests are parsed by h11 (sans-I/O, strict framing);
malformed ones get the answers etcd 3.5's Go server gives them, byte for byte where
Go's text is fixed. Responses are written in Go net/http's layout."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import http
import logging
import re
from email.utils import formatdate

import h11

from kubekv_server.log_limit import RateLimitedLog, client_key, short_error
from kubekv_server.rpc.context import request_tls

log = logging.getLogger("kubekv.http")
_limited = RateLimitedLog(log)

# A request head (request line and header fields) larger than this is refused with 431:
# Go's http.DefaultMaxHeaderBytes (1 MiB) plus the 4 KiB its reader allows beyond it, so
# we refuse exactly what etcd refuses; HTTP/2 already lets one connection send 1 MiB.
MAX_HEAD = (1 << 20) + 4096
# A request body larger than this is refused with 413 and the connection closed. etcd's
# gRPC limit (--max-request-bytes 1.5 MiB) refuses such requests anyway, after reading them.
MAX_BODY = 8 << 20
# Bytes of later (pipelined) requests taken off the socket while one request is being
# handled; beyond this we stop reading and let TCP push back on the client.
MAX_PIPELINED = 64 << 10
# cmux in front of etcd's plain client port reads the first request line through a 4 KiB
# bufio reader; a longer or unparseable first line matches no protocol and is closed.
MUX_LINE_MAX = 4096
# A request head (or a body that stops moving) not complete after this many seconds closes
# the connection (slowloris). etcd sets no ReadHeaderTimeout; a minute is far beyond any
# honest client and keeps a hostile one from holding a connection for ever.
HEAD_TIMEOUT = 60.0
# A keep-alive connection with no request for this long is closed: longer than Go's client
# IdleConnTimeout (90 s), so clients drop idle connections before we do.
IDLE_TIMEOUT = 120.0
# bytes of a streamed response waiting for the client beyond which the stream waits
STREAM_HIGH_WATER = 1 << 20
# a chunk size with more hex digits than this is "too large" for Go's chunked reader
_GO_CHUNK_DIGITS = 16

REASONS = {200: "OK", 301: "Moved Permanently", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           409: "Conflict", 412: "Precondition Failed", 413: "Request Entity Too Large",
           421: "Misdirected Request", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}


def reason(status: int) -> str:
    """Go's StatusText for a status code (Python's phrase for ones we never expect)."""
    text = REASONS.get(status)
    if text is None:
        try:
            text = http.HTTPStatus(status).phrase
        except ValueError:
            text = ""
    return text


class MalformedBody(bytes):
    """An empty request body standing for one that could not be read, with Go's error
    text: etcd's Go server hands the handler the request before reading the body, so the
    gateway answers the read error as its own JSON error; other handlers ignore the body
    and the connection closes after the answer."""

    error: str

    def __new__(cls, error: str) -> MalformedBody:
        self = super().__new__(cls, b"")
        self.error = error
        return self


# ------------------------------------------------------------------ sans-I/O request reader


@dataclasses.dataclass
class Request:
    """A complete request: what the server's http_handler is called with."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    http10: bool
    close: bool  # the connection closes after the answer


@dataclasses.dataclass
class Refusal:
    """A request refused before any handler sees it; the connection closes after `wire`."""

    status: int
    why: str  # a short fixed token for the log, never client input
    wire: bytes


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Signal("NEED_DATA")  # nothing to do until more bytes arrive
CONTINUE = _Signal("CONTINUE")  # the client waits for "100 Continue" before its body
CLOSE = _Signal("CLOSE")  # close without a word: clean end, or what cmux does

_TEXT_HEADERS = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"


def go_error(status: int, detail: str = "") -> bytes:
    """Go's net/http answer to a request it could not read (server.go's conn.serve):
    no Date, no Content-Length, the status text as the body, then the connection closes."""
    if status == 501:
        return (f"HTTP/1.1 501 Not Implemented{_TEXT_HEADERS}"
                "Unsupported transfer encoding").encode()
    text = f"{status} {reason(status)}" + (f": {detail}" if detail else "")
    return f"HTTP/1.1 {text}{_TEXT_HEADERS}{text}".encode()


_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# Go's httpguts.ValidHeaderFieldValue: no control characters but tab (h11 lets some through)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_GO_ATOI = re.compile(r"[+-]?[0-9]+")


def _offending(exc: h11.RemoteProtocolError, prefix: str) -> bytes | None:
    """The line h11 names in an error message `<prefix>: b'...'` (bounded by MAX_HEAD)."""
    text = str(exc)
    if not text.startswith(prefix + ": "):
        return None
    quoted = text[len(prefix) + 2:]
    if quoted.startswith("bytearray(") and quoted.endswith(")"):
        quoted = quoted[len("bytearray("):-1]
    try:
        line = ast.literal_eval(quoted)
    except (ValueError, SyntaxError):
        return None
    return line if isinstance(line, bytes) else None


def _head_refusal(exc: h11.RemoteProtocolError) -> Refusal:
    """h11's objection to a request head, as the answer Go gives the same head."""
    text = str(exc)
    if exc.error_status_hint == 431:
        return Refusal(431, "head_too_large", go_error(431))
    if exc.error_status_hint == 501:
        return Refusal(501, "transfer_encoding", go_error(501))
    if text.startswith("illegal header line"):
        line = _offending(exc, "illegal header line")
        if line is None or b":" not in line:
            return Refusal(400, "header_line", go_error(400))  # Go: malformed MIME header line
        name = line.split(b":", 1)[0]
        if not _TOKEN.fullmatch(name):
            return Refusal(400, "header_name", go_error(400, "invalid header name"))
        return Refusal(400, "header_value", go_error(400, "invalid header value"))
    if text.startswith("Missing mandatory Host"):
        return Refusal(400, "no_host", go_error(400, "missing required Host header"))
    if text.startswith("Found multiple Host"):
        return Refusal(400, "two_hosts", go_error(400, "too many Host headers"))
    if "Content-Length" in text:
        return Refusal(400, "content_length", go_error(400))
    return Refusal(400, "request_line" if "request line" in text else "head", go_error(400))


def _body_error(exc: h11.RemoteProtocolError, chunked: bool) -> str:
    """h11's objection to a request body, as the error text Go's body reader gives."""
    text = str(exc)
    if text.startswith("illegal chunk header"):
        line = _offending(exc, "illegal chunk header") or b""
        size = line.split(b";", 1)[0].rstrip(b" \t\r\n")
        if re.fullmatch(rb"[0-9a-fA-F]+", size) and len(size) > _GO_CHUNK_DIGITS:
            return "http chunk length too large"
        return "invalid byte in chunk length"
    if text.startswith("malformed chunk footer"):
        return "malformed chunked encoding"
    if exc.error_status_hint == 431:
        return "header line too long"
    if text.startswith("illegal header line") or text.startswith("continuation line"):
        return "malformed MIME header"  # a bad trailer field (Go also quotes the line)
    if "closed" in text:
        return "unexpected EOF"
    return "malformed chunked encoding" if chunked else "unexpected EOF"


def _mux_accepts(line: bytes) -> bool:
    """Whether cmux's HTTP1() matcher, in front of etcd's plaintext client port, takes a
    connection whose first line is `line`: "A B C" with C an HTTP/1.x version by Go's
    http.ParseHTTPVersion; other connections are closed without an answer."""
    text = line.rstrip(b"\r").decode("latin-1")
    parts = text.split(" ", 2)
    if len(parts) < 3:
        return False
    proto = parts[2]
    if proto in ("HTTP/1.0", "HTTP/1.1"):
        return True
    if not proto.startswith("HTTP/") or "." not in proto:
        return False
    major, minor = proto[5:].split(".", 1)
    return (bool(_GO_ATOI.fullmatch(major)) and bool(_GO_ATOI.fullmatch(minor))
            and int(major) == 1 and 0 <= int(minor) <= 1_000_000)


class RequestReader:
    """Bytes in, requests out: h11 for one request at a time, plus what etcd's Go server
    adds (cmux's first-line check, Go's header-value rule, Go's error answers)."""

    def __init__(self, mux_first_line: bool = False) -> None:
        self._conn = self._new_conn()
        self._mux_line: bytearray | None = bytearray() if mux_first_line else None
        self._req: h11.Request | None = None
        self._body = bytearray()
        self._body_reader = None
        self.done = False  # after a Refusal or CLOSE nothing more is read

    @staticmethod
    def _new_conn() -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    @property
    def has_head(self) -> bool:
        """Whether a request's head is in and its body is being read."""
        return self._req is not None

    @property
    def in_request(self) -> bool:
        """Whether part of a request has arrived (the head timeout applies, not the idle one)."""
        return self._req is not None or self._parser_bytes() > 0 or bool(self._mux_line)

    def _parser_bytes(self) -> int:
        buf = getattr(self._conn, "_receive_buffer", None)  # h11 gives only a copy publicly
        return len(buf) if buf is not None else len(self._conn.trailing_data[0])

    def buffered(self) -> int:
        """Bytes held here, for bounds checks: parser buffer, body so far, first line."""
        return self._parser_bytes() + len(self._body) + len(self._mux_line or b"")

    def feed(self, data: bytes) -> None:
        """Bytes from the client (b"" for end of input)."""
        if self.done:
            return
        if self._mux_line is not None and data:
            self._mux_line += data
            return
        self._conn.receive_data(data)

    def next(self) -> Request | Refusal | _Signal:
        """The next thing to do: a request to answer, a refusal to send, or a signal."""
        if self.done:
            return CLOSE
        if self._mux_line is not None:
            got = self._check_mux()
            if got is not None:
                return got
        while True:
            # h11 drops its body reader on an error; keep it to word an early end as Go does
            self._body_reader = getattr(self._conn, "_reader", None)
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                return self._failed(exc)
            if event is h11.NEED_DATA:
                return self._need_data()
            if event is h11.PAUSED:  # cannot happen: a cycle ends when its request does
                return NEED_DATA
            if isinstance(event, h11.ConnectionClosed):
                self.done = True
                return CLOSE
            if isinstance(event, h11.Request):
                refusal = self._check_head(event)
                if refusal is not None:
                    return self._refuse(refusal)
                self._req = event
                if self._conn.they_are_waiting_for_100_continue:
                    # Go answers Expect when the handler first reads the body, which the
                    # gateway always does: at once, even if the body came with the head
                    return CONTINUE
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY:
                    return self._too_large()
            elif isinstance(event, h11.EndOfMessage):
                return self._complete(bytes(self._body))

    def _check_mux(self) -> Refusal | _Signal | None:
        buf = self._mux_line
        eol = buf.find(b"\n", 0, MUX_LINE_MAX)
        if eol < 0:
            if len(buf) >= MUX_LINE_MAX:
                self.done = True
                return CLOSE
            if not buf:
                return None  # end of input with nothing: h11 reports it
            return NEED_DATA
        if not _mux_accepts(bytes(buf[:eol])):
            self.done = True
            return CLOSE
        self._mux_line = None
        self._conn.receive_data(bytes(buf))
        return None

    def _need_data(self) -> _Signal | Refusal:
        req = self._req
        if req is None:
            return NEED_DATA
        # a chunk whose declared size alone exceeds our limit is refused now, not after
        # MAX_BODY bytes (h11 keeps the size privately; without it, the MAX_BODY check)
        pending = getattr(getattr(self._conn, "_reader", None), "_bytes_in_chunk", 0)
        if isinstance(pending, int) and len(self._body) + pending > MAX_BODY:
            if pending >= 16 ** _GO_CHUNK_DIGITS:
                return self._complete(MalformedBody("http chunk length too large"))
            return self._too_large()
        return NEED_DATA

    def _failed(self, exc: h11.RemoteProtocolError) -> Request | Refusal | _Signal:
        if self._req is None:
            if str(exc).startswith("peer unexpectedly closed") and not self.in_request:
                self.done = True
                return CLOSE
            return self._refuse(_head_refusal(exc))
        chunked = any(k == b"transfer-encoding" for k, _ in self._req.headers)
        error = _body_error(exc, chunked)
        reader = self._body_reader
        if error == "unexpected EOF" and chunked and (
                getattr(reader, "_bytes_in_chunk", 0) or getattr(reader, "_reading_trailer", 0)):
            # Go's wording when the end comes inside a chunk's data or in the trailer
            error = "http: unexpected EOF reading trailer"
        return self._complete(MalformedBody(error))

    def _check_head(self, req: h11.Request) -> Refusal | None:
        if req.http_version[:1] != b"1":  # HTTP/0.9, HTTP/2.0 as text: Go's 505
            return Refusal(505, "version", go_error(505, "unsupported protocol version"))
        # h11 checks the size of an incomplete head only; one that arrived whole is sized here
        size = len(req.method) + len(req.target) + 12 + sum(
            len(name) + len(value) + 4 for name, value in req.headers)
        if size > MAX_HEAD:
            return Refusal(431, "head_too_large", go_error(431))
        for name, value in req.headers:
            if _BAD_VALUE.search(value):
                return Refusal(400, "header_value", go_error(400, "invalid header value"))
            if name == b"content-length" and int(value) > MAX_BODY:
                return Refusal(413, "body_too_large", b"")  # refused before it is sent
        return None

    def _refuse(self, refusal: Refusal) -> Refusal:
        self.done = True
        return refusal

    def _too_large(self) -> Refusal:
        return self._refuse(Refusal(413, "body_too_large", b""))

    def _complete(self, body: bytes) -> Request:
        """The request is whole (or its body unreadable): hand it out and start the next
        cycle on whatever the client sent after it."""
        req = self._req
        headers: dict[str, str] = {}
        for name, value in req.headers:
            headers[name.decode("latin-1")] = value.decode("latin-1")
        http10 = req.http_version == b"1.0"
        malformed = isinstance(body, MalformedBody)
        close = (malformed or http10
                 or "close" in headers.get("connection", "").lower().replace(" ", "").split(","))
        out = Request(req.method.decode("latin-1"), req.target.decode("latin-1"), headers,
                      body, http10, close)
        if close:
            self.done = True
        else:
            rest, eof = self._conn.trailing_data
            self._conn = self._new_conn()
            if rest:
                self._conn.receive_data(rest)
            if eof:
                self._conn.receive_data(b"")
        self._req = None
        self._body = bytearray()
        return out


# ------------------------------------------------------------------ responses


def response_fields(headers, content_type: str | None) -> list[tuple[str, str]]:
    """A response's header fields as Go's net/http writes them: sorted by name, then
    Date (HTTP/1.1 and plain HTTP/2 answers alike)."""
    fields = sorted([*headers, *([("Content-Type", content_type)] if content_type else [])])
    fields.append(("Date", formatdate(usegmt=True)))
    return fields


def _header_lines(headers, content_type: str | None) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in response_fields(headers, content_type))


class Http1Handler:
    """HTTP/1.1 requests on one connection, answered through the server's handler one at
    a time (pipelined requests wait their turn, as in Go's server)."""

    head_timeout = HEAD_TIMEOUT
    idle_timeout = IDLE_TIMEOUT

    def __init__(self, server, transport: asyncio.Transport, mux_first_line: bool | None = None
                 ) -> None:
        self.server = server
        self.transport = transport
        self._tls = transport.get_extra_info("ssl_object") is not None
        if mux_first_line is None:  # cmux sits in front of etcd's plaintext client port only
            mux_first_line = not self._tls
        self._reader = RequestReader(mux_first_line)
        self._peer = client_key(transport.get_extra_info("peername"))
        self._loop = asyncio.get_running_loop()
        self._busy = False
        self._closed = False
        self._eof = False
        self._paused = False
        self._held = 0
        self._http10 = False
        self._timer: asyncio.TimerHandle | None = None
        self._stream_task: asyncio.Task | None = None
        self._handler_task: asyncio.Future | None = None
        self._arm(self.head_timeout)

    # ------------------------------------------------------------ input

    def connection_lost(self) -> None:
        self._closed = True
        self._disarm()
        for task in (self._stream_task, self._handler_task):
            if task is not None and not task.done():
                task.cancel()  # ends the gRPC call behind it

    def data_received(self, data: bytes) -> None:
        if self._closed or not data:
            return
        self._reader.feed(data)
        if self._busy:
            self._held += len(data)
            if self._held > MAX_PIPELINED and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        if self._timer_kind == "body":
            self._timer_kind = "moved"  # the body moved: its timer starts again below
        self._next()

    def eof_received(self) -> bool:
        """The client sent FIN: finish (or refuse) what it sent, answer, then close.
        Returns True to keep the transport open for the answer."""
        if self._closed:
            return False
        self._eof = True
        self._reader.feed(b"")
        if self._busy:
            if self._stream_task is not None:
                self._close()  # a stream the client stopped reading for: end it
            return True
        self._next()
        return not self._closed

    def _next(self) -> None:
        try:
            self._process()
        except Exception:  # a bug here must cost one connection, never the server
            _limited.warning(self._peer, "http1_internal_error")
            log.debug("event=http1_internal_error", exc_info=True)
            self._close()

    def _process(self) -> None:
        while not self._busy and not self._closed:
            got = self._reader.next()
            if got is NEED_DATA:
                if self._eof:  # h11 has seen the end: it will not produce more
                    self._close()
                    return
                self._wait()
                return
            if got is CONTINUE:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                continue
            if got is CLOSE:
                self._close()
                return
            if isinstance(got, Refusal):
                _limited.info(self._peer, "http1_bad_request", "status=%d reason=%s",
                              got.status, got.why)
                if got.status == 413:
                    self._reply(413, b"request body too large\n", close=True)
                else:
                    self.transport.write(got.wire)
                    self._close()
                return
            self._dispatch(got)

    def _dispatch(self, req: Request) -> None:
        self._disarm()
        if isinstance(req.body, MalformedBody):
            _limited.info(self._peer, "http1_bad_body", "error=%s", req.body.error)
        self._http10 = req.http10
        handler = self.server.http_handler
        if handler is None:
            self._reply(404, b"404 page not found\n", close=req.close)
            return
        self._busy = True
        token = request_tls.set(self._tls)
        try:
            task = asyncio.ensure_future(handler(req.method, req.target, req.headers, req.body))
        finally:
            request_tls.reset(token)
        self._handler_task = task
        task.add_done_callback(lambda t: self._done(t, req.close))

    # ------------------------------------------------------------ timers

    _timer_kind = ""

    def _wait(self) -> None:
        """Waiting for the client: idle between requests, or in a request's head (the
        clock runs from its first byte and trickling does not reset it), or in its body
        (the clock restarts whenever the body moves)."""
        if self._reader.has_head:
            if self._timer_kind != "body":
                self._arm(self.head_timeout, "body")
        elif self._reader.in_request:
            if self._timer_kind != "head":
                self._arm(self.head_timeout, "head")
        elif self._timer_kind != "idle":
            self._arm(self.idle_timeout, "idle")

    def _arm(self, seconds: float, kind: str = "head") -> None:
        self._disarm()
        self._timer_kind = kind
        self._timer = self._loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_kind = ""

    def _timed_out(self) -> None:
        self._timer = None
        if self._closed or self._busy:
            return
        _limited.info(self._peer, "http1_timeout", "state=%s",
                      "idle" if self._timer_kind == "idle" else "reading")
        self._close()  # Go's read deadlines also end the connection without a word

    # ------------------------------------------------------------ output

    def _done(self, task: asyncio.Future, close: bool) -> None:
        self._busy = False
        self._handler_task = None
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        if exc is not None:
            _limited.error(self._peer, "http_handler_failed", "error=%s", short_error(exc),
                       exc_info=(type(exc), exc, exc.__traceback__))
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
        self._resume()

    def _resume(self) -> None:
        """One request answered: read on (the next pipelined request, or wait idle)."""
        if self._closed:
            return
        self._held = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._next()

    def _status_line(self, status: int) -> str:
        # Go answers an HTTP/1.0 request in HTTP/1.0
        return f"HTTP/1.{0 if self._http10 else 1} {status} {reason(status)}\r\n"

    async def _stream(self, status: int, content_type: str, chunks, headers) -> None:
        """A chunked response, each chunk written as it comes, until the iterator ends
        or the client goes away. HTTP/1.0 has no chunking: the body runs to the close."""
        self.transport.write((
            self._status_line(status) + _header_lines(headers, content_type)
            + ("\r\n" if self._http10 else "Transfer-Encoding: chunked\r\n\r\n")).encode())
        try:
            async for chunk in chunks:
                if self._closed:
                    break
                if chunk:
                    self.transport.write(
                        chunk if self._http10 else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                # a slow client holds the stream back instead of growing our buffer
                while (not self._closed
                       and self.transport.get_write_buffer_size() > STREAM_HIGH_WATER):
                    await asyncio.sleep(0.01)
            if not self._closed and not self._http10:
                self.transport.write(b"0\r\n\r\n")
        finally:
            await chunks.aclose()

    def _streamed(self, task: asyncio.Future, close: bool) -> None:
        self._busy = False
        self._stream_task = None
        if task.cancelled():
            return
        if task.exception() is not None:
            exc = task.exception()
            _limited.error(self._peer, "http_stream_failed", "error=%s", short_error(exc),
                       exc_info=(type(exc), exc, exc.__traceback__))
            close = True
        if close or self._http10:
            self._close()
            return
        self._resume()

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
               close: bool = False, headers=()) -> None:
        if self._closed:
            return
        head = (
            self._status_line(status)
            + _header_lines(headers, content_type)
            + f"Content-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close and not self._http10 else "")
            + "\r\n"
        )
        self.transport.write(head.encode() + body)
        if close:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._disarm()
            self.transport.close()


class Http1Protocol(asyncio.Protocol):
    """A listener that speaks only HTTP/1.1 (etcd's --listen-metrics-urls: a plain Go
    http.Server, no cmux in front)."""

    def __init__(self, http_handler) -> None:
        self._server = _HandlerOnly(http_handler)
        self._h: Http1Handler | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._h = Http1Handler(self._server, transport, mux_first_line=False)

    def data_received(self, data: bytes) -> None:
        self._h.data_received(data)

    def eof_received(self) -> bool:
        return self._h.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._h.connection_lost()


class _HandlerOnly:
    def __init__(self, http_handler) -> None:
        self.http_handler = http_handler
