"""The trainer: sets a run up from its validated config and runs the training loop.

Parts, each in its own module: builders (model, loss terms, owned modules), optimizer groups and
:func:`~vaeforge.train.step.train_step`, the checkpoint manager, the evaluator, and callbacks (lr schedule,
EMA, logging, validation, periodic checkpoints, the sample audit). The engine knows plugin kinds, never a
concrete plugin. One run folder for all ranks holds the resolved config, ``run.json``, checkpoints and
TensorBoard events.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf

from .. import __version__
from ..config.fields import check_values
from ..config.loader import apply_by_precision
from ..config.schema import RunConfig
from ..data.corrupt import check as check_corruption
from ..data.corrupt import corrupt
from ..data.manifest import manifest_location, read_manifest, shard_paths
from ..data.sources import is_local
from ..data.stream import StreamSpec, train_loader
from ..errors import ConfigError, VaeforgeError
from ..models.vae import ImageSpec, build_model
from ..models.objective import LossSet
from ..runs import checkpoints as ckpt
from ..runs import folder as run_folder
from . import distributed as dist
from . import speed as speeds
from . import tracking
from .builders import Owned, TrainModule, adamw, build_train_module, take_owned, to_float
from .callbacks import Callback, Callbacks, default_callbacks
from .checkpointing import CheckpointManager
from .ema import WeightAverage
from .evaluator import EvalData, Evaluator
from .groups import ModelGroup, OwnedGroup
from .heap import frozen_heap, retain_freed_memory
from .monitor import Monitor
from .step import Groups, StepResult, train_step


class Trainer:
    """One training run, from a validated run config; ``fit()`` trains until max_steps, max_time, the time
    budget or SIGTERM. ``callbacks`` run after the built-in ones."""

    def __init__(self, cfg: DictConfig, callbacks: list[Callback] | None = None) -> None:
        launch = dist.Launch.from_env()
        precision = dist.resolve_precision(cfg.trainer.mixed_precision, launch)
        cfg = apply_by_precision(cfg, precision)  # a config built in Python, not through load_config's training path
        self.cfg = absolute_data(cfg)  # as resolved: saved into the run folder
        self.opts: RunConfig = OmegaConf.to_object(cfg)  # typed copy the engine reads (DictConfig reads are slow)
        self._check(self.opts)
        t = self.opts.trainer
        dist.check_launch(launch, precision)
        self.run_dir = Path(self.opts.run_dir)
        self.acc = dist.make_accelerator(precision, t.grad_accum, launch, self.run_dir,
                                         tracking.log_with(t.log_with, self.run_dir))
        dist.check_setup(self.acc, launch, precision)
        self.zero_stage = dist.zero_stage(self.acc)  # None without DeepSpeed
        self.speed = speeds.resolve(t, precision, self.zero_stage)
        if self.acc.device.type == "cuda":  # training shapes are fixed: cuDNN times its algorithms once per shape
            torch.backends.cudnn.benchmark = True
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self._lock_run_dir()
        run_folder.refuse_overwrite(self.run_dir, self.opts.resume)
        self.manifest = read_manifest(self.opts.data.shards, self.opts.data.manifest)
        self.train_shards = shard_paths(self.opts.data.shards, self.manifest, "train")
        self.image = ImageSpec(int(self.manifest["image_size"]), int(self.manifest.get("channels", 3)))
        self.batches_per_epoch = self._batches_per_epoch()
        self._build()
        self.data_skipped = 0  # bad samples or shards skipped under data.on_error=skip since this process started
        self._stop_reason = ""
        self.callbacks = Callbacks([*default_callbacks(self), *(callbacks or [])])

    @staticmethod
    def _check(opts: RunConfig) -> None:
        check_values(opts)  # a config built in Python, not through the command line, is checked here too
        check_corruption(opts.data.corruption)
        tracking.check_trackers(opts.trainer.log_with)

    def _build(self) -> None:
        """Model, loss terms, optimizer groups, EMA, evaluator and checkpoint manager; Accelerate wraps the
        model group (ZeRO-3 partitions its weights)."""
        o, t = self.opts.optim, self.opts.trainer
        set_seed(t.seed)  # same initial weights on every rank
        module, owned = build_train_module(self.opts, self.image)
        dist.check_balanced_terms(self.zero_stage, module.losses.balanced_origins())
        speeds.prepare_layout(module, owned, self.speed)
        self.ema = WeightAverage(module.vae, t.ema_decay) if t.ema_decay > 0 else None
        speeds.compile_modules(module, owned, self.speed)
        optimizer = adamw([p for p in module.parameters() if p.requires_grad], o.lr, o.betas, o.weight_decay)
        self.architecture = ckpt.architecture(module.vae.state_dict())
        if self.zero_stage is not None:
            dist.fill_deepspeed_config(self.acc, self.opts)
        model, optimizer = self.acc.prepare(module, optimizer)
        self.live: TrainModule = module  # what prepare wrapped (DDP, DeepSpeed) or patched (autocast) in place
        self.input_dtype = next(model.parameters()).dtype  # DeepSpeed bf16/fp16 casts the weights: inputs follow
        main = ModelGroup(self.acc, model, optimizer, o.grad_clip, self.zero_stage, o.lr)
        losses = self.live.losses
        self.groups = Groups(self.acc, model, main, [OwnedGroup(x, self.acc, t.grad_accum, losses.origins[x.term])
                                                      for x in owned])
        self.state = ckpt.TrainerState(world_size=self.world, architecture=self.architecture)
        self.checkpoints = CheckpointManager(self.run_dir, self.acc, self.zero_stage, t.keep_checkpoints, self.live,
                                             main, self.ema, self.groups.owned)
        d = self.opts.data
        data = EvalData(shard_paths(d.shards, self.manifest, "val"), self.image.size, d.val_batch_size,
                        d.val_max_batches, d.on_error, t.seed, self.inputs)
        self._eval_copy: TrainModule | None = None
        self._eval_owned: list[Owned] = []  # the copy's owned modules, in self.groups.owned's order
        self.evaluator = Evaluator(self.acc, self.live, self.ema, data,
                                   self._whole_copy if self.zero_stage is not None else None)

    # ----- set-up ------------------------------------------------------------------------------------------
    def _lock_run_dir(self) -> None:
        """Only one training may use a run folder at a time (rank 0 holds an flock for the whole run)."""
        self._lock, message = run_folder.lock(self.run_dir) if self.acc.is_main_process else (None, "")
        if dist.any_rank(self.acc, bool(message)):
            raise VaeforgeError(message or f"run_dir {self.run_dir} is in use by another training")

    def _batches_per_epoch(self) -> int:
        d, accum = self.opts.data, self.opts.trainer.grad_accum
        count = int(self.manifest["splits"]["train"]["count"])
        batches = count // (self.world * d.batch_size) // accum * accum
        if batches < 1:
            raise ConfigError(
                f"data.batch_size={d.batch_size} x {self.world} processes x grad_accum={accum} is more than the "
                f"{count} training images"
            )
        return batches

    def _describe_run(self) -> dict[str, Any]:
        """What ``run.json`` records (collective: every rank reports its host and device)."""
        return {
            **dist.describe(self.acc),
            **self.speed.describe(),
            "gradient_accumulation_steps": self.acc.gradient_accumulation_steps,
            "global_batch": self.opts.data.batch_size * self.world * self.opts.trainer.grad_accum,
            "batches_per_epoch_per_rank": self.batches_per_epoch,
            "data": {"shards": self.opts.data.shards,
                     "manifest": manifest_location(self.opts.data.shards, self.opts.data.manifest)},
            "optimizer_groups": [self.groups.main.name, *[g.name for g in self.groups.owned]],
            "versions": {"vaeforge": __version__, "torch": torch.__version__},
        }

    def _resume_or_start(self) -> None:
        latest, ignored = self.checkpoints.latest(), ckpt.scan(self.run_dir)[1]
        if ignored:
            self.monitor.warn(f"ignored in {self.run_dir / ckpt.CHECKPOINTS}: {'; '.join(ignored)}")
        setup = self._describe_run()
        if self.acc.is_main_process:
            ckpt.remove_partial(self.run_dir)
            run_folder.write_records(self.run_dir, self.cfg, setup, self.manifest)
        self.acc.wait_for_everyone()
        if latest is None:
            if self.opts.resume:
                self.monitor.info(f"resume=true but {self.run_dir} has no checkpoint yet: starting fresh")
            set_seed(self.opts.trainer.seed + self.rank)  # different noise and dropout per rank
            return
        self.state = self.checkpoints.load(latest, self.architecture)
        for group in self.groups.owned:
            group.skipped = self.state.owned_nonfinite_skipped.get(group.name, 0)
        self.monitor.info(f"resumed from {latest} (step {self.state.step}, epoch {self.state.epoch})")

    def _whole_copy(self) -> TrainModule:
        """A plain module holding the current whole fp32 weights, owned modules included (DeepSpeed;
        collective)."""
        state = self.checkpoints.full_state()
        if self._eval_copy is None:
            with torch.random.fork_rng(devices=[]):  # building must not move the training RNG
                losses = LossSet(self.opts.losses)
                self._eval_owned = take_owned(losses)
                self._eval_copy = TrainModule(build_model(self.opts.model, self.image), losses)
            self._eval_copy.to(self.acc.device)
        self._eval_copy.load_state_dict(state)
        for copy, group in zip(self._eval_owned, self.groups.owned):  # outside the model's state: copied apart
            copy.module.to(self.acc.device).load_state_dict(group.owned.module.state_dict())
        return self._eval_copy

    # ----- the loop ----------------------------------------------------------------------------------------
    def inputs(self, images: torch.Tensor, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean targets and model inputs (corrupted for denoising, with noise that depends only on seed,
        rank and ``salt``, so a resumed run sees the same corruptions)."""
        device, corruption = self.acc.device, self.opts.data.corruption
        if corruption.kind == "none":  # uint8 to the device (a quarter of float's bytes), converted there
            clean = speeds.laid_out(to_float(images.to(device, non_blocking=True)), self.speed)
            return clean, clean
        clean = to_float(images)
        gen = torch.Generator().manual_seed(hash((self.opts.trainer.seed, self.rank, salt)) & 0x7FFFFFFF)
        noisy = corrupt(clean, corruption, gen)  # on the CPU, from a CPU generator: the same on any device
        return (speeds.laid_out(clean.to(device, non_blocking=True), self.speed),
                speeds.laid_out(noisy.to(device, non_blocking=True), self.speed))

    def batches(self) -> Iterator[dict[str, Any]]:
        """Training batches until ``trainer.max_steps``: each epoch's stream restarted, a resumed one replayed to
        its position. The caller moves the position (:meth:`TrainerState.advance`)."""
        s, d = self.state, self.opts.data
        while s.step < self.opts.trainer.max_steps:
            epoch = s.epoch
            spec = StreamSpec(tuple(self.train_shards), d.batch_size, self.batches_per_epoch, self.rank, self.world,
                              self.opts.trainer.seed, epoch, d.shuffle_buffer, self.image.size, d.on_error)
            stream = iter(train_loader(spec, d.num_workers, pin_memory=self.acc.device.type == "cuda"))
            for _ in range(s.batch_in_epoch):  # replay this epoch's stream up to the resume point
                next(stream)
            while s.epoch == epoch and s.step < self.opts.trainer.max_steps:
                yield next(stream)

    def fit(self) -> ckpt.TrainerState:
        """Train; returns the final state. Ends with a checkpoint, so ``resume=true`` always continues."""
        t = self.opts.trainer
        self.monitor = Monitor(self.acc, self.run_dir, OmegaConf.to_container(self.cfg, resolve=True),
                               t.tracker_project, t.max_steps, t.time_budget, t.progress)
        warning = dist.precision_warning(self.acc.mixed_precision)
        if warning:
            self.monitor.warn(warning)
        self._resume_or_start()
        if t.retain_freed_memory:
            retain_freed_memory()
        self.callbacks.on_train_start(self)
        if t.time_budget is not None and self.state.train_seconds >= t.time_budget:
            self.monitor.info(f"trainer.time_budget={t.time_budget:g} s is used up ({self.state.train_seconds:.0f} s "
                               "trained): nothing to train; pass a larger trainer.time_budget to continue")
        else:
            with _sigterm_stops(self), frozen_heap():
                self._loop()
        self.save()
        self.callbacks.on_train_end(self)
        self.monitor.end_session()
        self.monitor.close()
        return self.state

    def _loop(self) -> None:
        s, t = self.state, self.opts.trainer
        start, before, bad_in_a_row = time.monotonic(), s.train_seconds, 0
        self.monitor.start_clock(s.step, s.train_seconds)
        batches = self.batches()
        while True:
            tick = time.monotonic()
            batch = next(batches, None)
            if batch is None:
                return
            self.data_skipped += int(batch["skipped"])
            self.callbacks.on_batch(self, batch, time.monotonic() - tick)
            x, x_in = self.inputs(batch["image"], s.step)
            result = train_step(self.groups, x_in.to(self.input_dtype), x, s.step)
            s.advance(x.shape[0] * self.world, self.batches_per_epoch)
            if not result.synced:
                continue
            s.step, s.train_seconds = s.step + 1, before + time.monotonic() - start
            bad_in_a_row = self._count_skips(result, bad_in_a_row)
            self.callbacks.on_step_end(self, result)
            if t.max_time is not None and time.monotonic() - start >= t.max_time:
                self.request_stop("time limit")
            if dist.any_rank(self.acc, bool(self._stop_reason)):  # collective: every rank stops at this step
                self.monitor.info(f"stopping at step {s.step} ({self._stop_reason or 'another rank'})")
                return

    def _count_skips(self, result: StepResult, bad_in_a_row: int) -> int:
        """Count skipped (non-finite) updates; too many in a row stop the run with a checkpoint, naming the
        loss terms that were not finite."""
        s = self.state
        for group in self.groups.owned:
            if group.skipped:
                s.owned_nonfinite_skipped[group.name] = group.skipped
        if result.applied:
            return 0
        s.nonfinite_skipped += 1
        if bad_in_a_row + 1 < self.opts.trainer.max_nonfinite:
            return bad_in_a_row + 1
        self.save()
        terms = self.live.losses.nonfinite_terms(result.logs)
        culprit = f"loss term {', '.join(terms)}" if terms else "the gradients (every loss term was finite)"
        raise VaeforgeError(
            f"{bad_in_a_row + 1} consecutive non-finite updates at step {s.step}, last from {culprit}: stopping "
            f"(checkpoint saved in {self.run_dir}); lower optim.lr, check the data, or fix that term"
        )

    def request_stop(self, reason: str) -> None:
        """Stop after this step (every rank agrees at the step's end)."""
        self._stop_reason = self._stop_reason or reason

    def save(self) -> None:
        """Write a checkpoint of the current step (collective)."""
        self.checkpoints.save(self.state)
        self.callbacks.on_save(self)

    def close(self) -> None:
        """End a finished run: every rank meets, the process group is torn down (collective)."""
        self.acc.wait_for_everyone()
        self.acc.end_training()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self._release()

    def abort(self) -> None:
        """End a failed run on this rank without waiting for the others: its exit makes the launcher stop them
        (a barrier here would wait for ranks that sit in a collective this one never joins)."""
        if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
            # the DataLoader's SIGCHLD handler re-raises a dead worker's error on every later child exit, which
            # would replace the first error while the writers below shut down
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if hasattr(self, "monitor"):
            with contextlib.suppress(VaeforgeError):  # events that cannot be written: the run's own error is shown
                self.monitor.close(failed=True)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def absolute_data(cfg: DictConfig) -> DictConfig:
    """``cfg`` with a local ``data.shards`` and ``data.manifest`` as absolute paths (URLs and ``pipe:`` commands
    as given): the run records where its data is, so it is resumed and used (``input=val``, evaluate) from any
    working directory."""
    local = {key: str(Path(value).resolve()) for key, value in cfg.data.items()
             if key in ("shards", "manifest") and value and is_local(str(value))}
    return OmegaConf.merge(cfg, {"data": local})  # type: ignore[return-value]


@contextlib.contextmanager
def _sigterm_stops(trainer: Trainer) -> Iterator[None]:
    """SIGTERM (SLURM preemption, submitit's requeue) ends training after the current step, with a checkpoint."""
    previous = signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop("signal"))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
