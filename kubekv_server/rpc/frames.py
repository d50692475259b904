"""HTTP/2 framing (RFC 9113) and the fixed gRPC header blocks kubekv sends.

Pure functions and constants: no sockets, no state. Response header blocks use
only HPACK representations that never touch the dynamic table (indexed static
entries and literals without indexing), so they are the same bytes on every
connection and are built once.
"""

from __future__ import annotations

import struct
import urllib.parse

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
DEFAULT_HEADER_TABLE_SIZE = 4096
MAX_WINDOW = 2**31 - 1

_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
# A frame's 9-byte head in one pack: the 24-bit length as its high 16 bits and its low
# 8, type, flags, stream id.
_HEAD = struct.Struct(">HBBBI")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def response_frames(stream_id: int, block: bytes, data: bytes, trailers: bytes) -> bytes:
    """A whole unary answer, each part in one frame: HEADERS, DATA, HEADERS with
    END_STREAM (the caller checked that each fits the peer's max frame size)."""
    head = _HEAD.pack
    n, b, t = len(data), len(block), len(trailers)
    return b"".join((head(b >> 8, b & 0xFF, HEADERS, END_HEADERS, stream_id), block,
                     head(n >> 8, n & 0xFF, DATA, 0, stream_id), data,
                     head(t >> 8, t & 0xFF, HEADERS, END_HEADERS | END_STREAM, stream_id),
                     trailers))


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


SETTINGS_ACK_FRAME = frame(SETTINGS, ACK, 0)


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """A header block as HEADERS, split into CONTINUATION frames past `max_frame`."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    parts = [block[i:i + max_frame] for i in range(0, len(block), max_frame)]
    out = [frame(HEADERS, flags, stream_id, parts[0])]
    for part in parts[1:-1]:
        out.append(frame(CONTINUATION, 0, stream_id, part))
    out.append(frame(CONTINUATION, END_HEADERS, stream_id, parts[-1]))
    return b"".join(out)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32.pack(last_stream_id) + _U32.pack(code) + debug)


# ------------------------------------------------------------------ HPACK out


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _int(len(data), 7, 0) + data


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, with a literal name."""
    return b"\x00" + _string(name) + _string(value)


def literal_indexed_name(index: int, value: bytes) -> bytes:
    """A literal without indexing whose name is a static-table entry."""
    return _int(index, 4, 0x00) + _string(value)


STATUS_200 = b"\x88"  # static table entry 8: ":status: 200"
CONTENT_TYPE_GRPC = literal_indexed_name(31, b"application/grpc")  # 31: content-type
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC
# Responses to a gzip-encoded request are gzip-encoded too (grpc-go, so etcd 3.5.1), and
# to a deflate one deflate-encoded (by the same rule). None carries grpc-accept-encoding:
# etcd's grpc-go (v1.38) sends none, and a client sees these headers.
RESPONSE_HEADERS_GZIP = RESPONSE_HEADERS + literal(b"grpc-encoding", b"gzip")
RESPONSE_HEADERS_DEFLATE = RESPONSE_HEADERS + literal(b"grpc-encoding", b"deflate")


def grpc_message_escape(message: str) -> bytes:
    """gRPC's percent-encoding of grpc-message (printable ASCII except '%' stays)."""
    return urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()


def trailers(code: int, message: str = "") -> bytes:
    """The header block of gRPC trailers: grpc-status, and grpc-message when not OK."""
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", grpc_message_escape(message))
    return block


TRAILERS_OK = trailers(0)
