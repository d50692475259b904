"""Removes compacted MVCC history in small slices on a thread of its own.

A Compact request only records the new compaction revision (reads below it fail
at once); the rows it makes obsolete are deleted here, a slice per write
transaction, so applying new entries never waits for a large compaction.
"""

from __future__ import annotations

import logging
import threading

from kubekv_server.backend.state_db import Backend
from kubekv_server.mvcc import MVCCStore

log = logging.getLogger("kubekv.compactor")

SLICE_ROWS = 1000


class Compactor:
    """Background physical compaction; `kick()` after a compaction is applied."""

    def __init__(self, backend: Backend, mvcc: MVCCStore) -> None:
        self.backend = backend
        self.mvcc = mvcc
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopped = False
        self._slice_lock = threading.Lock()  # held per slice; `paused()` holds it too
        self._thread = threading.Thread(target=self._run, name="kubekv-compactor", daemon=True)

    def start(self) -> None:
        self._wake.set()  # finish work left from before a restart
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(30)

    def paused(self) -> threading.Lock:
        """A context in which no compaction slice runs (for a defragmentation)."""
        return self._slice_lock

    def kick(self) -> None:
        """A compaction was scheduled: start removing its rows."""
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no compaction work is left (etcd's physical compaction)."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            more = True
            while more and not self._stopped:
                try:
                    with self._slice_lock, self.backend.env.begin(write=True) as txn:
                        more = self.mvcc.compact_step(txn, SLICE_ROWS)
                except Exception:
                    log.exception("event=compaction_slice_failed")
                    more = False
            if not self._wake.is_set():
                self._idle.set()
