"""Defragmentation: rewrite the state db compacted and move every store onto the copy.

The copy is made while nothing writes (the caller runs it in the apply thread) and
with the compactor paused. Readers still inside the old environment finish there;
it is closed and removed a minute later.
"""

from __future__ import annotations

import logging
import shutil
import threading

import lmdb

from kubekv_server.auth import AuthStore
from kubekv_server.backend.state_db import Backend
from kubekv_server.lease import LeaseStore
from kubekv_server.mvcc import MVCCStore
from kubekv_server.mvcc.compactor import Compactor

log = logging.getLogger("kubekv.member")

# Seconds a replaced (defragmented) state environment stays open for readers inside it.
RETIRE_AFTER = 60.0


def defragment(backend: Backend, mvcc: MVCCStore, leases: LeaseStore, auth: AuthStore,
               compactor: Compactor) -> int:
    """Apply thread only: defragment the state db; returns its new size in bytes."""
    # commit the apply txn first: the copy must hold it, and a compactor slice waiting
    # for LMDB's writer lock would otherwise never give back the pause lock
    backend.commit()
    with compactor.paused():
        before = backend.size_bytes()
        old_env, old_dir = backend.defragment()
        mvcc.rebind(backend.env)
        leases.rebind(backend)
        auth.rebind(backend)
        after = backend.size_bytes()
    log.info("event=defragmented size_before=%d size_after=%d dir=%s",
             before, after, backend.path)
    timer = threading.Timer(RETIRE_AFTER, _retire, args=(old_env, old_dir))
    timer.daemon = True
    timer.start()
    return after


def _retire(env: lmdb.Environment, directory: str) -> None:
    """Close and remove a state environment replaced by a defragmentation."""
    try:
        env.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
