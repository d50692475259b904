"""gRPC request messages, sans-I/O: the length-prefixed reader, request compression and
the statuses grpc-go (as etcd 3.5.1 runs it) answers for malformed calls.

No sockets, no event loop, no state beyond one stream's partial message: `calls.py` feeds
DATA payloads in and gets complete, decompressed messages out, or a `GrpcStatusError`
carrying the status code and message to end the call with. The texts are grpc-go
v1.38's, checked against a running etcd 3.5.1 (tests/server/test_grpc_compression.py).
"""

from __future__ import annotations

import codecs
import struct
import zlib
from collections.abc import Iterable

from google.protobuf import descriptor as _descriptor

UNKNOWN = 2
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13

# The 5-byte gRPC message prefix: compressed flag, 32-bit big-endian length.
PREFIX_LEN = 5
# Request encodings decoded besides identity: gzip (grpc-go's, so etcd's) and deflate,
# which stock grpcio clients offer too. etcd 3.5.1 refuses deflate with UNIMPLEMENTED; we
# serve it (a client that works with etcd cannot tell). Anything else is refused.
ACCEPTED_ENCODINGS = frozenset({"gzip", "deflate"})
# Bytes of a client-chosen name (service, method, path, grpc-encoding) echoed in a status
# message: no real name comes near it, and even escaped it stays within a stock client's
# 8 KiB metadata limit (grpc-go echoes up to its 16 MiB header-list limit).
MAX_ECHOED_NAME = 1024
# Compressed input fed to zlib per call: a corrupt stream is then located (for the
# "before offset" text) by replaying at most this many bytes one at a time.
INFLATE_CHUNK = 4096
# Nesting of protobuf messages walked to explain an unmarshal error (etcd's requests nest
# three deep; upb, which parses the request first, stops at 100).
MAX_EXPLAIN_DEPTH = 100

_LEN = struct.Struct(">I")


class GrpcStatusError(Exception):
    """A request refused with a gRPC status: `code` (an int) and grpc-go's `message`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def status(self) -> tuple[int, str]:
        return self.code, self.message


# ------------------------------------------------------------------ names and headers


def _each_byte_replaced(exc: UnicodeDecodeError) -> tuple[str, int]:
    # Go's utf8.DecodeRune gives one RuneError per invalid byte; Python's "replace" one
    # per maximal invalid sequence.
    return "\ufffd" * (exc.end - exc.start), exc.end


codecs.register_error("kubekv_go_replace", _each_byte_replaced)


def _bounded(name: bytes) -> str:
    """A client-chosen name for a status message: at most MAX_ECHOED_NAME bytes, and
    invalid UTF-8 as U+FFFD, as grpc-go's grpc-message encoding shows it."""
    if len(name) > MAX_ECHOED_NAME:
        return name[:MAX_ECHOED_NAME].decode("utf-8", "kubekv_go_replace") + "..."
    return name.decode("utf-8", "kubekv_go_replace")


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_quote(raw: bytes) -> str:
    """Go's %q of a byte string (strconv.Quote): printable runes as they are, the rest
    escaped; invalid UTF-8 bytes as \\xNN."""
    out = ['"']
    text = raw.decode("utf-8", "surrogateescape")
    for ch in text:
        cp = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= cp <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif ch == " " or (ch.isprintable() and not ch.isspace()):
            out.append(ch)
        elif cp < 0x80:
            out.append(f"\\x{cp:02x}")
        elif cp <= 0xFFFF:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def unknown_method_status(path: bytes, registered: Iterable[bytes]) -> tuple[int, str]:
    """The status for a call whose `:path` names no registered method, as grpc-go's
    handleStream words it; `registered` are the paths served ("/pkg.Service/Method")."""
    sm = path[1:] if path.startswith(b"/") else path
    pos = sm.rfind(b"/")
    if pos == -1:
        # grpc-go v1.38 answers this one with RESOURCE_EXHAUSTED (etcd 3.5.1 does)
        bounded = path[:MAX_ECHOED_NAME]
        suffix = "..." if len(path) > MAX_ECHOED_NAME else ""
        return RESOURCE_EXHAUSTED, f"malformed method name: {go_quote(bounded)}{suffix}"
    service, method = sm[:pos], sm[pos + 1:]
    if len(service) <= MAX_ECHOED_NAME * 4:  # a longer one is no registered service
        prefix = b"/" + service + b"/"
        if any(p.startswith(prefix) for p in registered):
            return UNIMPLEMENTED, (f"unknown method {_bounded(method)} "
                                   f"for service {_bounded(service)}")
    return UNIMPLEMENTED, f"unknown service {_bounded(service)}"


