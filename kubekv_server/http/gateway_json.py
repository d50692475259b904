"""Protobuf messages from JSON as etcd's gateway reads them (Go's jsonpb over
encoding/json): proto or lowerCamel field names, unknown fields ignored, null as unset,
int64 as number or string, enums by name or number, bytes in standard base64, and
Go's wording in the errors a client sees.
"""

from __future__ import annotations

import json
import re

from google.protobuf.descriptor import FieldDescriptor as FD

_INTS = {FD.TYPE_INT64: "int64", FD.TYPE_SINT64: "int64", FD.TYPE_SFIXED64: "int64",
         FD.TYPE_UINT64: "uint64", FD.TYPE_FIXED64: "uint64",
         FD.TYPE_INT32: "int32", FD.TYPE_SINT32: "int32", FD.TYPE_SFIXED32: "int32",
         FD.TYPE_UINT32: "uint32", FD.TYPE_FIXED32: "uint32"}
_RANGES = {"int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1),
           "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1)}
_INT_LITERAL = re.compile(r"-?(0|[1-9][0-9]*)\Z")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")
_B64 = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


class JSONError(ValueError):
    """A body etcd's gateway would refuse (InvalidArgument), with Go's message."""


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _cannot(v, go_type: str, number_text: str | None = None) -> JSONError:
    kind = _kind(v)
    if kind == "number" and number_text is not None:
        kind = f"number {number_text}"
    return JSONError(f"json: cannot unmarshal {kind} into Go value of type {go_type}")


def go_base64(s: str) -> bytes:
    """Go's base64.StdEncoding.DecodeString, with its error positions."""
    out = bytearray()
    src = s.encode("latin-1", "replace")
    si, n = 0, len(src)
    while True:
        buf = []
        j = 0
        done = False
        while j < 4:
            if si == n:
                if j == 0:
                    return bytes(out)
                raise JSONError(f"illegal base64 data at input byte {si - j}")
            c = chr(src[si])
            si += 1
            if c in _B64:
                buf.append(_B64[c])
                j += 1
                continue
            if c in "\r\n":
                continue
            if c != "=":
                raise JSONError(f"illegal base64 data at input byte {si - 1}")
            if j in (0, 1):
                raise JSONError(f"illegal base64 data at input byte {si - 1}")
            if j == 2:
                while si < n and chr(src[si]) in "\r\n":
                    si += 1
                if si == n:
                    raise JSONError(f"illegal base64 data at input byte {n}")
                if chr(src[si]) != "=":
                    raise JSONError(f"illegal base64 data at input byte {si - 1}")
                si += 1
            while si < n and chr(src[si]) in "\r\n":
                si += 1
            if si < n:
                raise JSONError(f"illegal base64 data at input byte {si}")
            done = True
            break
        val = 0
        for b in buf:
            val = (val << 6) | b
        val <<= 6 * (4 - len(buf))
        chunk = val.to_bytes(3, "big")[: max(len(buf) - 1, 0)]
        out.extend(chunk)
        if done:
            return bytes(out)


def _int(v, name: str, raw: str | None) -> int:
    """encoding/json's integer decoding (jsonpb strips the quotes of a string first)."""
    if isinstance(v, str):
        text = v
        if not text or not (text[0] == "-" or text[0].isdigit()):
            ch = text[0] if text else ""
            if not ch:
                raise JSONError("unexpected end of JSON input")
            raise JSONError(f"invalid character {_go_char(ch)} looking for beginning of value")
        if not _NUMBER.match(text):
            raise JSONError(f"invalid character {_go_char(_first_bad(text))} after top-level "
                            "value")
    elif isinstance(v, int | float) and not isinstance(v, bool):
        text = raw if raw is not None else repr(v)
    else:
        raise _cannot(v, name)
    if not _INT_LITERAL.match(text):
        raise JSONError(f"json: cannot unmarshal number {text} into Go value of type {name}")
    n = int(text)
    lo, hi = _RANGES[name]
    if not lo <= n <= hi:
        raise JSONError(f"json: cannot unmarshal number {text} into Go value of type {name}")
    return n


def _first_bad(text: str) -> str:
    for i in range(len(text), 0, -1):
        if _NUMBER.match(text[:i]):
            return text[i] if i < len(text) else text[-1]
    return text[0]


def _go_char(ch: str) -> str:
    return "'" + ch.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Num(float):
    """A JSON number, remembering its text (Go reports it in errors)."""

    text: str

    def __new__(cls, text: str):
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj


def _repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 6; older ones have .label
    return flag if flag is not None else fd.label == FD.LABEL_REPEATED


def fill(msg, obj) -> None:
    """Set `msg` from a decoded JSON object, as Go's jsonpb does."""
    if not isinstance(obj, dict):
        raise _cannot(obj, "map[string]json.RawMessage")
    desc = msg.DESCRIPTOR
    for fd in desc.fields:
        if fd.json_name in obj:
            value = obj[fd.json_name]
        elif fd.name in obj:
            value = obj[fd.name]
        else:
            continue
        if value is None:
            continue
        if _repeated(fd):
            if not isinstance(value, list):
                raise _cannot(value, "[]json.RawMessage")
            target = getattr(msg, fd.name)
            for item in value:
                if fd.type == FD.TYPE_MESSAGE:
                    sub = target.add()
                    if item is not None:
                        fill(sub, item)
                else:
                    target.append(_scalar(fd, item))
        elif fd.type == FD.TYPE_MESSAGE:
            sub = getattr(msg, fd.name)
            sub.SetInParent()
            fill(sub, value)
        else:
            setattr(msg, fd.name, _scalar(fd, value))


def _scalar(fd, v):
    t = fd.type
    if t in _INTS:
        raw = v.text if isinstance(v, _Num) else None
        return _int(v, _INTS[t], raw)
    if t == FD.TYPE_ENUM:
        enum = fd.enum_type
        if isinstance(v, str):
            found = enum.values_by_name.get(v)
            if found is None:
                raise JSONError(f"unknown value {json.dumps(json.dumps(v))} for enum "
                                f"{enum.full_name}")
            return found.number
        return _int(v, "int32", v.text if isinstance(v, _Num) else None)
    if t == FD.TYPE_BOOL:
        if not isinstance(v, bool):
            raise _cannot(v, "bool")
        return v
    if t == FD.TYPE_STRING:
        if not isinstance(v, str):
            raise _cannot(v, "string")
        return v
    if t == FD.TYPE_BYTES:
        if not isinstance(v, str):
            raise _cannot(v, "[]uint8")
        return go_base64(v)
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _cannot(v, "float64")
        return float(v)
    raise JSONError(f"unsupported field type {t}")


def _syntax_error(text: str, exc: json.JSONDecodeError) -> JSONError:
    """Go's encoding/json wording for the common syntax errors."""
    pos = exc.pos
    if pos >= len(text):
        return JSONError("unexpected EOF")  # json.Decoder's io.ErrUnexpectedEOF
    ch = _go_char(text[pos])
    m = exc.msg
    if m.startswith("Expecting value") and text[pos] in "tfn":
        literal = {"t": "true", "f": "false", "n": "null"}[text[pos]]
        for k, want in enumerate(literal):
            if pos + k >= len(text):
                return JSONError("unexpected EOF")
            if text[pos + k] != want:
                return JSONError(f"invalid character {_go_char(text[pos + k])} in literal "
                                 f"{literal} (expecting {_go_char(want)})")
    if m.startswith("Expecting property name"):
        return JSONError(f"invalid character {ch} looking for beginning of object key string")
    if m.startswith("Expecting ':'"):
        return JSONError(f"invalid character {ch} after object key")
    if m.startswith("Expecting ','"):
        return JSONError(f"invalid character {ch} after object key:value pair")
    return JSONError(f"invalid character {ch} looking for beginning of value")


def _no_constant(name: str):
    """NaN and Infinity are not JSON (Python's decoder would take them)."""
    if name.startswith("-"):
        raise JSONError("invalid character 'I' in numeric literal")
    raise JSONError(f"invalid character {_go_char(name[0])} looking for beginning of value")


_DECODER = json.JSONDecoder(parse_float=_Num, parse_int=_Num,
                            parse_constant=_no_constant)


def decode_stream(body: bytes, cls: type, limit: int | None = None) -> list:
    """The request messages of a body: its JSON values, one after another (an empty
    body is one empty request, as grpc-gateway treats EOF); at most `limit`."""
    text = body.decode("utf-8", "replace")
    out = []
    i, n = 0, len(text)
    while limit is None or len(out) < limit:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            break
        try:
            obj, i = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise _syntax_error(text, exc) from None
        except RecursionError:
            # Go's encoding/json stops at 10,000 levels of nesting with this error;
            # Python's decoder stops near its recursion limit (~1,000): the same answer
            # a little earlier (no etcd client nests its requests that deep).
            bracket = "[" if text.count("[") >= text.count("{") else "{"
            raise JSONError(f"invalid character '{bracket}' exceeded max depth") from None
        msg = cls()
        fill(msg, obj)
        out.append(msg)
    return out or [cls()]
