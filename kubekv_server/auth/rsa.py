"""RSA keys from PEM files and RS256 (RSASSA-PKCS1-v1_5 with SHA-256) in pure Python.

Enough of DER to read what etcd's --auth-token jwt options accept: a private key
in PKCS#1 ("RSA PRIVATE KEY") or PKCS#8 ("PRIVATE KEY") form, and a public key
as an X.509 certificate, a SubjectPublicKeyInfo ("PUBLIC KEY") or PKCS#1
("RSA PUBLIC KEY"). Signing uses the CRT form of pow(m, d, n).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from ..der import DERError, children, tlv

# DER of DigestInfo for SHA-256, followed by the 32-byte digest (RFC 8017, 9.2 note 1).
_SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption


class KeyError_(DERError):
    """A key file that is not an RSA key we can read."""


@dataclass(frozen=True)
class PublicKey:
    n: int
    e: int

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8

    def verify(self, message: bytes, signature: bytes) -> bool:
        k = self.size
        if len(signature) != k:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        em = pow(s, self.e, self.n).to_bytes(k, "big")
        return hmac.compare_digest(em, _encode(message, k))


@dataclass(frozen=True)
class PrivateKey:
    n: int
    e: int
    d: int
    p: int
    q: int
    dp: int
    dq: int
    qinv: int

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.n, self.e)

    def sign(self, message: bytes) -> bytes:
        k = (self.n.bit_length() + 7) // 8
        m = int.from_bytes(_encode(message, k), "big")
        if self.p and self.q:
            s1 = pow(m, self.dp, self.p)
            s2 = pow(m, self.dq, self.q)
            s = s2 + ((self.qinv * (s1 - s2)) % self.p) * self.q
        else:
            s = pow(m, self.d, self.n)
        return s.to_bytes(k, "big")


def _encode(message: bytes, k: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of SHA-256(message) into k bytes."""
    t = _SHA256_PREFIX + hashlib.sha256(message).digest()
    if k < len(t) + 11:
        raise KeyError_("RSA key too short for SHA-256")
    return b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


# ------------------------------------------------------------------- DER


_tlv, _children = tlv, children


def _sequence(data: bytes, pos: int = 0) -> list[tuple[int, int, int]]:
    tag, s, e = _tlv(data, pos)
    if tag != 0x30:
        raise KeyError_("expected a DER SEQUENCE")
    return _children(data, s, e)


def _ints(data: bytes, items: list[tuple[int, int, int]]) -> list[int]:
    return [int.from_bytes(data[s:e], "big", signed=True) for tag, s, e in items if tag == 0x02]


def _pkcs1_private(der: bytes) -> PrivateKey:
    ints = _ints(der, _sequence(der))
    if len(ints) < 9:
        raise KeyError_("not a PKCS#1 RSA private key")
    _version, n, e, d, p, q, dp, dq, qinv = ints[:9]
    return PrivateKey(n, e, d, p, q, dp, dq, qinv)


def _pkcs1_public(der: bytes) -> PublicKey:
    ints = _ints(der, _sequence(der))
    if len(ints) < 2:
        raise KeyError_("not a PKCS#1 RSA public key")
    return PublicKey(ints[0], ints[1])


def _pkcs8_private(der: bytes) -> PrivateKey:
    items = _sequence(der)
    if len(items) < 3 or items[1][0] != 0x30 or items[2][0] != 0x04:
        raise KeyError_("not a PKCS#8 private key")
    alg = _children(der, items[1][1], items[1][2])
    if not alg or der[alg[0][1] : alg[0][2]] != _RSA_OID:
        raise KeyError_("PKCS#8 key is not an RSA key")
    return _pkcs1_private(der[items[2][1] : items[2][2]])


def _spki(der: bytes, start: int, end: int) -> PublicKey:
    items = _children(der, start, end)
    if len(items) < 2 or items[0][0] != 0x30 or items[1][0] != 0x03:
        raise KeyError_("not a SubjectPublicKeyInfo")
    alg = _children(der, items[0][1], items[0][2])
    if not alg or der[alg[0][1] : alg[0][2]] != _RSA_OID:
        raise KeyError_("public key is not an RSA key")
    bits = der[items[1][1] + 1 : items[1][2]]  # skip the unused-bits byte
    return _pkcs1_public(bits)


def _certificate_public(der: bytes) -> PublicKey:
    cert = _sequence(der)
    tbs = _children(der, cert[0][1], cert[0][2])
    i = 1 if tbs and tbs[0][0] == 0xA0 else 0  # optional [0] version
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    _tag, s, e = tbs[i + 5]
    return _spki(der, s, e)


# ------------------------------------------------------------------- PEM

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), base64.b64decode(b"".join(m.group(2).split())))
            for m in _PEM.finditer(data)]


def load_private_key(pem: bytes) -> PrivateKey:
    for label, der in _pem_blocks(pem):
        if label == "RSA PRIVATE KEY":
            return _pkcs1_private(der)
        if label == "PRIVATE KEY":
            return _pkcs8_private(der)
    raise KeyError_("invalid key: key must be a PEM encoded PKCS1 or PKCS8 key")


def load_public_key(pem: bytes) -> PublicKey:
    for label, der in _pem_blocks(pem):
        if label == "CERTIFICATE":
            return _certificate_public(der)
        if label == "PUBLIC KEY":
            items_tag, s, e = _tlv(der, 0)
            return _spki(der, s, e)
        if label == "RSA PUBLIC KEY":
            return _pkcs1_public(der)
    raise KeyError_("invalid key: key must be a PEM encoded PKCS1 or PKCS8 key")