def request_encoding(value: bytes | None) -> str | None:
    """The compression of a request's messages from its `grpc-encoding` header: None for
    identity (or no header), else the accepted encoding's name. An encoding we do not
    decode is refused before any message is read, whatever the messages' flags say, as
    grpc-go does."""
    if not value or value == b"identity":
        return None
    name = value.decode("latin-1")
    if name in ACCEPTED_ENCODINGS:
        return name
    raise GrpcStatusError(UNIMPLEMENTED, "grpc: Decompressor is not installed for "
                          f"grpc-encoding {go_quote(value[:MAX_ECHOED_NAME])}")


# ------------------------------------------------------------------ decompression


def _gzip_header_end(data: bytes, pos: int) -> int:
    """Where the deflate data of the gzip member at `pos` starts; Go's gzip.Reader errors."""
    n = len(data)
    if n - pos < 10:
        raise _Inflate("EOF" if n == pos else "unexpected EOF")
    if data[pos] != 0x1F or data[pos + 1] != 0x8B or data[pos + 2] != 8:
        raise _Inflate("gzip: invalid header")
    flags = data[pos + 3]
    i = pos + 10
    if flags & 0x04:  # FEXTRA
        if n - i < 2:
            raise _Inflate("unexpected EOF")
        i += 2 + int.from_bytes(data[i:i + 2], "little")
        if i > n:
            raise _Inflate("unexpected EOF")
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT: NUL-terminated, Go reads at most 512 bytes
        if flags & bit:
            end = data.find(b"\x00", i, i + 512)
            if end == -1:
                raise _Inflate("EOF" if n - i < 512 else "gzip: invalid header")
            i = end + 1
    if flags & 0x02:  # FHCRC: the low 16 bits of the header's CRC-32
        if n - i < 2:
            raise _Inflate("unexpected EOF")
        if zlib.crc32(data[pos:i]) & 0xFFFF != int.from_bytes(data[i:i + 2], "little"):
            raise _Inflate("gzip: invalid header")
        i += 2
    return i


class _Inflate(Exception):
    """A decompression failure, with the text Go's compress/* would give."""


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


def _inflate(data: bytes, start: int, wbits: int, budget: int) -> tuple[bytes, int, int]:
    """Inflate one stream from data[start:] producing at most `budget` bytes.
    Returns (output, where the stream's unused input starts, its CRC-32 of output)."""
    d = zlib.decompressobj(wbits)
    out: list[bytes] = []
    produced = 0
    pos = start
    n = len(data)
    pending = b""
    while not d.eof:
        if not pending:
            if pos >= n:
                raise _Inflate("unexpected EOF")
            pending = data[pos:pos + INFLATE_CHUNK]
            pos += len(pending)
        fed_from = pos - len(pending)
        try:
            chunk = d.decompress(pending, budget - produced + 1)
        except zlib.error:
            raise _Inflate(_corrupt_text(data, start, fed_from, wbits)) from None
        produced += len(chunk)
        out.append(chunk)
        if produced > budget:
            raise _TooLarge(-1)  # the caller knows the total: its max + 1
        pending = d.unconsumed_tail
    tail = len(d.unused_data) + len(pending)
    body = b"".join(out)
    return body, pos - tail, zlib.crc32(body)


def _corrupt_text(data: bytes, start: int, fed_from: int, wbits: int) -> str:
    """Go's flate.CorruptInputError text: the offset into the deflate stream at which the
    error showed, found by replaying the failing chunk a byte at a time."""
    d = zlib.decompressobj(wbits)
    offset = fed_from - start
    try:
        d.decompress(data[start:fed_from])
        for i in range(fed_from, min(len(data), fed_from + INFLATE_CHUNK)):
            offset = i - start + 1
            d.decompress(data[i:i + 1])
    except zlib.error:
        pass
    return f"flate: corrupt input before offset {offset}"


