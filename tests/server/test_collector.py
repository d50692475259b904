"""Start-up's objects leave the collector's passes; what is made later is still collected."""

from __future__ import annotations

import gc
import weakref

from kubekv_server import collector


class _Node:
    pass


def test_frozen_start_up_objects_and_later_cycles_still_collected():
    try:
        n = collector.freeze_startup_objects()
        assert n == gc.get_freeze_count() > 1000  # this test process's modules and more
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle made after the freeze
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
        assert gc.get_freeze_count() == n  # a collection does not thaw or add to them
    finally:
        gc.unfreeze()
