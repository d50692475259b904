"""Holding the raft log's rewrite (kubekv_raft/driver/wal_storage.py) at its first sync,
so a test can write to the log while the rewrite's file is being made."""

from __future__ import annotations

import threading
from collections.abc import Callable

from kubekv_raft.driver import wal_storage

REWRITE_THREAD = "kubekv-wal-rewrite"
GATE_SECONDS = 10.0  # a held rewrite goes on after this even if the test never opens it


def hold_rewrite_at_first_sync(monkeypatch,  # noqa: ANN001 - pytest's MonkeyPatch
                               after_sync: Callable[[int], None] | None = None,
                               ) -> tuple[threading.Event, threading.Event]:
    """Patch the fdatasync the log calls: the rewrite thread's first call sets `held`
    and waits for `gate`; every call then syncs and, with `after_sync`, reports its
    descriptor. Returns (gate, held)."""
    gate, held = threading.Event(), threading.Event()
    real_sync = wal_storage.os.fdatasync

    def sync(fd: int) -> None:
        if threading.current_thread().name == REWRITE_THREAD and not held.is_set():
            held.set()
            assert gate.wait(GATE_SECONDS)
        real_sync(fd)
        if after_sync is not None:
            after_sync(fd)

    monkeypatch.setattr(wal_storage.os, "fdatasync", sync)
    return gate, held