def decompress(data: bytes, encoding: str, max_bytes: int) -> bytes:
    """One message's payload decompressed, never holding more than max_bytes + 1 bytes of
    output (a decompression bomb stops there). Raises GrpcStatusError with grpc-go's
    texts: INTERNAL for corrupt input, RESOURCE_EXHAUSTED when over max_bytes."""
    try:
        if encoding == "gzip":
            return _gunzip(data, max_bytes)
        if encoding == "deflate":  # zlib-wrapped, as grpc-core's "deflate"
            body, end, _ = _inflate(data, 0, 15, max_bytes)
            if end != len(data):
                raise _Inflate("zlib: invalid header")
            return body
    except _Inflate as exc:
        raise GrpcStatusError(
            INTERNAL, f"grpc: failed to decompress the received message {exc}") from None
    except _TooLarge as exc:
        # grpc-go reads at most max + 1 bytes, and reports what it read (or gzip's ISIZE)
        size = max_bytes + 1 if exc.size < 0 else exc.size
        raise GrpcStatusError(RESOURCE_EXHAUSTED, _too_large(size, max_bytes)) from None
    raise GrpcStatusError(UNIMPLEMENTED, "grpc: Decompressor is not installed for "
                          f"grpc-encoding {go_quote(encoding.encode()[:MAX_ECHOED_NAME])}")


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    # grpc-go: the header is read first, then the last four bytes (gzip's ISIZE) are
    # trusted as the size: more than the max is refused before inflating anything.
    pos = _gzip_header_end(data, 0)
    claimed = int.from_bytes(data[-4:], "little")
    if claimed > max_bytes:
        raise _TooLarge(claimed)
    out: list[bytes] = []
    produced = 0
    while True:  # Go's gzip.Reader reads concatenated members (multistream)
        body, pos, crc = _inflate(data, pos, -15, max_bytes - produced)
        produced += len(body)
        out.append(body)
        if len(data) - pos < 8:
            raise _Inflate("unexpected EOF")
        if (int.from_bytes(data[pos:pos + 4], "little") != crc
                or int.from_bytes(data[pos + 4:pos + 8], "little") != len(body) & 0xFFFFFFFF):
            raise _Inflate("gzip: invalid checksum")
        pos += 8
        if pos == len(data):
            return b"".join(out)
        pos = _gzip_header_end(data, pos)


def _too_large(size: int, max_bytes: int) -> str:
    return f"grpc: received message larger than max ({size} vs. {max_bytes})"


# ------------------------------------------------------------------ the reader


