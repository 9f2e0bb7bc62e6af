"""The distributed setup of a run: the Accelerator the launch asked for, refused when it silently differs,
DeepSpeed's config and consolidated weights, and the record of what actually ran (``run.json``).

Launch traps this module guards against (see docs/distributed.md): ``accelerate launch --cpu`` with several
processes starts ONE process; a plain ``Accelerator()`` under ``--multi_gpu`` without a GPU runs independent
world-size-1 trainings; ``Accelerator(cpu=True)`` drops DeepSpeed; fp16 on CPU silently trains in fp32.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import DistributedType, InitProcessGroupKwargs, broadcast, gather_object
from omegaconf import DictConfig
from torch import nn

from ..config.schema import PRECISIONS
from ..config.shipped import shipped_dir
from ..errors import ConfigError, VaeforgeError, unknown_choice

DEEPSPEED_CONFIG = "ACCELERATE_DEEPSPEED_CONFIG_FILE"  # set by accelerate launch from its config's deepspeed_config_file


@dataclass(frozen=True)
class Launch:
    """What the launcher asked for, read from the environment it gave this process."""

    world_size: int  # WORLD_SIZE (torchrun, accelerate --multi_gpu/--use_deepspeed, vaeforge.submit)
    deepspeed: bool  # ACCELERATE_USE_DEEPSPEED (accelerate --use_deepspeed or a DeepSpeed config)
    precision: str  # ACCELERATE_MIXED_PRECISION ("no" when not given)
    single_cpu_trap: bool  # accelerate --cpu --num_processes N>1: a rendezvous address but one process

    @classmethod
    def from_env(cls) -> Launch:
        env = os.environ
        cpu_flag = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        return cls(
            world_size=int(env.get("WORLD_SIZE", "1")),
            deepspeed=env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true",
            precision=env.get("ACCELERATE_MIXED_PRECISION", "no").lower(),
            single_cpu_trap=cpu_flag and "MASTER_ADDR" in env and "WORLD_SIZE" not in env,
        )


def native_bf16() -> bool:
    """Whether this machine's training device computes bf16 in its fast kernels. A CPU without AVX-512 (or
    Arm's bf16) has no oneDNN bf16 path: PyTorch's autocast then runs convolutions in a reference kernel, far
    slower than fp32 (docs/benchmarks.md#measurements-behind-the-code)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, launch: Launch) -> str:
    """The precision a run trains in: the recipe's; for ``auto`` the launcher's when it asked for one, else
    bf16 where the device computes it natively, else fp32 (``no``). fp16 is only ever chosen explicitly."""
    if requested not in PRECISIONS:
        raise unknown_choice("trainer.mixed_precision", requested, PRECISIONS)
    if requested != "auto":
        return requested
    if launch.precision != "no":
        return launch.precision
    return "bf16" if native_bf16() else "no"


def precision_warning(precision: str) -> str | None:
    """A warning for a precision this machine runs far slower than fp32, else None."""
    if precision != "bf16" or native_bf16():
        return None
    return ("trainer.mixed_precision=bf16 on a CPU without native bf16 (no AVX-512 or Arm bf16): convolutions "
            "fall back to a reference kernel about 20x slower than fp32; use trainer.mixed_precision=auto or no")


def check_launch(launch: Launch, precision: str) -> None:
    """Refuse, before any process group exists, a launch that would silently run another setup (``precision``:
    the resolved one)."""
    if launch.single_cpu_trap:
        raise VaeforgeError(
            "accelerate launch --cpu starts ONE process whatever --num_processes says; for several CPU "
            "processes use: accelerate launch --multi_gpu --num_processes N (they run on CPU over gloo)"
        )
    if launch.precision != "no" and launch.precision != precision:
        raise ConfigError(
            f"the launcher asked for mixed precision '{launch.precision}' but trainer.mixed_precision is "
            f"'{precision}': pass trainer.mixed_precision={launch.precision} or auto (auto follows the launcher)"
        )
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("trainer.mixed_precision=fp16 needs a GPU (loss scaling runs on CUDA); "
                          "on CPU use auto, bf16 or no")
    if launch.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("the launch asked for DeepSpeed but it is not installed: pip install 'vaeforge[deepspeed]'")


def find_deepspeed_config(env: MutableMapping[str, str]) -> None:
    """The shipped accelerate configs name their DeepSpeed JSON relative to a checkout (``recipes/deepspeed/
    zero2.json``): where the working folder has no such file, ``env``'s entry is pointed at the copy shipped with
    vaeforge, as ``recipe=NAME`` finds ./recipes first and then the shipped recipes."""
    name = env.get(DEEPSPEED_CONFIG, "")
    path = Path(name)
    if not name or path.is_absolute() or path.is_file() or path.parts[0] != "recipes":
        return
    shipped = shipped_dir("vaeforge.recipes").joinpath(*path.parts[1:])
    if shipped.is_file():
        env[DEEPSPEED_CONFIG] = str(shipped)


def make_accelerator(precision: str, grad_accum: int, launch: Launch, run_dir: Path,
                     log_with: list[str | GeneralTracker]) -> Accelerator:
    """The Accelerator for this launch, logging with the trackers ``log_with`` (those that want a folder get the
    run folder). On CPU, DDP needs ``cpu=True`` (gloo), but DeepSpeed must NOT get it (it would be dropped
    silently): it gets a gloo process group instead."""
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"mixed_precision": precision, "gradient_accumulation_steps": grad_accum,
                              "log_with": log_with, "project_dir": str(run_dir)}
    if launch.deepspeed:
        find_deepspeed_config(os.environ)
    if launch.deepspeed and not cuda:
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    elif not launch.deepspeed:
        kwargs["cpu"] = not cuda
        if not cuda:  # accelerate imports DeepSpeed when installed; told the device, it does not warn it guessed CPU
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return Accelerator(**kwargs)


