"""The thread that runs the hub's catch-up (etcd's syncWatchersLoop), woken by the hub."""

from __future__ import annotations

import logging
import threading

from kubekv_server.watch.hub import WatchHub

log = logging.getLogger("kubekv.watch")


class SyncThread:
    """Runs the hub's catch-up whenever it is woken (etcd's syncWatchersLoop)."""

    def __init__(self, hub: WatchHub, idle_check: float = 0.1) -> None:
        self.hub = hub
        self.idle_check = idle_check
        self._event = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="kubekv-watch-sync", daemon=True)
        hub.wakeup = self._event.set

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._event.set()
        self._thread.join(5)

    def _run(self) -> None:
        ready = 0
        while not self._stopped:
            if not ready:
                self._event.wait(self.idle_check)
                self._event.clear()
            try:
                ready = self.hub.sync_once()
            except Exception:
                log.exception("event=watch_sync_failed")
                ready = 0
