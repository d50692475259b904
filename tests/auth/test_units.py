"""Unit tests of auth's pure parts: range permissions, password hashes, tokens, RS256."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest

from etcdproto.authpb import auth_pb2
from kubekv_server.auth import password, perms
from kubekv_server.auth.rsa import load_private_key, load_public_key
from kubekv_server.auth.tokens import (
    JWTTokens,
    SimpleTokens,
    TokenConfigError,
    provider_from_flags,
)

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
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("keys")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("genrsa", "-traditional", "-out", str(d / "pkcs1.key"), "2048")
    run("pkcs8", "-topk8", "-nocrypt", "-in", str(d / "pkcs1.key"), "-out", str(d / "pkcs8.key"))
    run("req", "-new", "-x509", "-key", str(d / "pkcs1.key"), "-out", str(d / "cert.pem"),
        "-days", "1", "-subj", "/CN=kubekv-test")
    run("rsa", "-in", str(d / "pkcs1.key"), "-pubout", "-out", str(d / "pub.pem"))
    return d


def test_rsa_keys_parse_and_match(rsa_keys):
    k1 = load_private_key((rsa_keys / "pkcs1.key").read_bytes())
    k8 = load_private_key((rsa_keys / "pkcs8.key").read_bytes())
    assert k1 == k8
    assert k1.n.bit_length() == 2048 and k1.e == 65537
    assert k1.p * k1.q == k1.n
    assert load_public_key((rsa_keys / "cert.pem").read_bytes()) == k1.public
    assert load_public_key((rsa_keys / "pub.pem").read_bytes()) == k1.public


def test_rs256_signature_matches_openssl(rsa_keys, tmp_path):
    key = load_private_key((rsa_keys / "pkcs1.key").read_bytes())
    msg = b"header.claims"
    sig = key.sign(msg)
    assert key.public.verify(msg, sig)
    assert not key.public.verify(msg + b"x", sig)
    (tmp_path / "m").write_bytes(msg)
    out = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(rsa_keys / "pkcs1.key"),
                          str(tmp_path / "m")], check=True, capture_output=True).stdout
    assert sig == out  # PKCS#1 v1.5 is deterministic: byte-identical to OpenSSL
    (tmp_path / "s").write_bytes(sig)
    ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(rsa_keys / "pub.pem"),
                         "-signature", str(tmp_path / "s"), str(tmp_path / "m")],
                        capture_output=True, text=True)
    assert "Verified OK" in ok.stdout


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
