"""etcd's health endpoints: `/health` (etcd 3.5) and `/livez`, `/readyz` (etcd ≥ 3.5.11).

What a probe sees is etcd 3.5.17's `server/etcdserver/api/etcdhttp/health.go`:

- `/health` runs, in order: the alarm check (every active alarm not named by an
  `?exclude=` value fails it: "ALARM NOSPACE", "ALARM CORRUPT"), the leader check
  ("RAFT NO LEADER", skipped with `?serializable=true`) and a one-key keys-only Range
  (linearizable unless `?serializable=true`; "RANGE ERROR:<error>"). Healthy: 200 with
  `{"health":"true"}`; else 503 with `{"health":"false"}` and a newline (Go's
  `http.Error`), the reason only in the log: etcd 3.4's bodies, which etcd's e2e suite
  checks (3.5 adds `"reason"`). Go sniffs the success body as text/plain, so both are
  text/plain.
- `/livez` runs `serializable_read`; `/readyz` runs `data_corruption` (no CORRUPT alarm),
  `serializable_read` and `linearizable_read`. Each check also has a path of its own
  (`/readyz/linearizable_read`). `?exclude=<name>` (repeatable) skips a check; names of no
  check are ignored (etcd logs a warning and still answers). Success: 200 `ok\\n`, with
  `?verbose` the `[+]<name> ok` lines first. Failure: 503 with every line (`[+]<name> ok`
  or `[-]<name> failed: <error>`) and Go's `http.Error` newline, whatever `?verbose` says.
- Any method but GET: 405 "Method Not Allowed" with `Allow: GET`.

etcd runs its checks in Go map order, which is random; kubekv runs them in registration
order (the order above), one of the orders etcd may print. Reads bypass authentication,
as etcd's do through `AuthStore().WithRoot`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server import errors
from kubekv_server.log_limit import RateLimitedLog

log = logging.getLogger("kubekv.health")
_limited = RateLimitedLog(log)

TEXT = "text/plain; charset=utf-8"
NOSNIFF = ("X-Content-Type-Options", "nosniff")
# Query strings longer than this are not parsed for health flags (a probe's is a few
# dozen bytes; the HTTP layers already bound the whole request head).
MAX_QUERY = 4096
# `?exclude=` values kept per request: etcd has 3 checks and 2 alarm names to exclude.
MAX_EXCLUDES = 64

Answer = tuple[int, str | None, bytes, list[tuple[str, str]]]
Check = Callable[[], Awaitable[None]]


class CheckFailed(Exception):
    """A check's failure, with the text etcd prints after `failed: `."""


def go_json(obj: dict) -> bytes:
    """JSON as Go's encoding/json writes it: compact, UTF-8, with <, > and & escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()


def go_error(status: int, text: str, extra: list[tuple[str, str]] | None = None) -> Answer:
    """Go's http.Error: text/plain, nosniff, the text and a newline."""
    return status, TEXT, (text + "\n").encode(), [NOSNIFF, *(extra or [])]


def _query(target: str) -> dict[str, list[str]]:
    query = urllib.parse.urlsplit(target).query
    if len(query) > MAX_QUERY:
        query = query[:MAX_QUERY]
    return urllib.parse.parse_qs(query, keep_blank_values=True)


def _excluded(query: dict[str, list[str]]) -> set[str]:
    """etcd's getQuerySet: every non-empty `exclude` value."""
    return {v for v in query.get("exclude", [])[:MAX_EXCLUDES] if v}


