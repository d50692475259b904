"""The server side of one HTTP/2 connection as a sans-I/O state machine (RFC 9113).

The caller drives all I/O, as with h11: `receive_data(bytes)` hands it what the socket
read, `next_events()` parses a bounded number of frames and returns what the
application must act on (a request's headers, its data, a reset...), the `send_*`
methods queue the application's answers, and `data_to_send()` gives back the bytes to
write. Every frame is validated against RFC 9113 §6 and every stream transition
against §5.1 in this module; a violation is answered here with the stream error
(RST_STREAM) or connection error (GOAWAY) the RFC names, and reported to the caller
as an event, never as an exception. Every resource a client can grow is bounded by a
constant from `limits.py`.

Stream states (§5.1; a server that never pushes has no "reserved" states) are the two
flags `remote_open` (the client may still send) and `local_open` (we may still send):

    idle ──HEADERS──► open ──client END_STREAM──► half-closed (remote) ──our END_STREAM──► closed
                        └──our END_STREAM──► half-closed (local) ──client END_STREAM──► closed
    any ──RST_STREAM (either side)──► closed

A stream leaves `streams` when it is closed; ids at or below `last_stream_id` that are
not in it are closed, above it idle.
"""

from __future__ import annotations

import collections
import struct
import time

import hpack
from hpack.huffman_table import decode_huffman
from hpack.table import table_entry_size

from kubekv_server.rpc import frames as f
from kubekv_server.rpc import limits

_U32 = struct.Struct(">I")
_PING_FRAME_BYTES = 9 + 8  # frame header and the 8-byte payload
_SETTING = struct.Struct(">HI")
_WINDOW_MAX = f.MAX_WINDOW
_HEADERS_END_STREAM = f.END_HEADERS | f.END_STREAM
# frame types and limits the parse loop compares every frame with, as module globals
_DATA, _HEADERS, _CONTINUATION, _WINDOW_UPDATE = f.DATA, f.HEADERS, f.CONTINUATION, \
    f.WINDOW_UPDATE
_MAX_FRAME_SIZE = limits.MAX_FRAME_SIZE

# Connection-specific header fields a request must not carry (RFC 9113 §8.2.2).
_CONNECTION_FIELDS = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
# Bytes allowed in a field name (RFC 9110 token characters, lowercase only: §8.2.1).
_NAME_OK = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


# ------------------------------------------------------------------ events


class RequestReceived:
    """A new stream's request headers (validated; decoded field pairs, bytes), and two
    lookups by name made with them: `first` (each name's first value) and `last` (its
    last value)."""

    __slots__ = ("stream_id", "headers", "end_stream", "first", "last")

    def __init__(self, stream_id: int, headers: list, end_stream: bool,
                 lookups: tuple[dict, dict] | None = None) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.end_stream = end_stream
        self.first, self.last = header_lookups(headers) if lookups is None else lookups


def header_lookups(headers) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """({name: its first value}, {name: its last value}) of a header list."""
    return dict(reversed(headers)), dict(headers)


