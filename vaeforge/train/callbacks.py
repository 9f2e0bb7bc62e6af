"""Callbacks: what happens around the training loop, one concern each, in the order the trainer lists them.

Every rank calls every hook (a hook may hold a collective); what only rank 0 does (TensorBoard, the progress
bar) the :class:`~vaeforge.train.monitor.Monitor` decides. A benchmark or a test adds its own callback instead
of patching the trainer.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from ..metrics import active_units, kl_per_dim
from . import distributed as dist
from . import ema as ema_schedule
from .schedule import lr_factor, step_progress
from .step import StepResult

if TYPE_CHECKING:
    from .trainer import Trainer


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After set-up and resume, before the first batch."""

    def on_batch(self, trainer: Trainer, batch: dict[str, Any], wait: float) -> None:
        """A micro-batch arrived (``wait``: seconds spent waiting for it), before it is trained on."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """An optimizer step is done (``trainer.state.step`` counts it)."""

    def on_validate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """A validation pass gave ``metrics`` (``val/...``)."""

    def on_save(self, trainer: Trainer) -> None:
        """A checkpoint of the current step was written."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Training ended with a checkpoint."""


class Callbacks(Callback):
    """Several callbacks called in order."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks

    def on_train_start(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_train_start(trainer)

    def on_batch(self, trainer: Trainer, batch: dict[str, Any], wait: float) -> None:
        for cb in self.callbacks:
            cb.on_batch(trainer, batch, wait)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, result)

    def on_validate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_validate(trainer, metrics)

    def on_save(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_save(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_train_end(trainer)


class LrSchedule(Callback):
    """Sets the model group's lr for the next step: warm-up, then decay over ``trainer.max_steps`` or over
    ``trainer.time_budget`` training seconds (rank 0's clock, broadcast: every rank's lr is the same). A used-up
    budget asks the trainer to stop."""

    def __init__(self, trainer: Trainer) -> None:
        o, t = trainer.opts.optim, trainer.opts.trainer
        self.factor = lr_factor(o.schedule, o.warmup_steps, o.min_lr_ratio)
        self.budget = t.time_budget
        self.by_step = step_progress(o.warmup_steps, t.max_steps)

    def progress(self, trainer: Trainer) -> float:
        s = trainer.state
        if self.budget is None:
            return self.by_step(s.step)
        seconds = dist.broadcast_from_rank0(trainer.acc, s.train_seconds)  # collective
        if seconds >= self.budget:
            trainer.request_stop("time budget")
        return seconds / self.budget

    def on_train_start(self, trainer: Trainer) -> None:
        s = trainer.state
        done = self.by_step(s.step) if self.budget is None else s.train_seconds / self.budget
        trainer.groups.main.set_lr(self.factor(s.step, done))

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        trainer.groups.main.set_lr(self.factor(trainer.state.step, self.progress(trainer)))


class EmaUpdate(Callback):
    """The EMA of the VAE's weights after each applied step (every ``trainer.ema_every``-th, standing for that
    many)."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        step = trainer.state.step - 1  # the 0-based index of the step just taken
        covered = ema_schedule.steps_covered(step, trainer.opts.trainer.ema_every)
        if trainer.ema is None or not result.applied or not covered:  # checked before gathering (ZeRO-3)
            return
        vae = trainer.live.vae
        with dist.gathered(vae.parameters(), trainer.zero_stage):
            ema_schedule.update(trainer.ema, vae, step, covered)


