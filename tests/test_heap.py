"""The training loop's process memory settings: the set-up's objects are exempt from full garbage collections only
while the loop runs; memory a step frees is reused by the next without page faults."""
from __future__ import annotations

import gc
import platform
import subprocess
import sys

import pytest

from vaeforge.train.heap import frozen_heap


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


# 64 MiB of 4 MiB blocks, written, freed and allocated again (through libc itself: torch's small allocations between
# the blocks would keep them from the top of the heap). glibc's default returns the freed top of the heap to the
# kernel, so every round faults in (and zeroes) all 16k pages anew; retained, later rounds reuse them.
REALLOCATE = """
import ctypes, resource, sys
from vaeforge.train.heap import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 4 * 2**20
libc.free(libc.malloc(size))  # a mapped block, freed: raises glibc's adaptive threshold above 4 MiB
def round_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(16)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[round_faults() for _ in range(3)])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_retained_memory_is_reused_without_page_faults():
    def later_rounds_faults(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", REALLOCATE, mode], capture_output=True, text=True, check=True)
        return [int(n) for n in out.stdout.split()[1:]]

    assert min(later_rounds_faults("default")) > 15000  # all 16,384 pages mapped again in every round
    assert max(later_rounds_faults("retain")) < 100
