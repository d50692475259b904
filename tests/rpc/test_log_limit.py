"""RateLimitedLog: one line per client and event per interval, the rest counted."""

from __future__ import annotations

import logging

from kubekv_server.log_limit import RateLimitedLog, client_key, short_error


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_client_and_event_per_interval(caplog):
    caplog.set_level(logging.INFO, logger="t")
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t"), interval=60, clock=clock)
    assert limited.info("10.0.0.1", "bad_frame", "type=%d", 3)
    assert not limited.info("10.0.0.1", "bad_frame", "type=%d", 4)
    assert limited.info("10.0.0.1", "other_event")
    assert limited.info("10.0.0.2", "bad_frame")
    clock.now = 61
    assert limited.info("10.0.0.1", "bad_frame", "again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["event=bad_frame peer=10.0.0.1 type=3", "event=other_event peer=10.0.0.1",
                     "event=bad_frame peer=10.0.0.2",
                     "event=bad_frame peer=10.0.0.1 again suppressed=1"]


def test_the_table_of_clients_is_bounded():
    limited = RateLimitedLog(logging.getLogger("t"), max_clients=10)
    for i in range(1000):
        limited.info(f"10.0.{i // 256}.{i % 256}", "e")
    assert len(limited._seen) == 10


def test_tracebacks_are_rate_limited_too(caplog):
    caplog.set_level(logging.INFO, logger="t")
    limited = RateLimitedLog(logging.getLogger("t"))
    for _ in range(5):
        try:
            raise KeyError("x" * 10_000)
        except KeyError as exc:
            limited.error("c", "handler_failed", "error=%s", short_error(exc), exc_info=True)
    assert len(caplog.records) == 1 and caplog.records[0].exc_info
    assert len(caplog.records[0].getMessage()) < 300  # the client's 10 KB are not echoed


def test_client_key_is_the_address_without_port():
    assert client_key(("127.0.0.1", 5000)) == "127.0.0.1"
    assert client_key(None) == "?"