def check_setup(acc: Accelerator, launch: Launch, precision: str) -> None:
    """Refuse to train when the Accelerator ended up in another setup than the launch asked for."""
    if acc.num_processes != launch.world_size:
        raise VaeforgeError(
            f"the launcher asked for {launch.world_size} processes but this run has world size {acc.num_processes} "
            f"({acc.distributed_type}); on CPU use: accelerate launch --multi_gpu --num_processes {launch.world_size}"
        )
    if launch.deepspeed != (acc.distributed_type == DistributedType.DEEPSPEED):
        raise VaeforgeError(
            f"the launch {'asked for' if launch.deepspeed else 'did not ask for'} DeepSpeed but the run is "
            f"{acc.distributed_type}"
        )
    if acc.mixed_precision != precision:
        raise ConfigError(
            f"trainer.mixed_precision is '{precision}' but the run would train in '{acc.mixed_precision}' "
            "(set fp16.enabled and bf16.enabled to \"auto\" in the DeepSpeed config)"
        )


def any_rank(acc: Accelerator, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (collective, skipped on one process): ranks that
    must stop or raise do it together instead of leaving the others waiting in a collective."""
    if acc.num_processes == 1:
        return flag
    if flag:
        acc.set_trigger()
    return acc.check_trigger()


def peer_failed(exc: BaseException, world: int) -> bool:
    """Whether ``exc`` is a collective that broke because another rank ended (it printed the real error)."""
    return world > 1 and (isinstance(exc, torch.distributed.DistBackendError) or isinstance(exc, RuntimeError) and
                          any(text in str(exc) for text in ("Connection closed by peer", "Connection reset by peer")))


def broadcast_from_rank0(acc: Accelerator, value: float) -> float:
    """Rank 0's ``value`` on every rank (collective, skipped on one process)."""
    if acc.num_processes == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=acc.device)
    return float(broadcast(tensor, from_process=0)[0])


def zero_stage(acc: Accelerator) -> int | None:
    """The DeepSpeed ZeRO stage of this run, or None without DeepSpeed."""
    if acc.distributed_type != DistributedType.DEEPSPEED:
        return None
    return int(acc.state.deepspeed_plugin.deepspeed_config["zero_optimization"].get("stage", 0))