class HealthEndpoints:
    """The three endpoints for one member; `answer` returns None for other paths."""

    def __init__(self, member, request_timeout: float) -> None:
        self.member = member
        self.request_timeout = request_timeout
        # etcd registers these in this order; its map iteration then shuffles them
        self.checks: dict[str, dict[str, Check]] = {
            "livez": {"serializable_read": self._serializable_read},
            "readyz": {
                "data_corruption": self._no_corruption,
                "serializable_read": self._serializable_read,
                "linearizable_read": self._linearizable_read,
            },
        }

    def handles(self, path: str) -> bool:
        if path == "/health":
            return True
        kind, _, check = path[1:].partition("/")
        checks = self.checks.get(kind)
        return checks is not None and (path == "/" + kind or check in checks)

    async def answer(self, method: str, target: str) -> Answer | None:
        path = urllib.parse.urlsplit(target).path
        if not self.handles(path):
            return None
        if method != "GET":
            return go_error(HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed", [("Allow", "GET")])
        query = _query(target)
        if path == "/health":
            return await self._health(query)
        kind, _, one = path[1:].partition("/")
        registered = self.checks[kind]
        if one:
            names = [one]
        else:
            excluded = _excluded(query)
            names = [n for n in registered if n not in excluded]
            unknown = excluded - set(registered)
            if unknown:  # etcd: "for version compatibility" an unknown name does not fail
                _limited.warning("*", "health_unknown_exclude",
                                 'msg="some health checks cannot be excluded" '
                                 "missing-health-checks=%s",
                                 ",".join(json.dumps(n) for n in sorted(unknown)[:8]))
        lines, failed = [], False
        for name in names:
            try:
                await registered[name]()
                lines.append(f"[+]{name} ok\n")
            except CheckFailed as exc:
                failed = True
                lines.append(f"[-]{name} failed: {exc}\n")
        reason = "".join(lines)
        if failed:
            _limited.error("*", "health_check_failed", 'msg="Health check error" path=%s '
                           "reason=%r status-code=503", path, reason)
            return go_error(HTTPStatus.SERVICE_UNAVAILABLE, reason)
        body = (reason if "verbose" in query else "") + "ok\n"
        return HTTPStatus.OK, TEXT, body.encode(), [NOSNIFF]

    # ------------------------------------------------------------- /health

    async def _health(self, query: dict[str, list[str]]) -> Answer:
        excluded = {v for v in query.get("exclude", [])[:MAX_EXCLUDES] if v}
        # Go's URL.Query().Get: the first value
        serializable = query.get("serializable", [""])[0] == "true"
        reason = self._alarm_reason(excluded)
        if not reason and not serializable and self.member.node.leader_id == 0:
            reason = "RAFT NO LEADER"
        if not reason:
            try:
                await self._read(serializable, self.request_timeout)
            except CheckFailed as exc:
                reason = f"RANGE ERROR:{exc}"
        # The bodies are etcd 3.4's, without 3.5's "reason" field: etcd's e2e suite (3.4.23's
        # TestCtlV3Alarm, our yardstick) looks for `{"health":"false"}`, which 3.5's body
        # does not contain. Status codes, content type and the reason in the log are 3.5's.
        if reason:
            body = go_json({"health": "false"})
            _limited.warning("*", "health_false", 'msg="/health error" output=%s '
                             "status-code=503", go_json({"health": "false", "reason": reason})
                             .decode())
            return go_error(HTTPStatus.SERVICE_UNAVAILABLE, body.decode())
        # Go's WriteHeader/Write without a Content-Type: it sniffs text/plain
        return HTTPStatus.OK, TEXT, go_json({"health": "true"}), []

    def _alarm_reason(self, excluded: set[str]) -> str:
        for alarm in self.member.alarms():
            name = pb.AlarmType.Name(alarm.alarm) if alarm.alarm in pb.AlarmType.values() \
                else str(alarm.alarm)
            if name in excluded:
                continue
            return {pb.NOSPACE: "ALARM NOSPACE", pb.CORRUPT: "ALARM CORRUPT"}.get(
                alarm.alarm, "ALARM UNKNOWN")
        return ""

    # -------------------------------------------------------------- checks

    async def _read(self, serializable: bool, timeout: float | None) -> None:
        """etcd's Range{KeysOnly, Limit 1} as root: linearizable ones wait for a read index."""
        member = self.member
        try:
            if not serializable:
                barrier = member.read_barrier()
                if barrier is not None:
                    await asyncio.wait_for(asyncio.shield(barrier), timeout)
            member.range(pb.RangeRequest(key=b"\0", keys_only=True, limit=1,
                                         serializable=serializable))
        except errors.EtcdError as exc:
            raise CheckFailed(exc.message) from None
        except asyncio.TimeoutError:
            # etcd's context deadline on the Range: its error text
            raise CheckFailed("context deadline exceeded") from None

    async def _serializable_read(self) -> None:
        await self._read(True, None)

    async def _linearizable_read(self) -> None:
        # etcd's readyz Range has no deadline of its own: its read-index loop gives up
        # after the request timeout with "etcdserver: request timed out", as ours does
        await self._read(False, None)

    async def _no_corruption(self) -> None:
        if any(a.alarm == pb.CORRUPT for a in self.member.alarms()):
            raise CheckFailed("alarm activated: CORRUPT")
