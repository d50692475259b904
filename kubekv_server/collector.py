"""Python's garbage collector in a long-running member: what start-up made is not rescanned.

A full collection visits every container object the process holds, with the GIL held,
so every thread (the event loop, the log and apply stages) stops for it. A member holds
~50,000 objects from start-up (modules, functions, types, generated protobuf classes)
that live as long as the process; a full pass over them and the log's cached entries
took 30–57 ms at 64 Puts in flight (`bench/profile_server.md`, "Stalls that stopped
every write").
`gc.freeze()` moves what exists once the member is up into the permanent generation,
which collections skip (CPython's advice for servers that build their state first).
Objects made later are collected as before; a frozen object still goes when its last
reference does, only a cycle among frozen objects stays.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Exclude every object that exists now from later collections; returns how many."""
    gc.collect()  # start-up's garbage goes first, so it is not kept frozen
    gc.freeze()
    n = gc.get_freeze_count()
    log.info("event=gc_frozen objects=%d", n)
    return n
