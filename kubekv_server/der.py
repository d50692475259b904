"""Just enough DER and PEM to read keys, certificates and CRLs (no crypto dependency)."""

from __future__ import annotations

import base64


class DERError(ValueError):
    """Bytes that are not the DER structure expected."""


def tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at pos."""
    if pos + 2 > len(data):
        raise DERError("truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise DERError("truncated DER")
    return tag, pos, pos + length


def children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The elements inside a constructed element's content [start, end)."""
    out = []
    while start < end:
        tag, s, e = tlv(data, start)
        out.append((tag, s, e))
        start = e
    return out


def pem_to_der(pem: bytes, label: bytes) -> list[bytes]:
    """The DER bodies of every `-----BEGIN <label>-----` block."""
    out = []
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    while begin in pem:
        _, _, rest = pem.partition(begin)
        body, _, pem = rest.partition(end)
        out.append(base64.b64decode(b"".join(body.split())))
    return out
