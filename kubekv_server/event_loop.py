"""Run the server's coroutine on uvloop where it is installed, on asyncio's own loop otherwise.

uvloop (libuv, in C) runs the loop's own machinery (select, handles, timers, socket reads)
for less CPU than asyncio's pure-Python loop; docs/architecture.md ("One process, one
event loop") has the measurement. It is a Linux dependency (pyproject.toml); a platform
without it runs the same code on asyncio, said once in the log at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("kubekv.event_loop")

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on a uvloop loop, or on asyncio's if uvloop cannot be imported."""
    try:
        import uvloop
    except ImportError as exc:
        log.info('event=event_loop loop=asyncio msg="uvloop is not importable: %s"', exc)
        return asyncio.run(main)
    return uvloop.run(main)