class MessageReader:
    """The messages of one gRPC request stream: feed DATA payloads, get whole messages.

    Holds at most one message's prefix and body (PREFIX_LEN + max_bytes): a length over
    max_bytes is refused as soon as its prefix is in, as grpc-go's parser does. The
    compressed flag is checked once the whole message is in (grpc-go's order). With
    `single` (a unary call) the bytes after the first message are ignored unread, as
    grpc-go's unary path never reads past its one message.
    """

    __slots__ = ("max_bytes", "encoding", "single", "_buf", "_need", "_done")

    def __init__(self, max_bytes: int, encoding: str | None = None, single: bool = False) -> None:
        self.max_bytes = max_bytes
        self.encoding = encoding
        self.single = single
        self._buf: bytearray | None = None  # made when a message spans payloads
        self._need = -1  # body length of the message in _buf, -1 while its prefix is partial
        self._done = False  # single, and its message is out

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buf) if self._buf is not None else 0

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by `data`, decompressed. Raises GrpcStatusError."""
        if self._done:
            return []
        n = len(data)
        if self._buf is None:
            # the common case, one uncompressed message in one DATA payload
            if n >= PREFIX_LEN and data[0] == 0 and _LEN.unpack_from(data, 1)[0] == n - 5 \
                    and n - 5 <= self.max_bytes:
                self._done = self.single
                return [data[5:]]
            self._buf = bytearray()
        out: list[bytes] = []
        view = memoryview(data)
        pos = 0
        buf = self._buf
        while pos < n:
            if not buf and n - pos >= PREFIX_LEN:
                # fast path: a whole prefix in this payload, no copying into the buffer
                length = self._check_length(_LEN.unpack_from(data, pos + 1)[0])
                end = pos + PREFIX_LEN + length
                if end <= n:
                    out.append(self._complete(data[pos], view[pos + PREFIX_LEN:end]))
                    pos = end
                    if self.single:
                        self._done = True
                        break
                    continue
            if self._need < 0:
                take = min(PREFIX_LEN - len(buf), n - pos)
                buf += view[pos:pos + take]
                pos += take
                if len(buf) < PREFIX_LEN:
                    break
                self._need = self._check_length(_LEN.unpack_from(buf, 1)[0])
            take = min(PREFIX_LEN + self._need - len(buf), n - pos)
            buf += view[pos:pos + take]
            pos += take
            if len(buf) == PREFIX_LEN + self._need:
                flag = buf[0]
                body = bytes(buf[PREFIX_LEN:])
                buf.clear()
                self._need = -1
                out.append(self._complete(flag, body))
                if self.single:
                    self._done = True
                    break
        return out

    def end(self) -> None:
        """The client ended the stream: a partial message left is an error (grpc-go's
        io.ErrUnexpectedEOF, which reaches the client as UNKNOWN "unexpected EOF")."""
        if self._buf and not self._done:
            self._buf.clear()
            self._need = -1
            raise GrpcStatusError(UNKNOWN, "unexpected EOF")

    def _check_length(self, length: int) -> int:
        if length > self.max_bytes:
            raise GrpcStatusError(RESOURCE_EXHAUSTED, _too_large(length, self.max_bytes))
        return length

    def _complete(self, flag: int, body) -> bytes:
        if flag == 0:
            return bytes(body)
        if flag != 1:
            raise GrpcStatusError(INTERNAL, f"grpc: received unexpected payload format {flag}")
        if self.encoding is None:
            raise GrpcStatusError(
                INTERNAL, "grpc: compressed flag set with identity or empty encoding")
        return decompress(bytes(body), self.encoding, self.max_bytes)


# ------------------------------------------------------------------ unmarshal errors

_WIRE = {}
for _t in (_descriptor.FieldDescriptor.TYPE_DOUBLE, _descriptor.FieldDescriptor.TYPE_FIXED64,
           _descriptor.FieldDescriptor.TYPE_SFIXED64):
    _WIRE[_t] = 1
for _t in (_descriptor.FieldDescriptor.TYPE_FLOAT, _descriptor.FieldDescriptor.TYPE_FIXED32,
           _descriptor.FieldDescriptor.TYPE_SFIXED32):
    _WIRE[_t] = 5
for _t in (_descriptor.FieldDescriptor.TYPE_STRING, _descriptor.FieldDescriptor.TYPE_BYTES,
           _descriptor.FieldDescriptor.TYPE_MESSAGE):
    _WIRE[_t] = 2

_EOF = "unexpected EOF"
_OVERFLOW = "proto: integer overflow"
_BAD_LENGTH = "proto: negative length found during unmarshaling"


class _Bad(Exception):
    pass


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """A varint as gogo's generated code reads it: at most 10 bytes, bits past 64 lost."""
    value = 0
    shift = 0
    n = len(data)
    while True:
        if shift >= 64:
            raise _Bad(_OVERFLOW)
        if i >= n:
            raise _Bad(_EOF)
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, i
        shift += 7


def _signed(value: int, bits: int = 64) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def _length(data: bytes, i: int) -> tuple[int, int]:
    """A length prefix and where its data ends, with gogo's checks."""
    raw, i = _varint(data, i)
    length = _signed(raw)
    if length < 0:
        raise _Bad(_BAD_LENGTH)
    end = i + length
    if end > len(data):
        raise _Bad(_EOF)
    return i, end


