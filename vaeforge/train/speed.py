"""How a run's modules compute: the channels-last memory format and ``torch.compile`` (``trainer.channels_last``,
``trainer.compile``), resolved for the device, the precision and the run's length, and applied to the model's
backbone, every loss term and every owned module.

Both leave the weights' names alone: channels-last only changes how a 4-D tensor is laid out in memory (the
checkpoint writer stores contiguous copies), and ``nn.Module.compile()`` compiles a module's forward in place
(no ``_orig_mod.`` wrapper). So checkpoints, the EMA, resume and ``vaeforge.load`` see the plain model.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..config.fields import switch_value
from ..config.schema import TrainerConfig
from ..errors import ConfigError
from .builders import Owned, TrainModule
from .distributed import native_bf16

# What `auto` picks for lfw_unet, by device kind and precision: (channels_last, compile), from the interleaved
# measurements in docs/benchmarks.md ("Utilisation"; ratios of images/s to eager). A pair not listed gets neither.
AUTO: dict[tuple[str, str], tuple[bool, bool]] = {
    ("cpu", "no"): (True, True),  # AVX2-only EPYC, fp32: channels-last 1.13x, compiled 1.08x (issue 23)
    # AVX-512 BF16 / AMX Xeon, bf16: channels-last 1.06x, both 1.08x: compiling adds ~1.6%, which would take
    # hours to pay back its start-up
    ("cpu_bf16", "bf16"): (True, False),
    ("cpu_bf16", "no"): (True, True),  # the same Xeon in fp32: channels-last 1.05x, both 1.18x
    ("cuda", "bf16"): (True, True),  # not measured (no GPU): tensor-core convolutions are NHWC
    ("cuda", "fp16"): (True, True),
    ("cuda", "no"): (False, True),
}
# `auto` compiles only a run planned for at least this many optimizer steps (and, with a time limit, this many
# seconds): the run must pay back a compile with an empty cache. lfw_unet in fp32 on the 2-core Xeon: 90 s cold
# (5 s warm) against a gain of ~13% over channels-last alone: paid after ~90 * 1.13 / 0.13 = ~800 s of training
# (docs/benchmarks.md, "Utilisation").
COMPILE_MIN_STEPS = 10_000
COMPILE_MIN_SECONDS = 1200.0


@dataclass(frozen=True)
class Speed:
    """What a run computes with: channels-last tensors, and ``torch.compile`` in ``mode`` (None: eager)."""

    channels_last: bool = False
    compile_mode: str | None = None

    def describe(self) -> dict[str, object]:
        """For ``run.json``."""
        return {"channels_last": self.channels_last, "compile": self.compile_mode or "off"}


def device_kind() -> str:
    """``cuda``; ``cpu_bf16``, a CPU with native bf16 kernels (AVX-512 BF16, AMX, Arm bf16); or ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    return "cpu_bf16" if native_bf16() else "cpu"


def has_compiler() -> bool:
    """Whether inductor can build its CPU kernels here (it calls a C++ compiler); a GPU needs none."""
    return torch.cuda.is_available() or any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++")
                                            if c)


def planned_long(t: TrainerConfig) -> bool:
    """Whether the run is long enough for ``auto`` to compile (see COMPILE_MIN_STEPS)."""
    limits = [s for s in (t.max_time, t.time_budget) if s is not None]
    return t.max_steps >= COMPILE_MIN_STEPS and all(s >= COMPILE_MIN_SECONDS for s in limits)


def resolve(t: TrainerConfig, precision: str, zero_stage: int | None, kind: str | None = None) -> Speed:
    """The run's :class:`Speed` from ``trainer.channels_last`` / ``trainer.compile`` (``precision``: the
    resolved one; ``zero_stage``: None without DeepSpeed); ``on`` where it cannot work is refused in one line."""
    layout, compiled = switch_value(t.channels_last), switch_value(t.compile)
    if zero_stage is not None and layout == "on":
        raise ConfigError("trainer.channels_last=on is not supported under DeepSpeed (its engine broadcasts and "
                          "flattens the weights as contiguous buffers): use DDP (recipes/accelerate/ddp.yaml) or "
                          "trainer.channels_last=auto")
    if zero_stage == 3 and compiled == "on":
        raise ConfigError("trainer.compile=on is not supported under DeepSpeed ZeRO-3 (it gathers each layer's "
                          "weights in hooks around its forward): use ZeRO-2 (recipes/accelerate/zero2.yaml), DDP or "
                          "trainer.compile=auto")
    if compiled == "on" and not has_compiler():
        raise ConfigError("trainer.compile=on needs a C++ compiler on CPU (torch.compile builds its kernels with "
                          "one): install g++ or pass trainer.compile=off")
    auto_layout, auto_compile = AUTO.get((kind or device_kind(), precision), (False, False))
    channels_last = layout == "on" or (layout == "auto" and auto_layout and zero_stage is None)
    compile_ = compiled == "on" or (compiled == "auto" and auto_compile and zero_stage != 3 and planned_long(t)
                                    and has_compiler())
    return Speed(channels_last, t.compile_mode if compile_ else None)


def prepare_layout(module: TrainModule, owned: list[Owned], speed: Speed) -> None:
    """Channels-last weights for the model, its loss terms and owned modules (before the EMA copies the model,
    so that the copy is laid out alike)."""
    if not speed.channels_last:
        return
    for m in (module, *(o.module for o in owned)):
        for t in (*m.parameters(), *m.buffers()):
            # a 4-D tensor that is contiguous in both layouts (size-1 dimensions: a depthwise kernel, a [1, C, 1, 1]
            # shift) stays as it is: re-strided, it still counts as contiguous, and DDP's buffer broadcast then
            # copies it onto a view of itself with other strides, which PyTorch refuses
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                t.data = t.data.contiguous(memory_format=torch.channels_last)


def compile_modules(module: TrainModule, owned: list[Owned], speed: Speed) -> None:
    """Compile, in place, the VAE's forward (backbone, posterior, sampling: one graph, which measured faster than
    compiling the encoder and decoder apart), every loss term and every owned module. After the EMA copy: a copy
    of a compiled module would call the original's compiled forward."""
    if speed.compile_mode is None:
        return
    import torch._functorch.config as functorch_config  # the compiler's settings: loaded only when compiling
    import torch._inductor.config as inductor_config

    if module.losses.balanced:
        # a balanced term differentiates the model's graph before the step's backward (retain_graph=True), which a
        # compiled backward that reuses ("donates") its saved buffers refuses
        functorch_config.donated_buffer = False
    # the sampling noise from PyTorch's generator, as in eager (inductor's own RNG draws other numbers): a compiled
    # run sees the same noise as an eager one from the same seed
    inductor_config.fallback_random = True
    parts: list[nn.Module] = [module.vae, *module.losses.terms.values(), *(o.module for o in owned)]
    for part in parts:
        part.compile(mode=speed.compile_mode)


def laid_out(x: torch.Tensor, speed: Speed) -> torch.Tensor:
    """Image batch ``x`` in the run's memory format."""
    return x.contiguous(memory_format=torch.channels_last) if speed.channels_last and x.dim() == 4 else x


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Compiled modules run eagerly inside (validation, grids): other batch sizes, eval mode and no gradients
    would each compile them again, for a pass every few hundred steps."""
    with torch.compiler.set_stance("force_eager"):
        yield
