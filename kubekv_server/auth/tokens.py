"""Token providers: etcd's `simple` tokens and signed JWTs (auth/simple_token.go, jwt.go).

simple  "<16 random letters>.<raft index>": the random part is chosen by the member
        that received Authenticate, the index is the log index of the Authenticate
        entry, and every member maps the token to the user when it applies that
        entry. Tokens live in memory only (a restart forgets them, as in etcd; clients
        re-authenticate on "invalid auth token"); each use extends the TTL
        (--auth-token-ttl, default 300 s); disabling auth, deleting the user or
        changing its password drops them.
jwt     `jwt,pub-key=F,priv-key=F,sign-method=RS256,ttl=5m`: claims username,
        revision and exp, signed with the private key; any member verifies them
        alone. The auth revision inside the token makes it stale (etcd's "revision
        of auth store is old") once users, roles or permissions change. The sign
        methods are those of etcd's JWT library: RS256/384/512 and PS256/384/512
        (RSA keys), ES256/384/512 (ECDSA keys), HS256/384/512 (the priv-key file's
        bytes are the secret); signatures are made and checked by `cryptography`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import threading
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from kubekv_server.config.flags import parse_duration

SIMPLE_TOKEN_LENGTH = 16
_LETTERS = string.ascii_lowercase + string.ascii_uppercase


class TokenConfigError(ValueError):
    """--auth-token options etcd would refuse; the message says why."""


class SimpleTokens:
    kind = "simple"

    def __init__(self, ttl: float = 300.0, clock=time.monotonic) -> None:
        self.ttl = ttl if ttl > 0 else 300.0
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (user, deadline)
        self._enabled = False

    def enable(self) -> None:
        with self._lock:
            self._enabled = True

    def disable(self) -> None:
        with self._lock:
            self._enabled = False
            self._tokens.clear()

    def gen_prefix(self) -> str:
        return "".join(secrets.choice(_LETTERS) for _ in range(SIMPLE_TOKEN_LENGTH))

    def assign(self, username: str, revision: int, index: int, prefix: str) -> str:
        token = f"{prefix}.{index}"
        with self._lock:
            if self._enabled:
                self._tokens[token] = (username, self.clock() + self.ttl)
        return token

    def info(self, token: str, revision: int) -> tuple[str, int] | None:
        """(user, revision) for a live token; a simple token carries no revision, so the
        store's current one is used (it never goes stale, only invalid)."""
        now = self.clock()
        with self._lock:
            found = self._tokens.get(token)
            if found is None:
                return None
            user, deadline = found
            if now > deadline:
                del self._tokens[token]
                return None
            self._tokens[token] = (user, now + self.ttl)
        return user, revision

    def invalidate_user(self, username: str) -> None:
        with self._lock:
            for token in [t for t, (u, _) in self._tokens.items() if u == username]:
                del self._tokens[token]

    @staticmethod
    def index_of(token: str) -> int | None:
        """The log index a simple token was issued at (etcd's isValidSimpleToken)."""
        parts = token.split(".")
        if len(parts) != 2:
            return None
        try:
            return int(parts[1])
        except ValueError:
            return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_DIGESTS = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
