"""What the benchmarks share: their command line's common start, and the machine line every result carries."""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from vaeforge.train.distributed import native_bf16

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides a CPU's fp32 and bf16 kernels


def recipe_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line, with ``--data`` (prepared shards) and ``--recipe``: the
    arguments every benchmark of one recipe on prepared LFW shards takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipe", default="lfw_unet")
    return parser


def machine() -> str:
    """The CPU model, which of :data:`ISA_FLAGS` it has (``/proc/cpuinfo``, as ``lscpu`` shows them), the kernels
    PyTorch uses and whether bf16 is native there: figures mean little without it (an AVX2-only CPU trains fp32)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    has = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ISA_FLAGS)
    return (f"{model}; flags: {has}; torch kernels {torch.backends.cpu.get_cpu_capability()}, "
            f"native bf16 {'yes' if native_bf16() else 'no'}")
