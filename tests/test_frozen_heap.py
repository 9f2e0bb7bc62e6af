"""The training loop runs with the set-up's objects exempt from full garbage collections, and only while it runs."""
from __future__ import annotations

import gc

from vaeforge.train.engine import frozen_heap


def test_objects_alive_at_entry_are_frozen_inside_and_released_after():
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before + 1000  # every object alive at entry
        garbage = [[]]
        garbage[0].append(garbage)  # a cycle made inside the block is still collected
        del garbage
        assert gc.collect() >= 2
    assert gc.get_freeze_count() == 0


def test_unfreezes_when_the_loop_raises():
    try:
        with frozen_heap():
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