# RSASSA-PKCS1-v1_5 (RS*) and RSASSA-PSS (PS*) take RSA keys
_RSA_METHODS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
# ES*: the curve jwt-go demands of the signing key, and the bytes of r and of s in a
# JWS signature (RFC 7518 3.4: r || s, each as wide as the curve's order)
_EC_METHODS = {"ES256": (ec.SECP256R1, 32), "ES384": (ec.SECP384R1, 48),
               "ES512": (ec.SECP521R1, 66)}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class JWTTokens:
    kind = "jwt"

    def __init__(self, sign_method: str, ttl: float, *, private: PrivateKey | None = None,
                 public: PublicKey | None = None, secret: bytes | None = None,
                 clock=time.time) -> None:
        self.sign_method = sign_method
        self.ttl = ttl
        self.private = private
        # etcd verifies with the private key's own half when it has one
        self.public = public if private is None else private.public_key()
        self.secret = secret
        self.clock = clock
        self.verify_only = sign_method not in _HMAC and private is None
        self._digest = _DIGESTS.get(sign_method[2:], hashes.SHA256)

    def _pss(self, salt_length) -> padding.PSS:
        return padding.PSS(mgf=padding.MGF1(self._digest()), salt_length=salt_length)

    # the simple-token hooks are no-ops for JWTs
    def enable(self) -> None: ...

    def disable(self) -> None: ...

    def invalidate_user(self, username: str) -> None: ...

    def gen_prefix(self) -> str:
        return ""

    def _sign(self, data: bytes) -> bytes:
        method = self.sign_method
        if method in _HMAC:
            return hmac.new(self.secret, data, _HMAC[method]).digest()
        if method.startswith("RS"):
            return self.private.sign(data, padding.PKCS1v15(), self._digest())
        if method.startswith("PS"):  # jwt-go signs with a salt as long as the hash
            return self.private.sign(data, self._pss(padding.PSS.DIGEST_LENGTH), self._digest())
        r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(self._digest())))
        width = _EC_METHODS[method][1]
        return r.to_bytes(width, "big") + s.to_bytes(width, "big")

    def _verify(self, data: bytes, sig: bytes) -> bool:
        method = self.sign_method
        if method in _HMAC:
            return hmac.compare_digest(hmac.new(self.secret, data, _HMAC[method]).digest(), sig)
        try:
            if method.startswith("RS"):
                self.public.verify(sig, data, padding.PKCS1v15(), self._digest())
            elif method.startswith("PS"):  # jwt-go verifies any salt length
                self.public.verify(sig, data, self._pss(padding.PSS.AUTO), self._digest())
            else:
                width = _EC_METHODS[method][1]
                if len(sig) != 2 * width:
                    return False
                der = encode_dss_signature(int.from_bytes(sig[:width], "big"),
                                           int.from_bytes(sig[width:], "big"))
                self.public.verify(der, data, ec.ECDSA(self._digest()))
        except InvalidSignature:
            return False
        return True

    def assign(self, username: str, revision: int, index: int = 0, prefix: str = "") -> str:
        if self.verify_only:
            raise VerifyOnlyError("auth: token signing attempted with verify-only key")
        header = {"alg": self.sign_method, "typ": "JWT"}
        claims = {"exp": int(self.clock() + self.ttl), "revision": revision,
                  "username": username}
        signing_input = ".".join(
            _b64(json.dumps(part, separators=(",", ":"), sort_keys=True).encode())
            for part in (header, claims)
        )
        return signing_input + "." + _b64(self._sign(signing_input.encode()))

    def info(self, token: str, revision: int) -> tuple[str, int] | None:
        try:
            head, body, sig = token.split(".")
            header = json.loads(_unb64(head))
            if header.get("alg") != self.sign_method:
                return None
            if not self._verify(f"{head}.{body}".encode(), _unb64(sig)):
                return None
            claims = json.loads(_unb64(body))
            # jwt-go compares whole Unix seconds: valid while int(now) <= exp, so a token
            # issued with ttl=1s lives between one and two seconds
            now = int(self.clock())
            exp = claims.get("exp")
            if exp is not None and now > float(exp):
                return None
            nbf = claims.get("nbf")
            if nbf is not None and now < float(nbf):
                return None
            return str(claims["username"]), int(claims["revision"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class VerifyOnlyError(Exception):
    pass


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TokenConfigError(f"open {path}: {exc.strerror.lower()}") from None


def provider_from_flags(auth_token: str, auth_token_ttl: int):
    """The token provider for --auth-token (etcd's NewTokenProvider and decomposeOpts)."""
    parts = auth_token.split(",")
    kind, opts = parts[0], {}
    for item in parts[1:]:
        pair = item.split("=")
        if len(pair) != 2 or pair[0] in opts:
            raise TokenConfigError("auth: invalid auth options")
        opts[pair[0]] = pair[1]
    if kind == "simple":
        return SimpleTokens(ttl=float(auth_token_ttl))
    if kind == "jwt":
        return _jwt(opts)
    raise TokenConfigError("auth: invalid auth options")


def _jwt(opts: dict[str, str]) -> JWTTokens:
    ttl = 300.0
    if opts.get("ttl"):
        try:
            ttl = parse_duration(opts["ttl"])
        except ValueError as exc:
            raise TokenConfigError(str(exc)) from None
    method = opts.get("sign-method", "")
    pub = _read(opts["pub-key"]) if opts.get("pub-key") else b""
    priv = _read(opts["priv-key"]) if opts.get("priv-key") else b""
    if method in _HMAC:
        if not priv:
            raise TokenConfigError("auth: missing key data")
        return JWTTokens(method, ttl, secret=priv)
    if method in _RSA_METHODS:
        private_type, public_type, name = rsa.RSAPrivateKey, rsa.RSAPublicKey, "RSA"
    elif method in _EC_METHODS:
        private_type, public_type = ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey
        name = "ECDSA"
    else:
        raise TokenConfigError("auth: invalid auth signature method")
    private = _private_key(priv, private_type, name) if priv else None
    public = _public_key(pub, public_type, name) if pub else None
    if private is None and public is None:
        raise TokenConfigError("auth: missing key data")
    if private is not None and public is not None and _mismatch(private.public_key(), public):
        raise TokenConfigError("auth: public and private keys don't match")
    if method in _EC_METHODS:
        curve = _EC_METHODS[method][0]
        if not isinstance((private or public).curve, curve):
            # etcd starts, then fails every Authenticate (jwt-go: "key is invalid")
            raise TokenConfigError(f"kubekv: sign-method {method} needs a {curve.name} key")
    return JWTTokens(method, ttl, private=private, public=public)


# jwt-go's wording, which etcd 3.5.1 prints before it exits
_NOT_PEM = "Invalid Key: Key must be a PEM encoded PKCS1 or PKCS8 key"


def _private_key(pem: bytes, key_type: type, name: str) -> PrivateKey:
    """An unencrypted PKCS#1/SEC1 or PKCS#8 private key of `key_type` (jwt-go's
    Parse{RSA,EC}PrivateKeyFromPEM)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TokenConfigError(_NOT_PEM) from None
    if not isinstance(key, key_type):
        raise TokenConfigError(f"Key is not a valid {name} private key")
    return key


def _public_key(pem: bytes, key_type: type, name: str) -> PublicKey:
    """A public key of `key_type` as a SubjectPublicKeyInfo ("PUBLIC KEY"), PKCS#1 ("RSA
    PUBLIC KEY") or inside an X.509 certificate, as the e2e suite's pub-key=server.crt
    (jwt-go's Parse{RSA,EC}PublicKeyFromPEM)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise TokenConfigError(_NOT_PEM) from None
    if not isinstance(key, key_type):
        raise TokenConfigError(f"Key is not a valid {name} public key")
    return key


def _mismatch(mine: PublicKey, given: PublicKey) -> bool:
    """etcd's key-pair check, sic: every part must differ to count as a mismatch."""
    a, b = mine.public_numbers(), given.public_numbers()
    if isinstance(a, rsa.RSAPublicNumbers):
        return a.e != b.e and a.n != b.n
    return a.curve.name != b.curve.name and a.x != b.x and a.y != b.y
