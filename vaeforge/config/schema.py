"""The typed schema of a training recipe. Every key a recipe or an override may set is declared here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from omegaconf import MISSING

from ..data.corrupt import CorruptionConfig
from .fields import above, at_least, between, choice, switch

ON_ERROR = ("raise", "skip")  # data.on_error
SCHEDULES = ("constant", "cosine", "linear")  # optim.schedule
PRECISIONS = ("auto", "no", "bf16", "fp16")  # trainer.mixed_precision


@dataclass
class PluginSpec:
    """A plugin by name, with the arguments its own config dataclass validates."""

    name: str = MISSING  # a registered plugin (`vaeforge plugins`)
    args: Dict[str, Any] = field(default_factory=dict)  # the plugin's options (see its section)


@dataclass
class LossSpec:
    """One loss term: a loss plugin, its weight in the total, and its arguments."""

    name: str = MISSING
    weight: float = at_least(0, 1.0)  # 0 switches the term off (it is not built)
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    shards: str = "data/lfw64"  # a prepared dataset's folder or http(s) URL, or its shards by pattern (.../train-{000000..000015}.tar, in a pipe: too)
    manifest: Optional[str] = None  # where manifest.json is when not beside the shards (a path, URL or pipe: command)
    batch_size: int = at_least(1, 64)  # per process; the global batch is batch_size x processes x grad_accum
    num_workers: int = at_least(0, 1)  # loader worker processes per rank
    shuffle_buffer: int = at_least(1, 2000)  # samples held for shuffling in each worker
    val_batch_size: int = at_least(1, 128)  # batch size of validation passes
    val_max_batches: int = at_least(0, 0)  # 0: the whole val split
    on_error: str = choice("raise", ON_ERROR)  # bad shard or sample: raise (naming it) or skip (count, warn, refill)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)  # denoising: corrupt inputs only


@dataclass
class ModelConfig:
    latent_dim: int = at_least(1, 128)  # size of the vector latent z; for a spatial backbone (latent tensors z [c, h, w]) its channels c
    backbone: PluginSpec = field(default_factory=PluginSpec)


@dataclass
class OptimConfig:
    lr: float = above(0, 1e-3)  # peak learning rate (AdamW)
    weight_decay: float = at_least(0, 0.0)  # AdamW decoupled weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    schedule: str = choice("cosine", SCHEDULES)  # the lr after warm-up
    warmup_steps: int = at_least(0, 100)  # linear learning-rate warm-up from 0
    min_lr_ratio: float = between(0, 1, 0.1)  # final lr / lr for cosine and linear
    grad_clip: float = at_least(0, 1.0)  # max global grad norm; 0 disables clipping


@dataclass
class TrainerConfig:
    max_steps: int = at_least(1, 10_000)  # optimizer steps
    max_time: Optional[float] = above(0, None)  # seconds of training in this session; stops with a checkpoint
    time_budget: Optional[float] = above(0, None)  # training seconds across resumes: the run ends there, the lr decays over it
    grad_accum: int = at_least(1, 1)  # micro-batches per optimizer step
    mixed_precision: str = choice("auto", PRECISIONS)  # auto: the launcher's, else bf16 where the device computes it natively, else fp32
    ema_decay: float = between(0, 1, 0.999)  # per-step decay of the EMA of weights; 0 disables it
    ema_every: int = at_least(1, 1)  # steps between EMA updates, each standing for that many (decay ** ema_every): cheaper
    seed: int = 0  # same seed, same run (weights, data order, noise)
    log_with: List[str] = field(default_factory=lambda: ["tensorboard"])  # experiment trackers (accelerate's: tensorboard, mlflow, wandb, comet_ml, aim, clearml, dvclive, swanlab, trackio): each gets the scalars and the config; TensorBoard (run_dir/tb) also histograms, image grids and HParams; [] logs nowhere
    tracker_project: str = "vaeforge"  # the trackers' project: MLflow's experiment (MLFLOW_EXPERIMENT_NAME overrides), W&B's project, ...
    log_every: int = at_least(1, 25)  # steps between scalar logs
    val_every: int = at_least(0, 500)  # steps between validation passes; 0 disables
    image_every: int = at_least(0, 500)  # reconstruction and sample grids in TensorBoard; 0 disables
    checkpoint_every: int = at_least(0, 500)  # steps between checkpoints (one is always written at the end); 0: only at the end
    keep_checkpoints: int = at_least(1, 3)  # newest checkpoints kept; older ones are deleted
    max_nonfinite: int = at_least(1, 20)  # consecutive skipped (non-finite) updates before the run stops
    progress: bool = True  # tqdm bar on rank 0
    audit_samples: bool = False  # write the keys of every training sample each rank saw to run_dir/audit/
    retain_freed_memory: bool = True  # glibc keeps memory freed by a step for the next (no page faults per step)
    channels_last: Union[bool, str] = switch("off")  # NHWC weights and images; auto: where measured faster (docs/benchmarks.md#utilisation)
    compile: Union[bool, str] = switch("off")  # torch.compile the backbone, loss terms and owned modules; auto: where measured faster, runs of >= 10000 steps and 20 min
    compile_mode: str = choice("default", ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))  # torch.compile's mode (reduce-overhead: CUDA graphs)


@dataclass
class RunConfig:
    recipe: str = ""  # a recipe name (`vaeforge recipes`) or a path to a YAML file
    run_dir: str = ""  # default: runs/<recipe>
    resume: bool = False  # continue from the newest checkpoint in run_dir (starts fresh when there is none)
    plugins: List[str] = field(default_factory=list)  # extra modules to import for their plugins
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: Dict[str, LossSpec] = field(default_factory=dict)  # term name -> {name, weight, args}; the total is the weighted sum
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    by_precision: Optional[Dict[str, Dict[str, Any]]] = None  # settings by the precision trainer.mixed_precision resolves to where the run trains: {no (fp32) | bf16 | fp16: {key: value}}; the command line wins; applied when training starts, then cleared (a run folder's config holds what ran); null: none
