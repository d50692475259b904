"""etcd's automatic history compaction (``--auto-compaction-mode``/``-retention``).

Two schedules, pure functions of the times and revisions fed to them (etcd's
``v3compactor``), and a thread that drives the active one on the leader:

- *periodic*: keep ``retention`` of history. The current revision is sampled every
  tenth of the period (of an hour at most); once a period has passed since the start,
  and then every period (every hour at most) after a success, the revision sampled one
  period ago is compacted.
- *revision*: every 5 minutes, compact ``current - retention`` unless that is <= 0 or
  was already compacted.

A compaction goes through Raft like a client's CompactionRequest (not physical);
"already compacted" counts as success, as in etcd.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kubekv_server import errors

log = logging.getLogger("kubekv.compactor")

HOUR = 3600.0
# etcd's revInterval (seconds); a test may shorten it (config/tuning.py).
REVISION_INTERVAL = 300.0


class PeriodicSchedule:
    """etcd's Periodic compactor as a state machine: ``tick(now, rev)`` every
    ``retry_interval`` seconds returns the revision to compact now, or None."""

    def __init__(self, period: float, start: float) -> None:
        self.period = period
        self.compact_interval = min(period, HOUR)
        self.retry_interval = self.compact_interval / 10
        self.retentions = int(period / self.retry_interval) + 1
        self.revs: list[int] = []
        self.last_success = start
        self.base_interval = period

    def sample(self, rev: int) -> None:
        """Record the current revision (etcd samples even while paused)."""
        self.revs.append(rev)
        if len(self.revs) > self.retentions:
            del self.revs[0]  # revs[0] is the revision of one period ago

    def due(self, now: float) -> int | None:
        """After a retry interval (not paused): the revision to compact, if it is time."""
        if now - self.last_success < self.base_interval or not self.revs:
            return None
        self.base_interval = self.compact_interval
        return self.revs[0]

    def succeeded(self, now: float) -> None:
        self.last_success = now


class RevisionSchedule:
    """etcd's Revision compactor: every ``interval`` seconds, ``current - retention``."""

    def __init__(self, retention: int, interval: float = REVISION_INTERVAL) -> None:
        self.retention = retention
        self.interval = interval
        self.prev = 0

    def due(self, current: int) -> int | None:
        rev = current - self.retention
        if rev <= 0 or rev == self.prev:
            return None
        return rev

    def succeeded(self, rev: int) -> None:
        self.prev = rev


class AutoCompactor:
    """Runs a schedule in a daemon thread; compacts only while ``is_leader()``."""

    def __init__(
        self,
        mode: str,
        retention: float,
        current_revision: Callable[[], int],
        compact: Callable[[int], object],
        is_leader: Callable[[], bool],
        stopping: threading.Event,
        revision_interval: float = REVISION_INTERVAL,
    ) -> None:
        self.mode = mode
        self.revision_interval = revision_interval
        self.retention = retention
        self._rev = current_revision
        self._compact = compact
        self._is_leader = is_leader
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name="kubekv-auto-compaction",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        if self.mode == "periodic":
            self._run_periodic()
        else:
            self._run_revision()

    def _run_periodic(self) -> None:
        s = PeriodicSchedule(self.retention, time.monotonic())
        period = _go_duration(self.retention)
        while True:
            s.sample(self._rev())
            if self._stopping.wait(s.retry_interval):
                return
            if not self._is_leader():
                continue
            rev = s.due(time.monotonic())
            if rev is None:
                continue
            log.info('msg="starting auto periodic compaction" revision=%d compact-period=%s',
                     rev, period)
            started = s.last_success
            if self._try(rev):
                log.info('msg="completed auto periodic compaction" revision=%d '
                         "compact-period=%s took=%s", rev, period,
                         _go_duration(time.monotonic() - started))
                s.succeeded(time.monotonic())
            else:
                log.warning('msg="failed auto periodic compaction" revision=%d '
                            "compact-period=%s retry-interval=%s", rev, period,
                            _go_duration(s.retry_interval))

    def _run_revision(self) -> None:
        s = RevisionSchedule(int(self.retention), self.revision_interval)
        while not self._stopping.wait(s.interval):
            if not self._is_leader():
                continue
            rev = s.due(self._rev())
            if rev is None:
                continue
            log.info('msg="starting auto revision compaction" revision=%d '
                     "revision-compaction-retention=%d", rev, s.retention)
            started = time.monotonic()
            if self._try(rev):
                s.succeeded(rev)
                log.info('msg="completed auto revision compaction" revision=%d '
                         "revision-compaction-retention=%d took=%s", rev, s.retention,
                         _go_duration(time.monotonic() - started))
            else:
                log.warning('msg="failed auto revision compaction" revision=%d '
                            "revision-compaction-retention=%d retry-interval=%s", rev,
                            s.retention, _go_duration(s.interval))

    def _try(self, rev: int) -> bool:
        try:
            self._compact(rev)
        except errors.EtcdError as exc:
            if exc.message == errors.COMPACTED.message:
                return True
            log.warning('msg="auto compaction request failed" revision=%d error="%s"',
                        rev, exc.message)
            return False
        except Exception as exc:  # noqa: BLE001 - a failed attempt is retried, never fatal
            log.warning('msg="auto compaction request failed" revision=%d error="%s"',
                        rev, exc)
            return False
        return True


def _go_duration(seconds: float) -> str:
    """A short Go-style duration ("1h0m0s", "10m0s", "1.5s", "250ms")."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{int(h)}h{int(m)}m{s:g}s"
    if m:
        return f"{int(m)}m{s:g}s"
    return f"{s:g}s"
