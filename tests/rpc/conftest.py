"""Fixtures shared by the RPC server's tests."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture
def loop():
    """A fresh event loop the test drives itself (run_until_complete), closed after."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
