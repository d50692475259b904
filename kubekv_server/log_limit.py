"""Logging that a client cannot turn into a flood: one line per client and event per interval.

A protocol violation is worth one line in the log, but a hostile client can commit
thousands a second; `RateLimitedLog` lets the first through and swallows the rest
from the same client until the interval has passed (the count of swallowed lines is
reported with the next line that gets through).
"""

from __future__ import annotations

import collections
import logging
import time

# How often one client may put the same event in the log.
LOG_INTERVAL = 60.0
# Clients remembered at once; the oldest is forgotten first (a client that changes its
# source port or address cannot grow this table).
MAX_TRACKED_CLIENTS = 4096


# The most of an exception's text (which may quote client input) put in a log line.
MAX_LOGGED_ERROR = 200


def short_error(exc: BaseException) -> str:
    """An exception's repr, cut to MAX_LOGGED_ERROR characters."""
    text = repr(exc)
    return text if len(text) <= MAX_LOGGED_ERROR else text[:MAX_LOGGED_ERROR] + "..."


def client_key(peername) -> str:
    """The client a connection belongs to for rate limiting: its address without the port."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return str(peername or "?")


class RateLimitedLog:
    """A logger wrapper that emits each (client, event) at most once per `interval`."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL,
                 max_clients: int = MAX_TRACKED_CLIENTS, clock=time.monotonic) -> None:
        self._log = logger
        self._interval = interval
        self._max = max_clients
        self._clock = clock
        # (client, event) -> [time of the last line, lines swallowed since]
        self._seen: collections.OrderedDict[tuple[str, str], list] = collections.OrderedDict()

    def log(self, level: int, client: str, event: str, fmt: str = "", *args,
            exc_info=None) -> bool:
        """Log `event=<event> peer=<client> <fmt % args>` unless this client logged the same
        event less than `interval` ago. Returns whether the line was written."""
        key = (client, event)
        now = self._clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return False
        suppressed = entry[1] if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        if not self._log.isEnabledFor(level):
            return True
        text = f"event={event} peer={client}"
        if fmt:
            text += " " + (fmt % args if args else fmt)
        if suppressed:
            text += f" suppressed={suppressed}"
        self._log.log(level, text, exc_info=exc_info)
        return True

    def error(self, client: str, event: str, fmt: str = "", *args, exc_info=None) -> bool:
        return self.log(logging.ERROR, client, event, fmt, *args, exc_info=exc_info)

    def info(self, client: str, event: str, fmt: str = "", *args) -> bool:
        return self.log(logging.INFO, client, event, fmt, *args)

    def warning(self, client: str, event: str, fmt: str = "", *args) -> bool:
        return self.log(logging.WARNING, client, event, fmt, *args)
