"""Unit tests of auth's pure parts: range permissions, password hashes, tokens, JWTs."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from etcdproto.authpb import auth_pb2
from kubekv_server.auth import password, perms
from kubekv_server.auth.tokens import (
    JWTTokens,
    SimpleTokens,
    TokenConfigError,
    provider_from_flags,
)
from kubekv_testing import pki

R, W, RW = auth_pb2.Permission.READ, auth_pb2.Permission.WRITE, auth_pb2.Permission.READWRITE


def _perms(*grants) -> perms.UnifiedPerms:
    role = auth_pb2.Role(name=b"r")
    for t, key, end in grants:
        role.keyPermission.add(permType=t, key=key, range_end=end)
    return perms.merge([role])


# ------------------------------------------------------------------ ranges


def test_single_key_permission():
    p = _perms((RW, b"foo", b""))
    assert p.permitted(b"foo", b"", write=False)
    assert p.permitted(b"foo", b"", write=True)
    assert not p.permitted(b"fo", b"", write=False)
    assert not p.permitted(b"foo0", b"", write=False)
    # a range holding only foo is covered by the point permission [foo, foo\0)
    assert p.permitted(b"foo", b"foo\x00", write=False)
    assert not p.permitted(b"foo", b"fop", write=False)


def test_read_and_write_are_separate():
    p = _perms((R, b"a", b"c"), (W, b"x", b""))
    assert p.permitted(b"b", b"", write=False)
    assert not p.permitted(b"b", b"", write=True)
    assert p.permitted(b"x", b"", write=True)
    assert not p.permitted(b"x", b"", write=False)


def test_range_must_be_covered_without_gaps():
    p = _perms((R, b"a", b"c"), (R, b"c", b"e"), (R, b"f", b"g"))
    assert p.permitted(b"a", b"e", write=False)  # [a,c) + [c,e) touch
    assert p.permitted(b"b", b"d", write=False)
    assert not p.permitted(b"a", b"f", write=False)  # gap [e,f)
    assert not p.permitted(b"a", b"g", write=False)
    assert p.permitted(b"f", b"g", write=False)
    assert not p.permitted(b"0", b"b", write=False)  # starts before any grant


def test_prefix_and_from_key():
    p = _perms((RW, b"p/", b"p0"), (R, b"k", b"\x00"))
    assert p.permitted(b"p/", b"p0", write=True)
    assert p.permitted(b"p/x", b"", write=True)
    assert not p.permitted(b"p0", b"", write=True)
    # from-key grant: every key >= k, also a from-key request
    assert p.permitted(b"zzz", b"", write=False)
    assert p.permitted(b"k", b"\x00", write=False)
    assert p.permitted(b"m", b"\x00", write=False)
    assert not p.permitted(b"j", b"\x00", write=False)
    assert not p.permitted(b"p/", b"\x00", write=True)


def test_no_grants():
    p = _perms()
    assert not p.permitted(b"a", b"", write=False)
    assert not p.permitted(b"a", b"b", write=False)


# --------------------------------------------------------------- passwords


def test_password_hash_round_trip():
    h = password.hash_password("secret", iterations=1000)
    assert h.startswith("pbkdf2_sha256$1000$")
    assert password.check_password(h, "secret")
    assert password.check_password(h.encode(), "secret")
    assert not password.check_password(h, "Secret")
    assert not password.check_password(b"", "secret")
    assert password.hash_password("x", 1000) != password.hash_password("x", 1000)  # salted


# ------------------------------------------------------------------ tokens


def test_simple_tokens_ttl_and_invalidation():
    now = [100.0]
    t = SimpleTokens(ttl=10, clock=lambda: now[0])
    t.enable()
    prefix = t.gen_prefix()
    assert len(prefix) == 16 and prefix.isalpha()
    tok = t.assign("alice", 3, 42, prefix)
    assert tok == f"{prefix}.42"
    assert SimpleTokens.index_of(tok) == 42
    assert t.info(tok, 7) == ("alice", 7)  # the store's current revision
    now[0] += 9
    assert t.info(tok, 7) == ("alice", 7)  # use extends the TTL
    now[0] += 9
    assert t.info(tok, 7) is not None
    now[0] += 11
    assert t.info(tok, 7) is None  # expired
    tok2 = t.assign("bob", 3, 43, t.gen_prefix())
    t.invalidate_user("bob")
    assert t.info(tok2, 7) is None
    tok3 = t.assign("carol", 3, 44, t.gen_prefix())
    t.disable()
    assert t.info(tok3, 7) is None
    assert t.info("garbage", 7) is None


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory):
    """One RSA key as PKCS#1 and PKCS#8, a certificate for it, and its public key as
    SubjectPublicKeyInfo and as PKCS#1: every form etcd's --auth-token jwt reads."""
    d = tmp_path_factory.mktemp("keys")
    key = pki.rsa_key()
    pki.write_key(d / "pkcs1.key", key)
    pki.write_key(d / "pkcs8.key", key, traditional=False)
    pki.self_signed(d, "cert", key)
    public = key.public_key()
    (d / "pub.pem").write_bytes(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (d / "pub1.pem").write_bytes(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))
    return d


