"""The training engine: Accelerate (DDP, DeepSpeed ZeRO, mixed precision) around any registered backbone and
loss terms.

It knows plugin kinds, never a concrete plugin. One run folder for all ranks holds the resolved config,
``run.json``, checkpoints, TensorBoard events and (optionally) a per-rank audit of the samples trained on.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast, set_seed
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch import nn

from .. import __version__
from ..config import save_config
from ..config.schema import TrainerConfig
from ..data.corrupt import check as check_corruption
from ..data.corrupt import corrupt
from ..data.stream import StreamSpec, check_on_error, eval_batches, train_loader
from ..data.manifest import read_manifest, shard_paths
from ..errors import CheckpointError, ConfigError, VaeforgeError
from ..models.objective import LossSet
from ..metrics import active_units, kl_per_dim, psnr
from ..models.vae import VAE, ImageSpec, build_model
from ..runs.layout import CONFIG_FILE, LOCK_FILE, MANIFEST_COPY, RUN_FILE
from ..runs import checkpoints as ckpt
from . import distributed as dist
from . import ema as ema_schedule
from .heap import frozen_heap, retain_freed_memory
from .monitor import Monitor
from .schedule import check_time_budget, lr_factor, step_progress


class TrainModule(nn.Module):
    """Model and loss terms in one module, so DDP synchronises the gradients of both."""

    def __init__(self, vae: VAE, losses: LossSet) -> None:
        super().__init__()
        self.vae = vae
        self.losses = losses

    def forward(self, x: torch.Tensor, target: torch.Tensor, step: int
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """Encode ``x`` (possibly corrupted), score the output against the clean ``target``."""
        out = self.vae(x)
        total, logs = self.losses(out, target, step)
        return total, logs, out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[B, C, H, W]`` -> float in [0, 1]."""
    return images.float().div_(255.0)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict (parameters and buffers): equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _subset(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class Trainer:
    """One training run, from a validated run config; ``fit()`` trains until max_steps, max_time or a stop."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        t = cfg.trainer
        # plain dataclass copies of what the step loop reads: a DictConfig key read costs ~10 us, these ~20 ns
        self.opts: TrainerConfig = OmegaConf.to_object(t)
        self.corrupting = cfg.data.corruption.kind != "none"
        launch = dist.Launch.from_env()
        precision = dist.resolve_precision(t.mixed_precision, launch)
        dist.check_launch(launch, precision)
        self.acc = dist.make_accelerator(precision, t.grad_accum, launch)
        dist.check_setup(self.acc, launch, precision)
        self.zero_stage = dist.zero_stage(self.acc)  # None without DeepSpeed
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.run_dir = Path(cfg.run_dir)
        self.main = self.acc.is_main_process
        check_corruption(cfg.data.corruption)
        check_on_error(cfg.data.on_error)
        check_time_budget(t.time_budget)
        self.data_skipped = 0  # bad samples or shards skipped under data.on_error=skip since this process started
        self._lock_run_dir()
        self._refuse_overwrite()
        self.manifest = read_manifest(cfg.data.shards)
        self.train_shards = shard_paths(cfg.data.shards, self.manifest, "train")
        self.val_shards = shard_paths(cfg.data.shards, self.manifest, "val")
        self.image = ImageSpec(int(self.manifest["image_size"]), int(self.manifest.get("channels", 3)))

        set_seed(t.seed)  # same initial weights on every rank
        vae = build_model(cfg.model, self.image)
        self.module = TrainModule(vae, LossSet(cfg.losses))
        ema_schedule.check_every(t.ema_every)
        self.ema = ModelEmaV3(vae, decay=t.ema_decay, use_warmup=True) if t.ema_decay > 0 else None
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(  # fused: one kernel for all tensors (PyTorch's CPU default is a loop)
            params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay, fused=True,
        )
        self.budget_used = 0.0  # fraction of trainer.time_budget trained, the same on every rank
        progress = (step_progress(cfg.optim.warmup_steps, t.max_steps) if t.time_budget is None
                    else lambda _step: self.budget_used)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio, progress)
        )
        self.state = ckpt.TrainerState(world_size=self.world, architecture=ckpt.architecture(vae.state_dict()))
        if self.zero_stage is not None:
            dist.fill_deepspeed_config(self.acc, cfg)
        self.model, self.optimizer = self.acc.prepare(self.module, optimizer)  # ZeRO-3 partitions the weights
        self.live: TrainModule = self.acc.unwrap_model(self.model)  # unwrapping costs ~6 ms: once, not per step
        # DeepSpeed bf16/fp16 casts the weights themselves (fp32 masters stay in the optimizer): inputs follow
        self.input_dtype = next(self.model.parameters()).dtype
        self._eval_copy: TrainModule | None = None  # DeepSpeed only: whole fp32 weights to evaluate with
        self.batches_per_epoch = self._batches_per_epoch()
        self._stop_requested = False

    # ----- setup -------------------------------------------------------------------------------------------
    def _agree(self, failed: bool) -> bool:
        """True on every rank when any rank failed (so all ranks raise together instead of deadlocking)."""
        if self.world == 1:
            return failed
        if failed:
            self.acc.set_trigger()
        return self.acc.check_trigger()

    def _lock_run_dir(self) -> None:
        """Only one training may use a run folder at a time (rank 0 holds an flock for the whole run)."""
        message = ""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.run_dir / LOCK_FILE, "a+")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock.seek(0)
                self._lock.truncate()
                self._lock.write(f"{os.getpid()}\n")
                self._lock.flush()
            except BlockingIOError:
                self._lock.seek(0)
                message = f"run_dir {self.run_dir} is in use by another training (pid {self._lock.read().strip()})"
        if self._agree(bool(message)):
            raise VaeforgeError(message or f"run_dir {self.run_dir} is in use by another training")

    def _batches_per_epoch(self) -> int:
        d, accum = self.cfg.data, self.cfg.trainer.grad_accum
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
            "gradient_accumulation_steps": self.acc.gradient_accumulation_steps,
            "global_batch": self.cfg.data.batch_size * self.world * self.cfg.trainer.grad_accum,
            "batches_per_epoch_per_rank": self.batches_per_epoch,
            "versions": {"vaeforge": __version__, "torch": torch.__version__},
        }

    # ----- checkpoints -------------------------------------------------------------------------------------
    def _refuse_overwrite(self) -> None:
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is not None and not self.cfg.resume:
            raise VaeforgeError(
                f"run_dir {self.run_dir} already has checkpoints (latest {latest.name}): pass resume=true to "
                "continue it, or choose another run_dir"
            )

    def _resume_or_start(self) -> None:
        latest = ckpt.latest_checkpoint(self.run_dir)
        setup = self._describe_run()
        if self.main:
            ckpt.remove_partial(self.run_dir)
            save_config(self.cfg, self.run_dir / CONFIG_FILE)
            (self.run_dir / RUN_FILE).write_text(json.dumps(setup, indent=1))
            (self.run_dir / MANIFEST_COPY).write_text(json.dumps(self.manifest, indent=1))
        self.acc.wait_for_everyone()
        if latest is None:
            if self.cfg.resume:
                self.monitor.write(f"resume=true but {self.run_dir} has no checkpoint yet: starting fresh")
            set_seed(self.cfg.trainer.seed + self.rank)  # different noise and dropout per rank
            return
        self._load(latest)

    def _load(self, folder: Path) -> None:
        state = ckpt.read_state(folder)
        if state.world_size != self.world:
            raise VaeforgeError(
                f"checkpoint {folder} was written by {state.world_size} processes, this run has {self.world}: "
                "the data position cannot be restored exactly"
            )
        ckpt.check_layout(folder, self.zero_stage)
        weights = ckpt.load_weights(folder / "model.safetensors")
        ckpt.check_architecture(self.state.architecture, weights, folder)
        if self.zero_stage is None:
            live = self.live
            live.vae.load_state_dict(weights)
            if (folder / "losses.safetensors").exists():
                live.losses.load_state_dict(ckpt.load_weights(folder / "losses.safetensors"))
            self.optimizer.load_state_dict(ckpt.load_pickle_free(folder / "optimizer.pt"))
        else:
            self._check_deepspeed_files(folder)
            ckpt.load_deepspeed(self.model, folder)  # model and optimizer partitions
        if self.ema is not None and (folder / "ema.safetensors").exists():
            self.ema.module.load_state_dict(ckpt.load_weights(folder / "ema.safetensors"))
        self.scheduler.load_state_dict(ckpt.load_pickle_free(folder / "scheduler.pt"))
        if self.acc.scaler is not None and (folder / "scaler.pt").exists():
            self.acc.scaler.load_state_dict(ckpt.load_pickle_free(folder / "scaler.pt"))
        ckpt.set_rng_state(ckpt.load_pickle_free(folder / f"rng_rank{self.rank}.pt"))
        self.state = state
        self.monitor.write(f"resumed from {folder} (step {state.step}, epoch {state.epoch})")

    def _check_deepspeed_files(self, folder: Path) -> None:
        """Rank 0 checks every shard's hash (once, not once per rank); all ranks stop together if one differs."""
        damaged = ckpt.damaged_deepspeed_file(folder) if self.main else None
        if self._agree(damaged is not None):
            raise CheckpointError(damaged or f"checkpoint {folder}: a DeepSpeed shard is damaged (named by rank 0)")

    def _full_state(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """Model and loss weights, whole (collective under DeepSpeed: all ranks call it; see dist.full_state)."""
        return dist.full_state(self.live, self.zero_stage, keep)

    def _plain_states(self) -> dict[str, Any]:
        """Optimizer (unless DeepSpeed shards it), scheduler and fp16 loss scaler, as plain data."""
        states: dict[str, Any] = {"scheduler": self.scheduler.state_dict()}
        if self.zero_stage is None:
            states["optimizer"] = self.optimizer.state_dict()
        if self.acc.scaler is not None:
            states["scaler"] = self.acc.scaler.state_dict()
        return states

    def save(self) -> None:
        """Write a checkpoint of the current step (collective: every rank calls it)."""
        folder = ckpt.tmp_dir(self.run_dir, self.state.step)
        if self.main:
            folder.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        ckpt.write_rank_state(folder, self.rank)
        full = self._full_state(keep=self.main)  # rank 0 writes the consolidated weights
        if self.zero_stage is not None:
            ckpt.save_deepspeed(self.model, folder)
        self.acc.wait_for_everyone()
        if self.main:
            if self.zero_stage is not None:
                ckpt.describe_deepspeed(folder, self.zero_stage)
            weights = {
                "model": _subset(full, "vae."),
                "ema": self.ema.module.state_dict() if self.ema is not None else {},
                "losses": _subset(full, "losses."),
            }
            ckpt.write_main_state(folder, weights, self._plain_states(), self.state)
            ckpt.publish(folder, self.cfg.trainer.keep_checkpoints)
        self.acc.wait_for_everyone()

    # ----- evaluation --------------------------------------------------------------------------------------
    def _eval_modules(self) -> tuple[VAE, nn.Module]:
        """The VAE to evaluate (the EMA copy when kept) and the loss terms. Under DeepSpeed the live weights may
        be partitioned (ZeRO-3) or low precision: a whole fp32 copy is evaluated (collective: all ranks call)."""
        live = self.live
        if self.zero_stage is not None:
            live = self._whole_copy()
        return (self.ema.module if self.ema is not None else live.vae), live.losses

    def _whole_copy(self) -> TrainModule:
        """A plain module holding the current whole fp32 weights (DeepSpeed; collective)."""
        state = self._full_state()
        if self._eval_copy is None:
            with torch.random.fork_rng(devices=[]):  # building must not move the training RNG
                self._eval_copy = TrainModule(build_model(self.cfg.model, self.image), LossSet(self.cfg.losses))
            self._eval_copy.to(self.acc.device)
        self._eval_copy.load_state_dict(state)
        return self._eval_copy

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Val loss with the training weighting at this step, PSNR of posterior-mean reconstructions, and KL
        per latent dim, summed over all ranks' shards."""
        vae, losses = self._eval_modules()
        vae.eval()
        losses.eval()  # terms may train on part of a batch (perceptual batch_fraction), validation is whole
        sums: dict[str, torch.Tensor] = {}
        kl_dims = torch.zeros(vae.latent_dim, device=self.acc.device)
        count = torch.zeros((), device=self.acc.device)
        limit = self.cfg.data.val_max_batches
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.trainer.seed + 7919 * self.rank)
            for i, batch in enumerate(eval_batches(self.val_shards, self.cfg.data.val_batch_size, self.rank,
                                                   self.world, self.image.size, self.cfg.data.on_error)):
                if limit and i >= limit:
                    break
                x, x_in = self._inputs(batch["image"], -1 - i)
                with self.acc.autocast():
                    out = vae(x_in)
                    total, logs = losses(out, x, self.state.step)
                    mean_recon = vae.decode(out.mu)
                n = x.shape[0]
                values = {"loss": total, **logs, "mse": (mean_recon.float() - x).square().mean(),
                          "psnr": psnr(mean_recon, x).mean()}
                for key, value in values.items():
                    sums[key] = sums.get(key, torch.zeros((), device=x.device)) + value.float() * n
                kl_dims += kl_per_dim(out.mu, out.logvar).sum(0)
                count += n
        vae.train()
        losses.train()
        keys = sorted(sums)
        packed = torch.stack([sums[k] for k in keys] + [count]) if keys else count.reshape(1)
        packed = self.acc.reduce(packed, reduction="sum")
        kl_dims = self.acc.reduce(kl_dims, reduction="sum")
        total_n = packed[-1].clamp_min(1)
        result = {f"val/{k}": float(packed[i] / total_n) for i, k in enumerate(keys)}
        mean_kl = kl_dims / total_n
        result["val/active_units"] = float(active_units(mean_kl.unsqueeze(0)))
        self.monitor.histogram("val/kl_per_dim", mean_kl, self.state.step)
        return result

    @torch.no_grad()
    def log_images(self) -> None:
        """Reconstructions of the first val images and samples from fixed latents, as TensorBoard grids."""
        vae, _ = self._eval_modules()
        if not self.main:
            return
        vae.eval()
        x = to_float(next(eval_batches(self.val_shards, 8, 0, 1, self.image.size, self.cfg.data.on_error)
                          )["image"].to(self.acc.device))
        z = torch.randn(16, vae.latent_dim, generator=torch.Generator().manual_seed(0)).to(self.acc.device)
        self.monitor.grid("images/reconstruction", torch.cat([x, vae.decode(vae.encode(x)[0])]), self.state.step,
                          nrow=x.shape[0])
        self.monitor.grid("images/samples", vae.decode(z), self.state.step, nrow=8)
        vae.train()

    # ----- the loop ----------------------------------------------------------------------------------------
    def _stream(self, epoch: int):
        d = self.cfg.data
        spec = StreamSpec(tuple(self.train_shards), d.batch_size, self.batches_per_epoch, self.rank, self.world,
                          self.cfg.trainer.seed, epoch, d.shuffle_buffer, self.image.size, d.on_error)
        return train_loader(spec, d.num_workers)

    def _inputs(self, images: torch.Tensor, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean targets and model inputs (corrupted for denoising, with noise that depends only on seed,
        rank and ``salt``, so a resumed run sees the same corruptions)."""
        clean = to_float(images)
        noisy = clean
        if self.corrupting:
            gen = torch.Generator().manual_seed(hash((self.opts.seed, self.rank, salt)) & 0x7FFFFFFF)
            noisy = corrupt(clean, self.cfg.data.corruption, gen)
        device = self.acc.device
        return clean.to(device, non_blocking=True), noisy.to(device, non_blocking=True)

    def _on_sigterm(self, *_: Any) -> None:
        self._stop_requested = True

    def _audit(self, keys: list[str]) -> None:
        if self.opts.audit_samples:
            with open(self.run_dir / "audit" / f"samples_rank{self.rank}.txt", "a") as fh:
                fh.write(f"{self.state.step} {self.state.epoch} " + " ".join(keys) + "\n")

    def fit(self) -> ckpt.TrainerState:
        """Train; returns the final state. Ends with a checkpoint, so ``resume=true`` always continues."""
        t = self.cfg.trainer
        self.monitor = Monitor(self.run_dir, self.main, t.max_steps, 0, t.progress)
        warning = dist.precision_warning(self.acc.mixed_precision)
        if warning:
            self.monitor.write(f"warning: {warning}")
        self._resume_or_start()
        self.monitor.progress(self.state.step, {})
        if t.audit_samples:
            (self.run_dir / "audit").mkdir(exist_ok=True)
        if t.retain_freed_memory:
            retain_freed_memory()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            with frozen_heap():
                self._loop()
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.save()
        if t.audit_samples:
            digest = state_digest(self._full_state())
            (self.run_dir / "audit" / f"params_rank{self.rank}.txt").write_text(digest + "\n")
        self.monitor.close()
        return self.state

    def _loop(self) -> None:
        t, s = self.opts, self.state
        start, window_start, data_wait = time.monotonic(), time.monotonic(), 0.0
        seconds_before = s.train_seconds
        if t.time_budget is not None and seconds_before >= t.time_budget:
            return  # a resumed run whose budget is used up
        window_images, consecutive_bad = 0, 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        while s.step < t.max_steps:
            batches = iter(self._stream(s.epoch))
            for _ in range(s.batch_in_epoch):  # replay this epoch's stream up to the resume point
                next(batches)
            while s.batch_in_epoch < self.batches_per_epoch and s.step < t.max_steps:
                tick = time.monotonic()
                batch = next(batches)
                data_wait += time.monotonic() - tick
                self.data_skipped += int(batch["skipped"])
                self._audit(batch["key"])
                x, x_in = self._inputs(batch["image"], s.step)
                with self.acc.accumulate(self.model):
                    with self.acc.autocast():
                        total, logs, out = self.model(x_in.to(self.input_dtype), x, s.step)
                    self.acc.backward(total)
                    synced = self.acc.sync_gradients
                    if synced:
                        s.train_seconds = seconds_before + time.monotonic() - start
                        self._measure_budget()
                        grad_norm, applied = self._optimizer_step(params, clip, total)
                        if applied:
                            self.scheduler.step()
                            self._update_ema(s.step)
                            consecutive_bad = 0
                        else:
                            s.nonfinite_skipped += 1
                            consecutive_bad += 1
                        self.optimizer.zero_grad(set_to_none=True)
                s.batch_in_epoch += 1
                s.images_seen += x.shape[0] * self.world
                window_images += x.shape[0] * self.world
                if not synced:
                    continue
                s.step += 1
                if consecutive_bad >= t.max_nonfinite:
                    self.save()
                    raise VaeforgeError(
                        f"{consecutive_bad} consecutive non-finite losses or gradients at step {s.step}: stopping "
                        f"(checkpoint saved in {self.run_dir}); lower optim.lr or check the data"
                    )
                if s.step % t.log_every == 0 or s.step == t.max_steps:
                    elapsed = time.monotonic() - window_start
                    self._log_train(total, logs, out, grad_norm, window_images / max(elapsed, 1e-9),
                                    data_wait / max(elapsed, 1e-9))
                    window_start, data_wait, window_images = time.monotonic(), 0.0, 0
                if t.val_every and s.step % t.val_every == 0:
                    self._log_val()
                if t.image_every and s.step % t.image_every == 0:
                    self.log_images()
                if t.checkpoint_every and s.step % t.checkpoint_every == 0:
                    self.save()
                timed_out = (t.max_time is not None and time.monotonic() - start >= t.max_time
                             or self.budget_used >= 1.0)
                if self._agree(timed_out or self._stop_requested):
                    self.monitor.write(f"stopping at step {s.step} ({'time limit' if timed_out else 'signal'})")
                    return
            if s.batch_in_epoch >= self.batches_per_epoch:
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0

    def _measure_budget(self) -> None:
        """Set the fraction of ``trainer.time_budget`` used, by rank 0's clock: every rank's lr must be equal."""
        budget = self.opts.time_budget
        if budget is None:
            return
        seconds = torch.tensor([self.state.train_seconds], dtype=torch.float64, device=self.acc.device)
        if self.world > 1:
            seconds = broadcast(seconds, from_process=0)
        self.budget_used = float(seconds[0]) / budget

    def _optimizer_step(self, params: list[nn.Parameter], clip: float, loss: torch.Tensor) -> tuple[float, bool]:
        """Clip and step; returns the gradient norm and whether the update was applied. A non-finite update is
        skipped: by the fp16 GradScaler or DeepSpeed themselves (they also lower the loss scale; DeepSpeed has
        already stepped inside ``backward``), otherwise here."""
        if self.zero_stage is not None:
            norm = self.acc.clip_grad_norm_(params, clip)  # DeepSpeed: its own norm (it clips by its config)
        else:
            self.acc.unscale_gradients()  # fp16: the true gradients (no-op otherwise)
            norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)  # CPU default: a per-tensor loop
        norm = float("nan") if norm is None else float(norm)
        if self.acc.scaler is not None or self.zero_stage is not None:
            self.optimizer.step()
            return norm, not self.optimizer.step_was_skipped
        if not (math.isfinite(norm) and bool(torch.isfinite(loss.detach()))):
            return norm, False
        self.optimizer.step()
        return norm, True

    def _update_ema(self, step: int) -> None:
        covered = ema_schedule.steps_covered(step, self.opts.ema_every)
        if self.ema is None or not covered:  # before gathering: under ZeRO-3 that is a collective
            return
        vae = self.live.vae
        with dist.gathered(vae.parameters(), self.zero_stage):
            ema_schedule.update(self.ema, vae, step, covered)

    def _log_train(self, total, logs, out, grad_norm, images_per_sec: float, wait_fraction: float) -> None:
        s = self.state
        reduced = self.acc.reduce(torch.stack([total.detach().float(), *[v.float() for v in logs.values()]]),
                                  reduction="mean")
        values = {"train/loss": float(reduced[0])}
        values.update({f"train/{k}": float(v) for k, v in zip(logs, reduced[1:])})
        kl_dims = kl_per_dim(out.mu.detach(), out.logvar.detach())
        values.update({
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": grad_norm,
            "train/nonfinite_skipped": s.nonfinite_skipped,
            "train/data_skipped": float(self.acc.reduce(torch.tensor(float(self.data_skipped), device=self.acc.device),
                                                        reduction="sum")),
            "train/active_units": active_units(kl_dims),
            "perf/images_per_sec": images_per_sec,
            "perf/data_wait_fraction": wait_fraction,
            "progress/epoch": s.epoch,
            "progress/train_seconds": s.train_seconds,
        })
        self.monitor.scalars(values, s.step)
        self.monitor.histogram("latent/mu", out.mu, s.step)
        self.monitor.histogram("latent/logvar", out.logvar, s.step)
        self.monitor.histogram("latent/kl_per_dim", kl_dims.mean(0), s.step)
        self.monitor.progress(s.step, {"loss": f"{values['train/loss']:.4g}", "img/s": f"{images_per_sec:.0f}"})

    def _log_val(self) -> None:
        result = self.validate()
        self.monitor.scalars(result, self.state.step)
        self.monitor.write(f"step {self.state.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))

    def close(self) -> None:
        self.acc.wait_for_everyone()
        self.acc.end_training()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        with contextlib.suppress(AttributeError):
            self._lock.close()
