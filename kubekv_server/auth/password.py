"""Password hashes kept in the auth store (etcd keeps bcrypt hashes; we use the standard library).

Format: ``pbkdf2_sha256$<iterations>$<salt, base64>$<hash, base64>``, PBKDF2-HMAC-SHA256
with a random 16-byte salt. 100,000 iterations cost about 55 ms on this project's
machines, close to etcd's default bcrypt cost 10; the count is stored with each
hash, so raising it later keeps old hashes valid. hashlib releases the GIL while
hashing, and hashing runs on worker threads (the API layer), never in the
apply path: only the hash is logged, as etcd 3.5 does (hashedPassword).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os

log = logging.getLogger("kubekv.auth")

ITERATIONS = 100_000
_SCHEME = "pbkdf2_sha256"


MIN_COST, DEFAULT_COST, MAX_COST = 4, 10, 31  # bcrypt's bounds for --bcrypt-cost


def iterations_for_cost(cost: int) -> int:
    """PBKDF2 iterations standing for a bcrypt cost: each step doubles the work, as in
    bcrypt, with cost 10 at ``ITERATIONS``. etcd uses the default for a cost outside
    bcrypt's bounds (the caller logs that)."""
    if not MIN_COST <= cost <= MAX_COST:
        cost = DEFAULT_COST
    return max(1, round(ITERATIONS * 2.0 ** (cost - DEFAULT_COST)))


def iterations_for_flag(text: str) -> int:
    """--bcrypt-cost as PBKDF2 work; an invalid cost is logged and the default used (etcd)."""
    try:
        cost = int(text, 0)
    except ValueError:
        cost = -1
    if not MIN_COST <= cost <= MAX_COST:
        log.warning('msg="use default bcrypt cost instead of the invalid given cost" '
                    "min-cost=%d max-cost=%d default-cost=%d given-cost=%s", MIN_COST,
                    MAX_COST, DEFAULT_COST, text)
    return iterations_for_cost(cost)


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join((_SCHEME, str(iterations), base64.b64encode(salt).decode(),
                     base64.b64encode(dk).decode()))


def check_password(stored: bytes | str, password: str) -> bool:
    """Whether password matches a stored hash (constant-time comparison)."""
    if isinstance(stored, bytes):
        stored = stored.decode("ascii", "replace")
    try:
        scheme, iterations, salt, want = stored.split("$")
        if scheme != _SCHEME:
            return False
        dk = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt),
                                 int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(dk, base64.b64decode(want))