def test_jwt_keys_in_every_form_etcd_reads(rsa_keys):
    """Either private form signs; every public form verifies what it signed."""
    for priv in ("pkcs1.key", "pkcs8.key"):
        signer = provider_from_flags(
            f"jwt,priv-key={rsa_keys / priv},pub-key={rsa_keys / 'cert.pem'},sign-method=RS256",
            300)
        tok = signer.assign("alice", 5)
        for pub in ("cert.pem", "pub.pem", "pub1.pem"):
            verifier = provider_from_flags(
                f"jwt,pub-key={rsa_keys / pub},sign-method=RS256", 300)
            assert verifier.verify_only
            assert verifier.info(tok, 9) == ("alice", 5)


def _token(header: dict, claims: dict, sign) -> str:
    """A JWS compact token built here, independently of kubekv's code."""
    def enc(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = ".".join(enc(json.dumps(p, separators=(",", ":")).encode())
                             for p in (header, claims))
    return signing_input + "." + enc(sign(signing_input.encode()))


def test_rs256_tokens_agree_with_an_independent_signer(rsa_keys):
    """kubekv's RS256 token verifies with `cryptography` called directly, and equals byte
    for byte a token built here (PKCS#1 v1.5 is deterministic); one built here verifies
    in kubekv."""
    key = serialization.load_pem_private_key((rsa_keys / "pkcs1.key").read_bytes(), None)
    t = provider_from_flags(f"jwt,priv-key={rsa_keys / 'pkcs1.key'},sign-method=RS256,ttl=1m",
                            300)
    t.clock = lambda: 1_000_000.0
    tok = t.assign("alice", 5)
    head, body, sig = tok.split(".")
    key.public_key().verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)),
                            f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    def sign(data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    mine = _token({"alg": "RS256", "typ": "JWT"},
                  {"exp": 1_000_060, "revision": 5, "username": "alice"}, sign)
    assert mine == tok
    other = _token({"alg": "RS256", "typ": "JWT"},
                   {"exp": 1_000_060, "revision": 8, "username": "bob"}, sign)
    assert t.info(other, 9) == ("bob", 8)
    assert t.info(other[:-2] + ("AA" if other[-2:] != "AA" else "BB"), 9) is None


@pytest.mark.parametrize("method", ["RS384", "RS512", "PS256", "PS384", "PS512",
                                    "ES256", "ES384", "ES512"])
def test_every_sign_method_etcd_has(tmp_path, rsa_keys, method):
    """The other methods of etcd's JWT library: a token verifies with the signer and with a
    verify-only member holding the public key, and also with `cryptography` directly."""
    digest = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}[method[2:]]
    if method.startswith("ES"):
        curve = {"256": ec.SECP256R1, "384": ec.SECP384R1, "512": ec.SECP521R1}[method[2:]]
        key = ec.generate_private_key(curve())
        pki.write_key(tmp_path / "k.pem", key)
        pki.self_signed(tmp_path, "c", key)
        priv, pub = tmp_path / "k.pem", tmp_path / "c.pem"
    else:
        priv, pub = rsa_keys / "pkcs8.key", rsa_keys / "cert.pem"
    t = provider_from_flags(f"jwt,priv-key={priv},pub-key={pub},sign-method={method}", 300)
    v = provider_from_flags(f"jwt,pub-key={pub},sign-method={method}", 300)
    tok = t.assign("alice", 5)
    assert _b64json(tok.split(".")[0]) == {"alg": method, "typ": "JWT"}
    assert t.info(tok, 9) == v.info(tok, 9) == ("alice", 5)
    head, body, sig = tok.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    public = serialization.load_pem_private_key(priv.read_bytes(), None).public_key()
    data = f"{head}.{body}".encode()
    if method.startswith("RS"):
        public.verify(raw, data, padding.PKCS1v15(), digest())
    elif method.startswith("PS"):  # jwt-go signs with a salt as long as the hash
        public.verify(raw, data, padding.PSS(padding.MGF1(digest()), digest.digest_size),
                      digest())
    else:  # r || s, each as wide as the curve's order
        width = (public.curve.key_size + 7) // 8
        assert len(raw) == 2 * width
        public.verify(encode_dss_signature(int.from_bytes(raw[:width], "big"),
                                           int.from_bytes(raw[width:], "big")),
                      data, ec.ECDSA(digest()))
    # a member holding another key of the same kind refuses the token
    other = (ec.generate_private_key(public.curve) if method.startswith("ES")
             else pki.rsa_key())
    pki.write_key(tmp_path / "other.pem", other)
    assert provider_from_flags(f"jwt,priv-key={tmp_path / 'other.pem'},sign-method={method}",
                               300).info(tok, 9) is None
    forged = f"{head}.{body}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"
    assert v.info(forged, 9) is None
    assert provider_from_flags(  # a token of another method is refused
        f"jwt,priv-key={priv},sign-method={method}", 300).info(
        tok.replace(head, base64.urlsafe_b64encode(
            json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=").decode()),
        9) is None


def test_pss_tokens_with_any_salt_length_verify(rsa_keys):
    """jwt-go verifies PS* signatures whatever their salt length (PSSSaltLengthAuto)."""
    key = serialization.load_pem_private_key((rsa_keys / "pkcs1.key").read_bytes(), None)
    v = provider_from_flags(f"jwt,pub-key={rsa_keys / 'pub.pem'},sign-method=PS256", 300)
    v.clock = lambda: 1_000_000.0
    for salt in (0, padding.PSS.MAX_LENGTH):
        tok = _token({"alg": "PS256", "typ": "JWT"},
                     {"exp": 1_000_060, "revision": 2, "username": "u"},
                     lambda d, salt=salt: key.sign(d, padding.PSS(padding.MGF1(hashes.SHA256()),
                                                                  salt), hashes.SHA256()))
        assert v.info(tok, 3) == ("u", 2)


def test_jwt_key_errors_in_etcds_words(tmp_path, rsa_keys):
    (tmp_path / "junk").write_bytes(b"not a key")
    ec_key = ec.generate_private_key(ec.SECP384R1())
    pki.write_key(tmp_path / "p384.pem", ec_key)
    cases = {
        f"priv-key={tmp_path / 'junk'},sign-method=RS256":
            "Invalid Key: Key must be a PEM encoded PKCS1 or PKCS8 key",
        f"pub-key={tmp_path / 'junk'},sign-method=ES256":
            "Invalid Key: Key must be a PEM encoded PKCS1 or PKCS8 key",
        f"priv-key={rsa_keys / 'pkcs1.key'},sign-method=ES256":
            "Key is not a valid ECDSA private key",
        f"pub-key={rsa_keys / 'cert.pem'},sign-method=ES256": "Key is not a valid ECDSA public key",
        f"priv-key={tmp_path / 'p384.pem'},sign-method=RS256": "Key is not a valid RSA private key",
        f"priv-key={tmp_path / 'p384.pem'},sign-method=ES256":
            "kubekv: sign-method ES256 needs a secp256r1 key",
        f"priv-key={rsa_keys / 'pkcs1.key'},sign-method=EdDSA": "auth: invalid auth signature",
    }
    for opts, message in cases.items():
        with pytest.raises(TokenConfigError, match=message):
            provider_from_flags("jwt," + opts, 300)
    # etcd's key-pair check, sic: a public key counts as a mismatch only if its modulus
    # and its exponent both differ; with the same exponent the private key wins
    for exponent, refused in ((65537, False), (3, True)):
        other = rsa.generate_private_key(public_exponent=exponent, key_size=2048)
        (tmp_path / "other.pem").write_bytes(other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        opts = (f"jwt,priv-key={rsa_keys / 'pkcs1.key'},pub-key={tmp_path / 'other.pem'},"
                "sign-method=RS256")
        if refused:
            with pytest.raises(TokenConfigError, match="don't match"):
                provider_from_flags(opts, 300)
        else:
            t = provider_from_flags(opts, 300)
            assert t.info(t.assign("u", 1), 1) == ("u", 1)


def _b64json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_jwt_round_trip_and_expiry(rsa_keys):
    now = [1_000_000.0]
    opts = (f"jwt,pub-key={rsa_keys / 'cert.pem'},priv-key={rsa_keys / 'pkcs8.key'},"
            "sign-method=RS256,ttl=1s")
    t = provider_from_flags(opts, 300)
    assert isinstance(t, JWTTokens)
    t.clock = lambda: now[0]
    tok = t.assign("alice", 5)
    head, body, _ = tok.split(".")
    assert _b64json(head) == {"alg": "RS256", "typ": "JWT"}
    assert _b64json(body) == {"exp": 1_000_001, "revision": 5, "username": "alice"}
    assert t.info(tok, 9) == ("alice", 5)  # the token's own revision, not the store's
    now[0] += 1.9
    assert t.info(tok, 9) == ("alice", 5)  # valid while int(now) <= exp, as jwt-go
    now[0] += 0.1
    assert t.info(tok, 9) is None
    # tampering with the claims breaks the signature
    now[0] -= 2
    forged = body.replace(body[:4], "eyJl")  # unchanged prefix keeps it decodable
    assert t.info(f"{head}.{forged}.{tok.split('.')[2][::-1]}", 9) is None
    # a verify-only member (public key only) accepts tokens but cannot sign
    v = provider_from_flags(f"jwt,pub-key={rsa_keys / 'pub.pem'},sign-method=RS256", 300)
    v.clock = t.clock
    assert v.info(tok, 9) == ("alice", 5)
    with pytest.raises(Exception, match="verify-only"):
        v.assign("alice", 5)


def test_jwt_hmac_and_bad_options(tmp_path):
    (tmp_path / "secret").write_bytes(b"s3cret")
    t = provider_from_flags(f"jwt,priv-key={tmp_path / 'secret'},sign-method=HS256", 300)
    assert t.info(t.assign("u", 2), 3) == ("u", 2)
    for bad in ("jwt,sign-method=RS256", "jwt,sign-method=XX1,priv-key=x", "nope",
                "jwt,ttl", "simple,a=1,a=2"):
        with pytest.raises(TokenConfigError):
            provider_from_flags(bad, 300)