class TrainLog(Callback):
    """Loss terms, lr, gradient norms, skip counts, active units and speed every ``trainer.log_every`` steps
    (averaged over ranks: collective), latent histograms, and the progress bar."""

    def __init__(self) -> None:
        self.window_start, self.images, self.wait = time.monotonic(), 0, 0.0

    def on_batch(self, trainer: Trainer, batch: dict[str, Any], wait: float) -> None:
        self.images += batch["image"].shape[0] * trainer.world
        self.wait += wait

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        s, every = trainer.state, trainer.opts.trainer.log_every
        if s.step % every and s.step != trainer.opts.trainer.max_steps:
            return
        elapsed = max(time.monotonic() - self.window_start, 1e-9)
        values = self._losses(trainer, result)
        kl_dims = kl_per_dim(result.out.mu.detach(), result.out.logvar.detach())
        skipped = torch.tensor(float(trainer.data_skipped), device=trainer.acc.device)
        values.update({
            "train/lr": trainer.groups.main.lr,
            "train/grad_norm": result.grad_norm,
            "train/nonfinite_skipped": s.nonfinite_skipped,
            "train/data_skipped": float(trainer.acc.reduce(skipped, reduction="sum")),
            "train/active_units": active_units(kl_dims),
            "perf/images_per_sec": self.images / elapsed,
            "perf/data_wait_fraction": self.wait / elapsed,
            "progress/epoch": s.epoch,
            "progress/train_seconds": s.train_seconds,
        })
        values.update({f"train/{name}": value for name, value in result.owned.items()})
        values.update({f"train/{name}/nonfinite_skipped": n for name, n in s.owned_nonfinite_skipped.items()})
        m = trainer.monitor
        m.scalars(values, s.step)
        m.histogram("latent/mu", result.out.mu, s.step)
        m.histogram("latent/logvar", result.out.logvar, s.step)
        m.histogram("latent/kl_per_dim", kl_dims.mean(0), s.step)
        m.progress(s.step, s.train_seconds, {"loss": f"{values['train/loss']:.4g}", "img/s": f"{values['perf/images_per_sec']:.0f}"})
        self.window_start, self.images, self.wait = time.monotonic(), 0, 0.0

    @staticmethod
    def _losses(trainer: Trainer, result: StepResult) -> dict[str, float]:
        """The total and every logged term, averaged over ranks (collective)."""
        stacked = torch.stack([result.total.float(), *[v.float() for v in result.logs.values()]])
        reduced = trainer.acc.reduce(stacked, reduction="mean")
        values = {"train/loss": float(reduced[0])}
        values.update({f"train/{k}": float(v) for k, v in zip(result.logs, reduced[1:])})
        return values


class Validation(Callback):
    """A validation pass every ``trainer.val_every`` steps and image grids every ``trainer.image_every``."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        s, t = trainer.state, trainer.opts.trainer
        if t.val_every and s.step % t.val_every == 0:
            metrics = trainer.evaluator.validate(s.step, trainer.monitor)
            trainer.monitor.scalars(metrics, s.step)
            trainer.monitor.info(f"step {s.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            trainer.callbacks.on_validate(trainer, metrics)
        if t.image_every and s.step % t.image_every == 0:
            trainer.evaluator.log_images(s.step, trainer.monitor)


class PeriodicCheckpoint(Callback):
    """A checkpoint every ``trainer.checkpoint_every`` steps (the trainer always writes one at the end)."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        every = trainer.opts.trainer.checkpoint_every
        if every and trainer.state.step % every == 0:
            trainer.save()


class SampleAudit(Callback):
    """``trainer.audit_samples``: each rank appends the keys of every sample it trains on to
    ``audit/samples_rank<r>.txt`` and, at the end, the digest of all trained weights to ``params_rank<r>.txt``
    (the fault and distributed tests compare them)."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.folder = trainer.run_dir / "audit"
        self.folder.mkdir(exist_ok=True)
        self.samples = self.folder / f"samples_rank{trainer.rank}.txt"

    def on_batch(self, trainer: Trainer, batch: dict[str, Any], wait: float) -> None:
        s = trainer.state
        with open(self.samples, "a") as fh:
            fh.write(f"{s.step} {s.epoch} " + " ".join(batch["key"]) + "\n")

    def on_train_end(self, trainer: Trainer) -> None:
        digest = trainer.checkpoints.digest()  # collective under DeepSpeed
        (self.folder / f"params_rank{trainer.rank}.txt").write_text(digest + "\n")


def default_callbacks(trainer: Trainer) -> list[Callback]:
    """The built-in callbacks a run's config asks for, in the order they must run after each step: the EMA and
    the lr first (a checkpoint of this step holds both), logs, validation, then the checkpoint."""
    callbacks: list[Callback] = [EmaUpdate(), LrSchedule(trainer), TrainLog(), Validation(), PeriodicCheckpoint()]
    if trainer.opts.trainer.audit_samples:
        callbacks.append(SampleAudit())
    return callbacks
