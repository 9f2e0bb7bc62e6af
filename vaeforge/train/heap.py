"""Process memory settings for the training loop: what the garbage collector walks, what malloc gives back.

Both remove per-step costs a hand-written loop pays without seeing them: full garbage collections over the
set-up's objects, and page faults from memory that glibc returns to the kernel after each step and maps again
(and has zeroed) in the next.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import platform

# glibc's mallopt parameters (malloc.h) and the ceiling it accepts for the mmap threshold on 64-bit systems
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


@contextlib.contextmanager
def frozen_heap():
    """Exempt every object alive now from the garbage collector's full passes while the block runs.

    After set-up a training process holds hundreds of thousands of long-lived Python objects (torch, accelerate,
    plugins). The autograd's per-step allocations trigger full collections that walk all of them, a noticeable
    share of training time; frozen, they are skipped. Loader workers forked inside the block inherit the frozen
    heap, so their collections skip it too (and do not copy its pages).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def retain_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of returning it to the kernel; False where not glibc.

    By default glibc serves blocks above an adaptive threshold (128 KiB at first) with their own mappings and
    trims the top of the heap once more than twice that is free. A training step frees and reallocates the same
    activation buffers every step, so each step can map, fault in and zero thousands of fresh pages (how many
    varies from process to process with the heap's history). With blocks up to 32 MiB served from the heap and no
    trimming, the buffers are reused and a step hardly faults (docs/benchmarks.md#measurements-behind-the-code).
    The cost is that the process keeps its peak heap, which a training loop reaches in its first step anyway.
    The setting lasts for the process (and loader workers forked from it).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