def check_balanced_terms(stage: int | None, balanced: list[str]) -> None:
    """Refuse balanced loss terms (``balanced``: each named with its plugin) under ZeRO-3: they differentiate
    with respect to the decoder's last weight, which ZeRO-3 partitions across ranks."""
    if stage == 3 and balanced:
        raise ConfigError(f"loss term {balanced[0]} balances itself by gradients at the decoder's last layer, "
                          "which DeepSpeed ZeRO-3 partitions across ranks: train it with ZeRO-2 or DDP, or turn "
                          "its balancing off in its args")


def fill_deepspeed_config(acc: Accelerator, cfg: DictConfig) -> None:
    """Fill the DeepSpeed config's batch, accumulation and clipping from the recipe; refuse values that differ
    and optimizer/scheduler sections (they come from the recipe's ``optim``)."""
    config = acc.state.deepspeed_plugin.deepspeed_config
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ConfigError(f"the DeepSpeed config has a '{section}' section: remove it, vaeforge builds it "
                              "from the recipe's optim.* keys")
    batch, accum = int(cfg.data.batch_size), int(cfg.trainer.grad_accum)
    wanted = {  # DeepSpeed key: (value from the recipe, where it comes from)
        "train_micro_batch_size_per_gpu": (batch, "data.batch_size"),
        "gradient_accumulation_steps": (accum, "trainer.grad_accum"),
        "train_batch_size": (batch * accum * acc.num_processes, "the global batch"),
        "gradient_clipping": (float(cfg.optim.grad_clip), "optim.grad_clip"),
    }
    for key, (value, source) in wanted.items():
        given = config.get(key, "auto")
        if given != "auto" and float(given) != float(value):
            raise ConfigError(f"the DeepSpeed config sets {key}={given} but {source} gives {value}: set it to \"auto\"")
        config[key] = value


def deepspeed_summary(acc: Accelerator) -> dict[str, Any] | None:
    """The DeepSpeed settings a run trains with (None without DeepSpeed)."""
    stage = zero_stage(acc)
    if stage is None:
        return None
    zero = acc.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
    device = lambda key: (zero.get(key) or {}).get("device", "none")  # noqa: E731
    return {
        "zero_stage": stage,
        "offload_optimizer": device("offload_optimizer"),
        "offload_param": device("offload_param"),
        "config_file": os.environ.get(DEEPSPEED_CONFIG),
        "version": importlib.import_module("deepspeed").__version__,
    }


def describe(acc: Accelerator) -> dict[str, Any]:
    """The setup this run actually has, from every rank (collective: all ranks call it)."""
    per_rank = gather_object([(socket.gethostname(), str(acc.device))])
    hosts = [h for h, _ in per_rank]
    return {
        "world_size": acc.num_processes,
        "num_machines": len(dict.fromkeys(hosts)),
        "distributed_type": acc.distributed_type.value,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "mixed_precision": acc.mixed_precision,
        "device": str(acc.device),
        "devices": [d for _, d in per_rank],
        "hosts": hosts,
        "deepspeed": deepspeed_summary(acc),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter], stage: int | None) -> Iterator[None]:
    """Within the block, ZeRO-3 partitioned parameters are whole on every rank (collective); else a no-op."""
    if stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params)):
        yield


def full_state(module: nn.Module, stage: int | None, keep: bool = True) -> dict[str, torch.Tensor]:
    """The module's complete state dict. Under DeepSpeed the parameters are the fp32 master weights assembled
    from all ranks' partitions (collective: all ranks call it, in the same order); ranks with ``keep=False``
    take part without holding the whole copy, and get the local state dict back."""
    if stage is None:
        return module.state_dict()
    from deepspeed.utils import safe_get_full_fp32_param

    state = module.state_dict()
    for name, param in module.named_parameters(remove_duplicate=False):
        full = safe_get_full_fp32_param(param)
        if full is None:  # a frozen parameter: no optimizer partition, only (maybe partitioned) model weights
            with gathered([param], stage):
                full = param.detach().clone()
        if keep:
            state[name] = full.detach().cpu().reshape(getattr(param, "ds_shape", param.shape))
    return state