class DataReceived:
    """Request body bytes of a stream (padding removed); `end_stream` ends the request."""

    __slots__ = ("stream_id", "data", "end_stream")

    def __init__(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.end_stream = end_stream


class TrailersReceived:
    """The client ended its side of a stream with a trailing header block."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset:
    """A stream ended abnormally: reset by the client (`remote`) or by us for its error."""

    __slots__ = ("stream_id", "error_code", "remote")

    def __init__(self, stream_id: int, error_code: int, remote: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote


class StreamWritable:
    """Output that waited for flow-control window on this stream has all been sent."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class GoAwayReceived:
    """The client will open no more streams."""

    __slots__ = ("error_code",)

    def __init__(self, error_code: int) -> None:
        self.error_code = error_code


class ConnectionTerminated:
    """We ended the connection with GOAWAY (`error_code`); close it once the bytes are out.
    `reason` is a short fixed text for the log (never client input)."""

    __slots__ = ("error_code", "reason")

    def __init__(self, error_code: int, reason: str) -> None:
        self.error_code = error_code
        self.reason = reason


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _StreamError(Exception):
    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(stream_id, code)
        self.stream_id = stream_id
        self.code = code


# ------------------------------------------------------------------ streams


class Stream:
    """One stream's state: which sides are open, both flow-control windows, queued output."""

    __slots__ = ("stream_id", "remote_open", "local_open", "send_window", "recv_window",
                 "recv_unacked", "pending", "pending_bytes", "content_length", "received")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.remote_open = True
        self.local_open = True
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_unacked = 0
        # DATA (bytes) and a final trailers block (tuple) waiting for window: a deque once
        # something waited (most streams' answers never do, and make none)
        self.pending: collections.deque | tuple = ()
        self.pending_bytes = 0
        self.content_length = -1  # from the request's content-length, if any
        self.received = 0


# ------------------------------------------------------------------ the connection


class ServerConnection:
    """The protocol state of one server-side HTTP/2 connection; no I/O."""

    def __init__(self, max_concurrent_streams: int = limits.MAX_CONCURRENT_STREAMS_CAP,
                 clock=time.monotonic, connection_window: int = limits.CONNECTION_WINDOW
                 ) -> None:
        self.max_concurrent_streams = max(1, min(max_concurrent_streams,
                                                 limits.MAX_CONCURRENT_STREAMS_CAP))
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.closed = False  # we sent GOAWAY for an error: nothing more is read or sent
        # False while the application wants no new streams (its output is backed up):
        # they are refused with REFUSED_STREAM, which a client may retry (RFC 9113 §8.7)
        self.accepting = True
        self.queued_bytes = 0  # DATA waiting for flow-control window, all streams
        self.goaway_received = False
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.send_window = f.DEFAULT_WINDOW
        self.recv_window = f.DEFAULT_WINDOW
        self.recv_unacked = 0  # consumed bytes not yet given back with WINDOW_UPDATE
        # The connection receive window we keep open; given back only for bytes the
        # application has consumed, so it bounds what a connection's calls hold unread.
        self.connection_window = min(max(connection_window, f.DEFAULT_WINDOW), _WINDOW_MAX)
        # control frames owed to a client whose socket buffer is not draining
        self.control_frames_queued = 0
        self._clock = clock
        self._resets = 0
        self._reset_window_start = 0.0
        self._recently_reset: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._buf = b""
        self._preface_seen = False
        self._settings_seen = False
        self._header_block: bytearray | None = None
        self._header_sid = 0
        self._header_flags = 0
        self._continuations = 0
        self._blocked: collections.OrderedDict[int, Stream] = collections.OrderedDict()
        self._decoder = hpack.Decoder(max_header_list_size=limits.MAX_HEADER_LIST_SIZE)
        # all-indexed header blocks seen since the dynamic table last changed, with their
        # decoded, validated request: (headers, content-length or -1, header_lookups), or
        # None if malformed
        self._indexed_blocks: dict[bytes, tuple[list, int, tuple] | None] = {}
        # request header lists already validated, each with its grpc-timeout value blanked
        # (grpc-go sends a new one per call): (well-formed, content-length or -1)
        self._checked_lists: dict[tuple, tuple[bool, int]] = {}
        self._decoder.max_allowed_table_size = f.DEFAULT_HEADER_TABLE_SIZE
        self._out: list[bytes] = []

    # ---------------------------------------------------------- starting

    def initiate(self) -> None:
        """Queue our connection preface: SETTINGS and the connection window."""
        self._out.append(f.settings({
            f.SETTINGS_MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
            f.SETTINGS_INITIAL_WINDOW_SIZE: limits.INITIAL_STREAM_WINDOW,
            f.SETTINGS_MAX_FRAME_SIZE: limits.MAX_FRAME_SIZE,
            f.SETTINGS_MAX_HEADER_LIST_SIZE: limits.MAX_HEADER_LIST_SIZE,
        }))
        if self.connection_window > f.DEFAULT_WINDOW:
            self._out.append(f.window_update(0, self.connection_window - f.DEFAULT_WINDOW))
        self.recv_window = self.connection_window

    @property
    def established(self) -> bool:
        """Whether the client sent its preface and first SETTINGS."""
        return self._settings_seen

    # ---------------------------------------------------------- input

    def receive_data(self, data: bytes) -> None:
        """Take bytes read from the socket; `next_events` parses them."""
        if self.closed:
            return
        self._buf = self._buf + data if self._buf else data

    def has_complete_frame(self) -> bool:
        """Whether the buffer holds a frame (or the preface) not parsed yet."""
        buf = self._buf
        if self.closed or len(buf) < 9:
            return False
        if not self._preface_seen:
            return len(buf) >= len(f.PREFACE)
        length = (buf[0] << 16) | (buf[1] << 8) | buf[2]
        return len(buf) >= 9 + length or length > limits.MAX_FRAME_SIZE

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_events(self, max_frames: int = limits.MAX_FRAMES_PER_PASS) -> list:
        """Parse up to `max_frames` frames (and at most MAX_HEADER_BYTES_PER_PASS of header
        blocks); the events they produce, in order."""
        events: list = []
        if self.closed:
            return events
        try:
            self._parse(events, max_frames)
        except _ConnectionError as exc:
            self._terminate(exc.code, exc.reason, events)
        return events

    def _parse(self, events: list, max_frames: int) -> None:
        buf = self._buf
        pos = 0
        n = len(buf)
        if not self._preface_seen:
            if n < len(f.PREFACE):
                return
            if buf[:len(f.PREFACE)] != f.PREFACE:
                raise _ConnectionError(f.PROTOCOL_ERROR, "invalid connection preface")
            self._preface_seen = True
            pos = len(f.PREFACE)
        header_budget = limits.MAX_HEADER_BYTES_PER_PASS
        frames = 0
        try:
            while n - pos >= 9 and frames < max_frames and header_budget > 0:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > _MAX_FRAME_SIZE:
                    raise _ConnectionError(f.FRAME_SIZE_ERROR, "frame larger than max frame size")
                end = pos + 9 + length
                if end > n:
                    break
                ftype = buf[pos + 3]
                flags = buf[pos + 4]
                sid = _U32.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
                payload = buf[pos + 9:end]
                pos = end
                frames += 1
                if not self._settings_seen:
                    if ftype != f.SETTINGS or flags & f.ACK:
                        raise _ConnectionError(f.PROTOCOL_ERROR, "first frame is not SETTINGS")
                    self._settings_seen = True
                if self._header_block is not None and ftype != _CONTINUATION:
                    raise _ConnectionError(f.PROTOCOL_ERROR, "expected CONTINUATION")
                try:
                    if ftype == _DATA:
                        self._on_data(sid, flags, payload, length, events)
                    elif ftype == _HEADERS:
                        header_budget -= length
                        self._on_headers(sid, flags, payload, events)
                    elif ftype == _WINDOW_UPDATE:
                        self._on_window_update(sid, payload, events)
                    elif ftype == _CONTINUATION:
                        header_budget -= length
                        self._on_continuation(sid, flags, payload, events)
                    elif ftype == f.RST_STREAM:
                        self._on_rst_stream(sid, payload, events)
                    elif ftype == f.SETTINGS:
                        self._on_settings(sid, flags, payload, events)
                    elif ftype == f.PING:
                        self._on_ping(sid, flags, payload)
                    elif ftype == f.PRIORITY:
                        self._on_priority(sid, payload)
                    elif ftype == f.GOAWAY:
                        self._on_goaway(sid, payload, events)
                    elif ftype == f.PUSH_PROMISE:
                        raise _ConnectionError(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                    # unknown frame types are ignored (RFC 9113 §4.1)
                except _StreamError as exc:
                    self._reset(exc.stream_id, exc.code, events)
        finally:
            self._buf = buf[pos:] if pos < n else b""
        if self.recv_unacked >= self.connection_window >> 2:
            self._refill()

    def acknowledge(self, consumed: int) -> None:
        """The application consumed `consumed` bytes of DATA it was given: they may be
        given back to the client's connection window."""
        self.recv_unacked += consumed
        if self.recv_unacked >= self.connection_window >> 2:
            self._refill()

    def _refill(self) -> None:
        """Give the consumed bytes back once they are a quarter of the window (which the
        callers test first: most frames leave them short of it)."""
        if not self.closed:
            self._out.append(f.window_update(0, self.recv_unacked))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0

    # ---------------------------------------------------------- frames

    def _idle(self, sid: int) -> bool:
        return sid > self.last_stream_id

    def _closed_stream_frame(self, sid: int) -> None:
        """A DATA or HEADERS frame on a closed stream: ignored if we reset it, else
        STREAM_CLOSED (RFC 9113 §5.1)."""
        if sid in self._recently_reset:
            return
        raise _StreamError(sid, f.STREAM_CLOSED)

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & f.PADDED:
            if not payload:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "padded frame without pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise _ConnectionError(f.PROTOCOL_ERROR, "padding longer than the payload")
            return payload[1:len(payload) - pad]
        return payload

    def _on_data(self, sid: int, flags: int, payload: bytes, length: int, events: list) -> None:
        if sid == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "DATA on stream 0")
        if sid > self.last_stream_id:
            raise _ConnectionError(f.PROTOCOL_ERROR, "DATA on an idle stream")
        data = self._unpad(flags, payload) if flags & f.PADDED else payload
        # the whole frame counts against both windows, padding included (§6.9.1)
        self.recv_window -= length
        if self.recv_window < 0:
            raise _ConnectionError(f.FLOW_CONTROL_ERROR, "connection window exceeded")
        # padding is consumed here; the data when the application says so (`acknowledge`),
        # or here if it is dropped
        self.recv_unacked += length - len(data)
        stream = self.streams.get(sid)
        if stream is None or not stream.remote_open:
            self.recv_unacked += len(data)
            self._closed_stream_frame(sid)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self.recv_unacked += len(data)
            raise _StreamError(sid, f.FLOW_CONTROL_ERROR)
        end = bool(flags & f.END_STREAM)
        if stream.content_length >= 0:
            stream.received += len(data)
            if stream.received > stream.content_length or (
                    end and stream.received != stream.content_length):
                self.recv_unacked += len(data)
                raise _StreamError(sid, f.PROTOCOL_ERROR)  # §8.1.1 malformed
        if end:
            self._remote_closed(stream)
        else:
            stream.recv_unacked += length
            if stream.recv_unacked >= limits.STREAM_WINDOW_REFILL:
                self._out.append(f.window_update(sid, stream.recv_unacked))
                stream.recv_window += stream.recv_unacked
                stream.recv_unacked = 0
        if data or end:
            events.append(DataReceived(sid, data, end))  # (data or end) is always true here

    def _on_headers(self, sid: int, flags: int, payload: bytes, events: list) -> None:
        if sid == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload) if flags & f.PADDED else payload
        if flags & f.PRIORITY_FLAG:
            if len(block) < 5:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "HEADERS priority too short")
            depends = _U32.unpack_from(block, 0)[0] & 0x7FFFFFFF
            block = block[5:]
            if depends == sid:
                # a stream error (§5.3.1), but the block must still be decoded
                flags |= 0x100
        if flags & f.END_HEADERS:
            self._header_block_complete(sid, flags, block, events)
            return
        if len(block) > limits.MAX_HEADER_BLOCK_BYTES:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")
        self._header_block = bytearray(block)
        self._header_sid = sid
        self._header_flags = flags
        self._continuations = 0

    def _on_continuation(self, sid: int, flags: int, payload: bytes, events: list) -> None:
        block = self._header_block
        if block is None or sid != self._header_sid:
            raise _ConnectionError(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._continuations += 1
        if self._continuations > limits.MAX_CONTINUATION_FRAMES:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        if len(block) + len(payload) > limits.MAX_HEADER_BLOCK_BYTES:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")
        block += payload
        if flags & f.END_HEADERS:
            self._header_block = None
            self._header_block_complete(sid, self._header_flags, bytes(block), events)

    def _decode_request(self, block: bytes) -> tuple[list, int, tuple] | None:
        """Decode and validate a new stream's header block: (headers, content-length or -1,
        their `header_lookups`), or None if the request is malformed. A client's repeated
        calls mostly send the same block of one-byte table references, which cannot change
        the dynamic table: its result is kept until the table changes."""
        known = self._indexed_blocks.get(block, False)
        if known is not False:
            return known
        indexed = 0 < len(block) <= limits.MAX_INDEXED_FAST_PATH and all(
            b & 0x80 and b != 0xFF and b != 0x80 for b in block)
        headers = self._decode(block, indexed)
        result = self._checked_request(headers)
        if indexed:
            if len(self._indexed_blocks) >= limits.MAX_REMEMBERED_HEADER_BLOCKS:
                self._indexed_blocks.clear()
            self._indexed_blocks[block] = result
        return result

    def _checked_request(self, headers: list) -> tuple[list, int, tuple] | None:
        """`_valid_request` of a decoded header list, remembered per list with its
        grpc-timeout value blanked: a grpc-go client's calls differ only there, and
        its table references shift with each new timeout, so neither the block nor
        the list repeats. A remembered list's timeout values are checked on their own."""
        key = tuple([h if h[0] != b"grpc-timeout" else _TIMEOUT_BLANK for h in headers])
        checked = self._checked_lists.get(key)
        if checked is None:
            stream = Stream(0, 0, 0)
            checked = (_valid_request(list(key), stream), stream.content_length)
            if sum(len(n) + len(v) for n, v in key) <= limits.MAX_REMEMBERED_LIST_BYTES:
                if len(self._checked_lists) >= limits.MAX_REMEMBERED_HEADER_LISTS:
                    self._checked_lists.clear()
                self._checked_lists[key] = checked
        if not checked[0]:
            return None
        lookups = header_lookups(headers)
        blanked = key.count(_TIMEOUT_BLANK)
        if blanked == 1:  # the usual single timeout: its value is the lookup's
            value = lookups[0][b"grpc-timeout"]
            if not value.isalnum() and not _field_value_ok(value):
                return None
        elif blanked:
            for name, value in headers:
                if name == b"grpc-timeout" and not _field_value_ok(value):
                    return None
        return headers, checked[1], lookups

    def _decode(self, block: bytes, indexed: bool = False) -> list[tuple[bytes, bytes]]:
        """HPACK-decode a header block, within MAX_HEADER_LIST_SIZE. A block of one-byte
        references to table entries (`indexed`) is looked up directly."""
        if indexed:
            get = self._decoder.header_table.get_by_index
            try:
                headers = [get(b & 0x7F) for b in block]
            except Exception:  # noqa: BLE001 - an invalid index: the decoder reports it
                headers = None
            if headers is not None:
                size = 0
                for k, v in headers:
                    size += table_entry_size(k, v)
                if size > limits.MAX_HEADER_LIST_SIZE:
                    raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header list too large")
                return headers
        self._indexed_blocks.clear()  # the dynamic table may change
        if len(block) <= limits.MAX_INDEXED_FAST_PATH and _references_and_short_literals(block):
            return self._decode_short_literals(block)
        try:
            return self._decoder.decode(block, raw=True)
        except hpack.OversizedHeaderListError:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header list too large") from None
        except Exception:  # noqa: BLE001 - any HPACK failure is the same connection error
            raise _ConnectionError(f.COMPRESSION_ERROR, "invalid header block") from None

    def _decode_short_literals(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Decode a block `_references_and_short_literals` accepted, as the HPACK decoder
        would (RFC 7541 §6.1, §6.2.1): each literal's value is added to the dynamic
        table under its referenced name. Any failure is the connection's
        COMPRESSION_ERROR, as from the decoder."""
        table = self._decoder.header_table
        get = table.get_by_index
        headers = []
        size = 0
        i = 0
        n = len(block)
        try:
            while i < n:
                b = block[i]
                if b & 0x80:
                    if b == 0xFF:
                        i += 1
                        header = get(0x7F + block[i])
                    else:
                        header = get(b & 0x7F)
                    i += 1
                else:
                    if b == 0x7F:
                        i += 1
                        name = get(0x3F + block[i])[0]
                    else:
                        name = get(b & 0x3F)[0]
                    first = block[i + 1]
                    end = i + 2 + (first & 0x7F)
                    value = block[i + 2:end]
                    if first & 0x80:
                        value = decode_huffman(value)
                    table.add(name, value)
                    header = (name, value)
                    i = end
                headers.append(header)
                size += table_entry_size(header[0], header[1])
        except Exception:  # noqa: BLE001 - a bad index or Huffman code, as the decoder says
            raise _ConnectionError(f.COMPRESSION_ERROR, "invalid header block") from None
        if size > limits.MAX_HEADER_LIST_SIZE:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header list too large")
        return headers

    def _header_block_complete(self, sid: int, flags: int, block: bytes, events: list) -> None:
        # decoded first, whatever happens to the stream: the HPACK context is shared
        end = bool(flags & f.END_STREAM)
        stream = self.streams.get(sid)
        if stream is not None or sid <= self.last_stream_id:
            headers = self._decode(block)
        else:
            request = self._decode_request(block)
        if stream is not None:
            if not stream.remote_open:
                raise _StreamError(sid, f.STREAM_CLOSED)
            # trailers: they end the stream and carry no pseudo-header (§8.1)
            if not end or flags & 0x100 or any(k[:1] == b":" for k, _ in headers):
                raise _StreamError(sid, f.PROTOCOL_ERROR)
            self._remote_closed(stream)
            events.append(TrailersReceived(sid))
            return
        if sid % 2 == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "even stream id from a client")
        if sid <= self.last_stream_id:
            if sid in self._recently_reset:
                return
            raise _ConnectionError(f.PROTOCOL_ERROR, "stream id not above the last one")
        self.last_stream_id = sid
        if self.goaway_received:
            return  # the client said it opens no more streams: ignore
        stream = Stream(sid, self.peer_initial_window, limits.INITIAL_STREAM_WINDOW)
        if len(self.streams) >= self.max_concurrent_streams or not self.accepting:
            # beyond what our SETTINGS allowed: refused, the client may retry (§5.1.2)
            self._reset_new(sid, f.REFUSED_STREAM)
            return
        if flags & 0x100 or request is None:
            self._reset_new(sid, f.PROTOCOL_ERROR)  # malformed (§8.1.1)
            return
        headers, stream.content_length, lookups = request
        self.streams[sid] = stream
        if end:
            stream.remote_open = False
            if stream.content_length > 0:
                self.streams.pop(sid)
                self._reset_new(sid, f.PROTOCOL_ERROR)
                return
        events.append(RequestReceived(sid, headers, end, lookups))

    def _on_window_update(self, sid: int, payload: bytes, events: list) -> None:
        if len(payload) != 4:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE length is not 4")
        increment = _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise _ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > _WINDOW_MAX:
                raise _ConnectionError(f.FLOW_CONTROL_ERROR, "connection window overflow")
            if self._blocked:
                self._unblock(events)
            return
        if sid > self.last_stream_id:
            raise _ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        stream = self.streams.get(sid)
        if stream is None:
            return  # closed: allowed, ignored (§6.9)
        if increment == 0:
            raise _StreamError(sid, f.PROTOCOL_ERROR)
        stream.send_window += increment
        if stream.send_window > _WINDOW_MAX:
            raise _StreamError(sid, f.FLOW_CONTROL_ERROR)
        if stream.pending:
            self._unblock(events)

    def _on_rst_stream(self, sid: int, payload: bytes, events: list) -> None:
        if sid == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "RST_STREAM length is not 4")
        if self._idle(sid):
            raise _ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        self._unqueue(stream)
        if stream.local_open:
            self._count_reset()
        events.append(StreamReset(sid, _U32.unpack_from(payload, 0)[0], True))

    def _on_settings(self, sid: int, flags: int, payload: bytes, events: list) -> None:
        if sid != 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        unblock = False
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > _WINDOW_MAX:
                    raise _ConnectionError(f.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > _WINDOW_MAX:
                        raise _ConnectionError(f.FLOW_CONTROL_ERROR, "stream window overflow")
                unblock = unblock or delta > 0
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                if not limits.MIN_PEER_MAX_FRAME_SIZE <= value <= limits.MAX_PEER_MAX_FRAME_SIZE:
                    raise _ConnectionError(f.PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == f.SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise _ConnectionError(f.PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
            # HEADER_TABLE_SIZE: our responses never use the dynamic table, nothing to do;
            # MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE and unknown settings: ignored
        self._control(f.SETTINGS_ACK_FRAME)
        if unblock:
            self._unblock(events)

    def _on_ping(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "PING length is not 8")
        if not flags & f.ACK:
            self._control(f.frame(f.PING, f.ACK, 0, payload))

    def _on_priority(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise _StreamError(sid, f.FRAME_SIZE_ERROR)
        if _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF == sid:
            raise _StreamError(sid, f.PROTOCOL_ERROR)
        # priorities are advisory; we keep none (RFC 9113 §5.3.2 deprecates the scheme)

    def _on_goaway(self, sid: int, payload: bytes, events: list) -> None:
        if sid != 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        if not self.goaway_received:
            self.goaway_received = True
            events.append(GoAwayReceived(_U32.unpack_from(payload, 4)[0]))

    # ---------------------------------------------------------- errors

    def _control(self, frame: bytes) -> None:
        """Queue a control frame owed to the client; too many unread: ENHANCE_YOUR_CALM."""
        self._out.append(frame)
        self.control_frames_queued += 1
        if self.control_frames_queued > limits.MAX_QUEUED_CONTROL_FRAMES:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "too many control frames not read")

    def _count_reset(self) -> None:
        """Count a stream ended early by the client (or for its error); too many in a
        window is a rapid-reset attack."""
        now = self._clock()
        if now - self._reset_window_start > limits.RAPID_RESET_WINDOW:
            self._reset_window_start = now
            self._resets = 0
        self._resets += 1
        if self._resets > limits.MAX_RESETS_PER_WINDOW:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "too many streams reset")

    def _remember_reset(self, sid: int) -> None:
        recent = self._recently_reset
        recent[sid] = None
        if len(recent) > limits.MAX_RECENTLY_RESET_STREAMS:
            recent.popitem(last=False)

    def _reset_new(self, sid: int, code: int) -> None:
        """Refuse a stream that never opened."""
        self._count_reset()
        self._control(f.rst_stream(sid, code))
        self._remember_reset(sid)

    def _reset(self, sid: int, code: int, events: list) -> None:
        """A stream error: RST_STREAM, the stream closed, the application told."""
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._unqueue(stream)
        self._count_reset()
        self._control(f.rst_stream(sid, code))
        self._remember_reset(sid)
        if stream is not None:
            events.append(StreamReset(sid, code, False))

    def _unqueue(self, stream: Stream) -> None:
        """Drop a closed stream's output still waiting for window."""
        if self._blocked.pop(stream.stream_id, None) is not None:
            self.queued_bytes -= stream.pending_bytes
            stream.pending.clear()
            stream.pending_bytes = 0

    def terminate(self, code: int, reason: str = "") -> list:
        """End the connection with GOAWAY(code): no more input is parsed, nothing more
        is sent after it. Returns the ConnectionTerminated event."""
        events: list = []
        if not self.closed:
            self._terminate(code, reason, events)
        return events

    def _terminate(self, code: int, reason: str, events: list) -> None:
        self._out.append(f.goaway(self.last_stream_id, code))
        self.closed = True
        self._buf = b""
        self.streams.clear()
        self._blocked.clear()
        self.queued_bytes = 0
        events.append(ConnectionTerminated(code, reason))

    # ---------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        """The bytes queued for the socket since the last call."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def only_a_ping_ack_queued(self) -> bool:
        """Whether the output queued is a lone PING ACK (what grpc-go's BDP ping, sent
        with its next request after each answer, leaves to write)."""
        out = self._out
        if len(out) != 1:
            return False
        frame = out[0]
        return len(frame) == _PING_FRAME_BYTES and frame[3] == f.PING and bool(frame[4] & f.ACK)

    def socket_drained(self) -> None:
        """The socket took everything written so far: the client is reading."""
        self.control_frames_queued = 0

    def _remote_closed(self, stream: Stream) -> None:
        stream.remote_open = False
        if not stream.local_open:
            self.streams.pop(stream.stream_id, None)

    def _local_closed(self, stream: Stream) -> None:
        """We sent END_STREAM. A client still sending gets RST_STREAM(NO_ERROR), as grpc-go
        does when a call ends before its requests (RFC 9113 §8.1)."""
        stream.local_open = False
        if stream.remote_open:
            self.streams.pop(stream.stream_id, None)
            self._out.append(f.rst_stream(stream.stream_id, f.NO_ERROR))
            self._remember_reset(stream.stream_id)
        else:
            self.streams.pop(stream.stream_id, None)

    def send_headers(self, sid: int, block: bytes, end_stream: bool) -> None:
        """A response header block (or trailers-only answer when `end_stream`)."""
        stream = self.streams.get(sid)
        if stream is None or not stream.local_open or self.closed:
            return
        if len(block) <= self.peer_max_frame:
            self._out.append(f.frame(f.HEADERS, _HEADERS_END_STREAM if end_stream
                                     else f.END_HEADERS, sid, block))
        else:
            self._out.append(f.header_frames(sid, block, end_stream, self.peer_max_frame))
        if end_stream:
            self._local_closed(stream)

    def send_response(self, sid: int, block: bytes, data: bytes, trailers: bytes) -> None:
        """A whole answer: headers, one DATA, trailers. When the windows have room (the
        usual case) it goes out as three frames at once."""
        stream = self.streams.get(sid)
        n = len(data)
        if stream is None or stream.pending or self._blocked or n > self.send_window \
                or n > stream.send_window or n > self.peer_max_frame \
                or len(block) > self.peer_max_frame or len(trailers) > self.peer_max_frame \
                or not stream.local_open or self.closed:
            self.send_headers(sid, block, end_stream=False)
            self.send_data(sid, data)
            self.send_trailers(sid, trailers)
            return
        self.send_window -= n
        stream.send_window -= n
        self._out.append(f.response_frames(sid, block, data, trailers))
        self._local_closed(stream)

    def send_data(self, sid: int, data: bytes) -> None:
        """DATA on a stream within both flow-control windows; the rest waits for window."""
        stream = self.streams.get(sid)
        if stream is None or not stream.local_open or self.closed:
            return
        n = len(data)
        if not stream.pending and not self._blocked and n <= self.send_window \
                and n <= stream.send_window:
            self.send_window -= n
            stream.send_window -= n
            size = self.peer_max_frame
            if n <= size:
                self._out.append(f.frame(f.DATA, 0, sid, data))
            else:
                self._out.append(b"".join([f.frame(f.DATA, 0, sid, data[i:i + size])
                                           for i in range(0, n, size)]))
            return
        if not stream.pending:
            stream.pending = collections.deque()
        stream.pending.append(data)
        stream.pending_bytes += n
        self.queued_bytes += n
        self._blocked[sid] = stream
        if len(stream.pending) == 1 and self._drain(stream):  # what fits goes now
            self._blocked.pop(sid, None)

    def send_trailers(self, sid: int, block: bytes) -> None:
        """End a stream with a trailers block, after any DATA still waiting for window."""
        stream = self.streams.get(sid)
        if stream is None or not stream.local_open or self.closed:
            return
        if stream.pending:
            stream.pending.append((block,))
            self._blocked[sid] = stream
            return
        self.send_headers(sid, block, end_stream=True)

    def reset_stream(self, sid: int, code: int) -> None:
        """End a stream from our side (the application gave up on it)."""
        stream = self.streams.pop(sid, None)
        if stream is None or self.closed:
            return
        self._unqueue(stream)
        self._out.append(f.rst_stream(sid, code))
        self._remember_reset(sid)

    def close(self, code: int = f.NO_ERROR) -> None:
        """Graceful GOAWAY: no new streams; open ones may finish."""
        if not self.closed:
            self._out.append(f.goaway(self.last_stream_id, code))

    def pending_bytes(self, sid: int) -> int:
        stream = self.streams.get(sid)
        return stream.pending_bytes if stream is not None else 0

    def unacknowledged_bytes(self, sid: int) -> int:
        """Response bytes sent on a stream the client has not given window back for, plus
        those still waiting for window: how far the client is behind what it was sent."""
        stream = self.streams.get(sid)
        if stream is None:
            return 0
        return max(0, self.peer_initial_window - stream.send_window) + stream.pending_bytes

    def _unblock(self, events: list | None) -> None:
        """Send queued DATA as far as the windows allow, streams in the order they blocked."""
        progress = True
        while self._blocked and progress:
            progress = False
            for sid, stream in list(self._blocked.items()):
                before = stream.pending_bytes + len(stream.pending)
                if self._drain(stream):
                    self._blocked.pop(sid, None)
                    if events is not None and stream.local_open:
                        events.append(StreamWritable(sid))
                if stream.pending_bytes + len(stream.pending) != before:
                    progress = True
                if self.send_window <= 0:
                    return

    def _drain(self, stream: Stream) -> bool:
        """Send a stream's queued output as far as the windows allow (and its trailers
        once the DATA before them is out). Whether nothing is left."""
        pending = stream.pending
        sid = stream.stream_id
        while pending:
            item = pending[0]
            if isinstance(item, tuple):
                pending.popleft()
                self.send_headers(sid, item[0], end_stream=True)
                return True
            room = min(self.send_window, stream.send_window, self.peer_max_frame)
            if room <= 0:
                return False
            chunk = item[:room]
            if len(chunk) == len(item):
                pending.popleft()
            else:
                pending[0] = item[room:]
            self.send_window -= len(chunk)
            stream.send_window -= len(chunk)
            stream.pending_bytes -= len(chunk)
            self.queued_bytes -= len(chunk)
            self._out.append(f.frame(f.DATA, 0, sid, chunk))
        return True


_TIMEOUT_BLANK = (b"grpc-timeout", b"")


def _references_and_short_literals(block: bytes) -> bool:
    """Whether a header block is only table references and literals with incremental
    indexing of a referenced name and a value under 127 bytes, each index in at most
    two bytes: what grpc-go sends for each call (its grpc-timeout is such a literal).
    Nothing is decoded here, so a block that is not may still go to the decoder."""
    i = 0
    n = len(block)
    while i < n:
        b = block[i]
        if b & 0x80:  # indexed field (RFC 7541 §6.1)
            if b == 0x80:
                return False
            if b == 0xFF:  # index 127 and up: one more byte
                if i + 1 >= n or block[i + 1] & 0x80:
                    return False
                i += 1
            i += 1
        elif b & 0x40 and b != 0x40:  # literal, incremental indexing, indexed name (§6.2.1)
            if b == 0x7F:  # name index 63 and up: one more byte
                if i + 1 >= n or block[i + 1] & 0x80:
                    return False
                i += 1
            if i + 1 >= n or block[i + 1] & 0x7F == 0x7F:
                return False
            i += 2 + (block[i + 1] & 0x7F)
        else:
            return False
    return i == n


def _field_value_ok(value: bytes) -> bool:
    """A field value without CR, LF or NUL, nor whitespace at either end (§8.2.1)."""
    return not (b"\r" in value or b"\n" in value or b"\x00" in value
                or value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"))


def _valid_request(headers: list, stream: Stream) -> bool:
    """Whether a request header list is well-formed (RFC 9113 §8.2–8.3): lowercase
    names of token characters, pseudo-headers first, once each, the required ones
    present, no connection-specific fields, values without CR, LF or NUL."""
    seen_regular = False
    pseudo: set[bytes] = set()
    method = path = scheme = None
    for name, value in headers:
        if not name or not _field_value_ok(value):
            return False
        if name[0] == 0x3A:  # ":"
            if seen_regular or name in pseudo or name not in _REQUEST_PSEUDO:
                return False
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":scheme":
                scheme = value
            continue
        seen_regular = True
        if not _NAME_OK.issuperset(name):
            return False
        if name in _CONNECTION_FIELDS:
            return False
        if name == b"te" and value != b"trailers":
            return False
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                return False
            length = int(value)
            if stream.content_length >= 0 and stream.content_length != length:
                return False
            stream.content_length = length
    if method is None or method == b"CONNECT":
        return False  # no CONNECT tunnels here
    return bool(path) and bool(scheme)
