"""The checkpoint manager: writes, finds and restores a run's checkpoints (the format is
:mod:`vaeforge.runs.checkpoints`), with DeepSpeed's sharded states and every optimizer group.

Saving and loading are collective: every rank calls them, in the same order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..errors import CheckpointError, VaeforgeError
from ..runs import checkpoints as ckpt
from . import distributed as dist
from .builders import TrainModule
from .ema import WeightAverage
from .groups import ModelGroup, OwnedGroup

OWNED = "owned_"  # file prefix of an owned group's weights and optimizer: owned_<term>.<module>.safetensors


def subset(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the module's frozen parameters: they come from their own files (LPIPS weights), not
    from checkpoints."""
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


class CheckpointManager:
    """Checkpoints of one run: model, EMA, loss and owned-module weights, optimizers, scaler, per-rank RNG, and
    where training stands (:class:`~vaeforge.runs.checkpoints.TrainerState`)."""

    def __init__(self, run_dir: Path, acc: Accelerator, zero_stage: int | None, keep: int, live: TrainModule,
                 main: ModelGroup, ema: WeightAverage | None, owned: list[OwnedGroup]) -> None:
        self.run_dir, self.acc, self.zero_stage, self.keep = run_dir, acc, zero_stage, keep
        self.live, self.main, self.ema, self.owned = live, main, ema, owned
        self.rank = acc.process_index

    def latest(self) -> Path | None:
        return ckpt.latest_checkpoint(self.run_dir)

    def full_state(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """Model and loss weights, whole (collective under DeepSpeed: all ranks call it; see dist.full_state)."""
        return dist.full_state(self.live, self.zero_stage, keep)

    def digest(self) -> str:
        """SHA-256 of every trained weight, owned modules included (collective under DeepSpeed)."""
        state = self.full_state()
        for group in self.owned:
            state.update({f"{OWNED}{group.name}.{k}": v for k, v in group.owned.module.state_dict().items()})
        return ckpt.state_digest(state)

    def save(self, state: ckpt.TrainerState) -> None:
        """Write a checkpoint of the current step (collective); a failed write (a full disk) is one line that
        says the previous checkpoint is intact."""
        folder = ckpt.tmp_dir(self.run_dir, state.step)
        try:
            self._write(folder, state)
        except OSError as exc:
            raise ckpt.write_failed(exc, folder, remove=self.acc.num_processes == 1) from None

    def _write(self, folder: Path, state: ckpt.TrainerState) -> None:
        if self.acc.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        ckpt.write_rank_state(folder, self.rank)
        full = self.full_state(keep=self.acc.is_main_process)  # rank 0 writes the consolidated weights
        if self.zero_stage is not None:
            ckpt.save_deepspeed(self.main.model, folder)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            if self.zero_stage is not None:
                ckpt.describe_deepspeed(folder, self.zero_stage)
            ckpt.write_main_state(folder, self._weights(full), self._plain_states(), state)
            ckpt.publish(folder, self.keep)
        self.acc.wait_for_everyone()

    def _weights(self, full: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        weights = {
            "model": subset(full, "vae."),
            "ema": self.ema.module.state_dict() if self.ema is not None else {},
            "losses": trainable_state(self.live.losses, subset(full, "losses.")),
        }
        for group in self.owned:
            weights[f"{OWNED}{group.name}"] = group.owned.module.state_dict()
        return weights

    def _plain_states(self) -> dict[str, Any]:
        """Optimizers (the model's unless DeepSpeed shards it) and the fp16 loss scaler, as plain data."""
        states: dict[str, Any] = {}
        if self.zero_stage is None:
            states["optimizer"] = self.main.optimizer.state_dict()
        if self.acc.scaler is not None:
            states["scaler"] = self.acc.scaler.state_dict()
        for group in self.owned:
            states[f"{OWNED}{group.name}_optimizer"] = group.optimizer.state_dict()
        return states

    def load(self, folder: Path, architecture: dict[str, list[int]]) -> ckpt.TrainerState:
        """Restore everything a checkpoint holds; returns where training stood."""
        state = ckpt.read_state(folder)
        if state.world_size != self.acc.num_processes:
            raise VaeforgeError(
                f"checkpoint {folder} was written by {state.world_size} processes, this run has "
                f"{self.acc.num_processes}: the data position cannot be restored exactly"
            )
        ckpt.check_layout(folder, self.zero_stage)
        weights = ckpt.load_weights(folder / "model.safetensors")
        ckpt.check_architecture(architecture, weights, folder)
        if self.zero_stage is None:
            self.live.vae.load_state_dict(weights)
            if (folder / "losses.safetensors").exists():
                load_trainable(self.live.losses, ckpt.load_weights(folder / "losses.safetensors"), folder)
            self.main.optimizer.load_state_dict(ckpt.load_pickle_free(folder / "optimizer.pt"))
        else:
            self._check_deepspeed_files(folder)
            ckpt.load_deepspeed(self.main.model, folder)  # model and optimizer partitions
        if self.ema is not None and (folder / "ema.safetensors").exists():
            self.ema.module.load_state_dict(ckpt.load_weights(folder / "ema.safetensors"))
        if self.acc.scaler is not None and (folder / "scaler.pt").exists():
            self.acc.scaler.load_state_dict(ckpt.load_pickle_free(folder / "scaler.pt"))
        for group in self.owned:
            self._load_owned(group, folder)
        ckpt.set_rng_state(ckpt.load_pickle_free(folder / f"rng_rank{self.rank}.pt"))
        return state

    def _load_owned(self, group: OwnedGroup, folder: Path) -> None:
        weights = folder / f"{OWNED}{group.name}.safetensors"
        if not weights.exists():
            raise CheckpointError(f"checkpoint {folder} has no weights for '{group.name}' ({weights.name}): it was "
                                  "written by a run without that loss term")
        module = group.owned.module
        found = ckpt.load_weights(weights)
        ckpt.check_architecture(ckpt.architecture(module.state_dict()), found, folder)
        module.load_state_dict(found)
        group.optimizer.load_state_dict(ckpt.load_pickle_free(folder / f"{OWNED}{group.name}_optimizer.pt"))

    def _check_deepspeed_files(self, folder: Path) -> None:
        """Rank 0 checks every shard's hash (once, not once per rank); all ranks stop together if one differs."""
        damaged = ckpt.damaged_deepspeed_file(folder) if self.acc.is_main_process else None
        if dist.any_rank(self.acc, damaged is not None):
            raise CheckpointError(damaged or f"checkpoint {folder}: a DeepSpeed shard is damaged (named by rank 0)")


def load_trainable(module: torch.nn.Module, weights: dict[str, torch.Tensor], folder: Path) -> None:
    """Load a module's trained weights; its frozen parameters keep what they were built with."""
    missing, unexpected = module.load_state_dict(weights, strict=False)
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    wrong = sorted(set(missing) - frozen) + sorted(unexpected)
    if wrong:
        raise CheckpointError(f"checkpoint {folder}: loss weights do not match this run's loss terms ({wrong[:3]})")
