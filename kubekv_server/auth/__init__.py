"""etcd's authentication and role-based access control (see store.py, gate.py, tokens.py)."""

from __future__ import annotations

from kubekv_server.auth.store import EMPTY, AuthInfo, AuthStore
from kubekv_server.auth.tokens import TokenConfigError, provider_from_flags


def token_provider(cfg):
    """The token provider for --auth-token / --auth-token-ttl; a bad option stops the server
    at start, as etcd does."""
    try:
        return provider_from_flags(cfg.auth_token, cfg.auth_token_ttl)
    except TokenConfigError as exc:
        raise SystemExit(f"kubekv: failed to create token provider: {exc}") from None


__all__ = ["EMPTY", "AuthInfo", "AuthStore", "token_provider"]