def _skip(data: bytes, i: int) -> int:
    """Skip one unknown field starting at its tag, as gogo's generated skip function."""
    n = len(data)
    depth = 0
    while i < n:
        wire, i = _varint(data, i)
        wt = wire & 7
        if wt == 0:
            _, i = _varint(data, i)
        elif wt == 1:
            i += 8
        elif wt == 2:
            raw, i = _varint(data, i)
            if _signed(raw) < 0:
                raise _Bad(_BAD_LENGTH)
            i += raw
        elif wt == 3:
            depth += 1
        elif wt == 4:
            if depth == 0:
                raise _Bad("proto: unexpected end of group")
            depth -= 1
        elif wt == 5:
            i += 4
        else:
            raise _Bad(f"proto: illegal wireType {wt}")
        if depth == 0:
            if i > n:
                raise _Bad(_EOF)
            return i
    raise _Bad(_EOF)


def go_field_name(name: str) -> str:
    """The Go struct field name protoc-gen-gogo gives a proto field (CamelCase)."""
    out = []
    i = 0
    if name.startswith("_"):
        out.append("X")
        i = 1
    while i < len(name):
        c = name[i]
        if c == "_" and i + 1 < len(name) and name[i + 1].islower():
            i += 1
            continue
        if c.isdigit():
            out.append(c)
            i += 1
            continue
        out.append(c.upper() if c.islower() and c.isascii() else c)
        i += 1
        while i < len(name) and name[i].islower() and name[i].isascii():
            out.append(name[i])
            i += 1
    return "".join(out)


def _go_type_name(desc: _descriptor.Descriptor) -> str:
    full = desc.full_name
    pkg = desc.file.package
    if pkg and full.startswith(pkg + "."):
        full = full[len(pkg) + 1:]
    return full.replace(".", "_")


def _walk(data: bytes, desc: _descriptor.Descriptor, depth: int) -> None:
    if depth > MAX_EXPLAIN_DEPTH:
        raise _Bad("proto: exceeded maximum recursion depth")
    i, n = 0, len(data)
    fields = desc.fields_by_number
    while i < n:
        start = i
        wire, i = _varint(data, i)
        field = _signed((wire >> 3) & 0xFFFFFFFF, 32)
        wt = wire & 7
        if wt == 4:
            raise _Bad(f"proto: {_go_type_name(desc)}: wiretype end group for non-group")
        if field <= 0:
            raise _Bad(f"proto: {_go_type_name(desc)}: illegal tag {field} (wire type {wt})")
        fd = fields.get(field)
        if fd is None:
            i = _skip(data, start)
            continue
        expected = _WIRE.get(fd.type, 0)
        repeated = fd.is_repeated
        if repeated and expected != 2 and wt == 2:  # packed
            i, end = _length(data, i)
            while i < end:
                if expected == 0:
                    _, i = _varint(data, i)  # gogo bounds these by the message, not the field
                else:
                    i += 8 if expected == 1 else 4
                    if i > end:
                        raise _Bad(_EOF)
            continue
        if wt != expected:
            raise _Bad(f"proto: wrong wireType = {wt} for field {go_field_name(fd.name)}")
        if wt == 0:
            _, i = _varint(data, i)
        elif wt == 2:
            i, end = _length(data, i)
            if fd.type == _descriptor.FieldDescriptor.TYPE_MESSAGE:
                _walk(data[i:end], fd.message_type, depth + 1)
            i = end
        else:
            i += 8 if wt == 1 else 4
            if i > n:
                raise _Bad(_EOF)
    if i > n:
        raise _Bad(_EOF)


def unmarshal_error(data: bytes, desc: _descriptor.Descriptor) -> str | None:
    """What etcd's gogo-generated Unmarshal says of `data` as a `desc` message, or None
    if it would accept it. Only for the error path: it walks the bytes in Python."""
    try:
        _walk(data, desc, 0)
    except _Bad as exc:
        return str(exc)
    return None


def unmarshal_status(data: bytes, desc: _descriptor.Descriptor) -> GrpcStatusError:
    """The status for a request message our parser refused, worded as etcd words it."""
    why = unmarshal_error(data, desc)
    if why is None:
        # gogo accepts what upb refused: in etcd's requests, a string field that is not
        # UTF-8 (gogo does not check). There is no gogo text for it; this is golang/protobuf's.
        why = f"proto: {_go_type_name(desc)}: string field contains invalid UTF-8"
    return GrpcStatusError(INTERNAL, f"grpc: error unmarshalling request: {why}")
