"""Scale-out on CPU, through the shipped accelerate configs: DDP, DeepSpeed ZeRO-2 and ZeRO-3 with 2 processes
train on the real LFW shards, agree with a 1-process computation on the same global batches, and resume from
their own checkpoints; bf16 tracks fp32; launches that would silently run another setup are refused."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import BIN, PY, TINY, env, free_port, run
from vaeforge.config import available_recipes, load_config
from vaeforge.errors import ConfigError
from vaeforge.train.distributed import (DEEPSPEED_CONFIG, Launch, check_launch, find_deepspeed_config, native_bf16,
                                       resolve_precision)

REPO = Path(__file__).resolve().parents[1]
# DeepSpeed JIT-compiles a comm op on first use (~40 s): keep it in a stable folder of this venv (a folder shared
# by venvs with other paths is rebuilt by each in turn).
EXTENSIONS = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

# Parameters after the same optimizer steps on the same global batches (fp32 AdamW, lr 1e-3, steps of ~1e-3):
# each 2-process run vs the 1-process reference, max absolute difference. The comparison uses the MLP recipe:
# conv biases in front of a GroupNorm get gradients that are pure rounding noise, which Adam turns into
# lr-sized steps of random sign, so they cannot agree between any two summation orders.
PARAM_ATOL = 1e-6
# bf16 autocast vs fp32 over the same 40 steps: train/loss at every logged step within this relative gap.
BF16_LOSS_RTOL = 0.005

COMPARE = [
    "recipe=lfw_mlp", "trainer.mixed_precision=no", "model.latent_dim=16", "model.backbone.args.hidden=[64,32]",
    "data.batch_size=16",
    "data.num_workers=0", "data.val_max_batches=2", "data.val_batch_size=32", "trainer.log_every=4",
    "trainer.progress=false", "optim.schedule=constant", "optim.warmup_steps=0", "trainer.audit_samples=true",
    "trainer.val_every=4", "trainer.image_every=4", "trainer.checkpoint_every=0",
    "trainer.ema_every=3",  # EMA updates after steps 0, 1, 2, 5: one of them covers steps of both launches
]
STEPS = (4, 8)  # first launch trains to 4 (its final checkpoint), the second resumes from it to 8


def accelerate(config: str, *args: str, extra_env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file recipes/accelerate/<config>.yaml -m vaeforge.train ...`` from the repo."""
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", f"recipes/accelerate/{config}.yaml",
           "--main_process_port", str(free_port()), "-m", "vaeforge.train", *args]
    return run(cmd, cwd=REPO, env=env(TORCH_EXTENSIONS_DIR=EXTENSIONS, GLOO_SOCKET_IFNAME="lo", **(extra_env or {})),
               **kw)


def concurrently(commands: list[tuple[list[str], dict[str, str]]]) -> list[subprocess.CompletedProcess]:
    """Run (command, extra environment) pairs side by side; stdout and stderr merged into ``stdout``."""
    procs = [subprocess.Popen(cmd, env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, extra in commands]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, out, "") for p, out in zip(procs, outputs)]


def audited_keys(run_dir: Path, world: int) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """keys[step][rank]: the samples each rank trained on at each step (from ``trainer.audit_samples``)."""
    per_rank = [[tuple(line.split()[2:]) for line in (run_dir / "audit" / f"samples_rank{r}.txt").read_text()
                 .splitlines()] for r in range(world)]
    return tuple(zip(*per_rank))


def images_by_key(shards: Path, wanted: set[str]) -> dict[str, torch.Tensor]:
    from vaeforge.data.stream import eval_batches
    from vaeforge.data.manifest import read_manifest, shard_paths

    found: dict[str, torch.Tensor] = {}
    for batch in eval_batches(shard_paths(shards, read_manifest(shards), "train"), 256, 0, 1):
        found.update({k: img for k, img in zip(batch["key"], batch["image"]) if k in wanted})
        if len(found) == len(wanted):
            break
    return found


@functools.cache  # the three launches train on the same samples: compute the reference once
def one_process_reference(shards: Path, keys: tuple[tuple[tuple[str, ...], ...], ...],
                          overrides: tuple[str, ...]) -> list[dict]:
    """The 1-process computation of the same training: at every step the global batch is the union of the
    ranks' batches, each half with the latent noise its rank drew (seeded like the engine), gradients averaged,
    clipped, one AdamW step, one EMA update. Returns the model and EMA weights after each step."""
    from accelerate.utils import set_seed
    from vaeforge.train.ema import WeightAverage

    from vaeforge.models.objective import LossSet
    from vaeforge.models.vae import ImageSpec, build_model
    from vaeforge.cli.args import parse_overrides
    from vaeforge.train.__main__ import resolve_config
    from vaeforge.train.builders import TrainModule

    cfg = resolve_config(parse_overrides([*overrides, f"data.shards={shards}"]))
    world = len(keys[0])
    images = images_by_key(shards, {k for step in keys for rank in step for k in rank})
    set_seed(cfg.trainer.seed)
    module = TrainModule(build_model(cfg.model, ImageSpec(64, 3)), LossSet(cfg.losses))
    ema = WeightAverage(module.vae, cfg.trainer.ema_decay)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay, fused=True)
    rng = []
    for rank in range(world):
        set_seed(cfg.trainer.seed + rank)
        rng.append(torch.get_rng_state())
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched rank (OMP_NUM_THREADS=1): oneDNN's sums can depend on the count
    try:
        for step, ranks in enumerate(keys):
            history.append(_reference_step(module, ema, optimizer, params, images, rng, cfg, step, ranks, world))
    finally:
        torch.set_num_threads(threads)
    return history


def _reference_step(module, ema, optimizer, params, images, rng, cfg, step, ranks, world) -> dict:
    """One step of the 1-process reference: every rank's half of the global batch, averaged gradients."""
    from vaeforge.train import ema as ema_schedule
    from vaeforge.train.builders import to_float

    optimizer.zero_grad(set_to_none=True)
    for rank, batch_keys in enumerate(ranks):
        torch.set_rng_state(rng[rank])
        x = to_float(torch.stack([images[k] for k in batch_keys]))
        total, _, _ = module(x, x, step)
        (total / world).backward()
        rng[rank] = torch.get_rng_state()
    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip, foreach=True)
    optimizer.step()
    covered = ema_schedule.steps_covered(step, cfg.trainer.ema_every)
    if covered:
        ema_schedule.update(ema, module.vae, step, covered)
    return {"model": {k: v.clone() for k, v in module.vae.state_dict().items()},
            "ema": {k: v.clone() for k, v in ema.module.state_dict().items()}}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("config", ["ddp", "zero2", "zero3"])
def test_two_processes_agree_with_one_process_and_resume(config, lfw64, tmp_path):
    run_dir = tmp_path / config
    args = [*COMPARE, f"data.shards={lfw64}", f"run_dir={run_dir}"]
    accelerate(config, *args, f"trainer.max_steps={STEPS[0]}")
    resumed = accelerate(config, *args, "resume=true", f"trainer.max_steps={STEPS[1]}")
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{STEPS[0]:08d}'}" in resumed.stdout + resumed.stderr

    info = json.loads((run_dir / "run.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo" and len(info["devices"]) == 2
    assert all(d.startswith("cpu") for d in info["devices"])
    stage = {"ddp": None, "zero2": 2, "zero3": 3}[config]
    assert info["distributed_type"] == ("MULTI_CPU" if stage is None else "DEEPSPEED")
    assert (info["deepspeed"] or {}).get("zero_stage") == stage
    digests = {(run_dir / "audit" / f"params_rank{r}.txt").read_text() for r in range(2)}
    assert len(digests) == 1  # every rank ends with the same whole weights

    keys = audited_keys(run_dir, 2)
    assert len(keys) == STEPS[1]
    reference = one_process_reference(lfw64, keys, tuple(COMPARE))
    for step in STEPS:
        folder = run_dir / "checkpoints" / f"step_{step:08d}"
        assert (folder / "deepspeed.json").exists() == (stage is not None)
        for part in ("model", "ema"):
            gap = max_difference(load_file(str(folder / f"{part}.safetensors")), reference[step - 1][part])
            print(f"{config} step {step} {part}: max |2-process - 1-process| = {gap:.2e}")
            assert gap < PARAM_ATOL, (config, step, part, gap)
    check_checkpoint_guards(run_dir / "checkpoints" / f"step_{STEPS[1]:08d}", stage)
    if stage == 3:  # through the engine, once: rank 0 names the damaged shard and every rank stops
        damaged = accelerate(config, *args, "resume=true", f"trainer.max_steps={STEPS[1] + 1}", check=False)
        assert damaged.returncode != 0 and "is damaged or missing (SHA-256 differs" in damaged.stderr


def check_checkpoint_guards(folder: Path, stage: int | None) -> None:
    """A checkpoint is refused by a launch of another kind, and a damaged DeepSpeed shard is named before
    DeepSpeed's (unpickling) loader would read it."""
    from vaeforge.errors import CheckpointError
    from vaeforge.runs import checkpoints as ckpt

    ckpt.check_layout(folder, stage)
    written = "without DeepSpeed" if stage is None else f"by DeepSpeed ZeRO-{stage}"
    for other in {None, 2, 3} - {stage}:
        with pytest.raises(CheckpointError, match=f"was written {written}, this run uses"):
            ckpt.check_layout(folder, other)
    if stage is None:
        return
    assert ckpt.damaged_deepspeed_file(folder) is None
    shard = sorted((folder / "deepspeed").glob("*optim_states.pt"))[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert ckpt.damaged_deepspeed_file(folder) == (f"checkpoint file {shard} is damaged or missing "
                                                   "(SHA-256 differs from deepspeed.json)")


def final_losses(run_dir: Path) -> list[tuple[int, float]]:
    tb = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    tb.Reload()
    return [(e.step, e.value) for e in tb.Scalars("train/loss")]


def test_bf16_on_cpu_tracks_fp32(lfw64, tmp_path):
    """Same seed, data and steps: bf16 autocast's loss stays within BF16_LOSS_RTOL of fp32's at every log. The
    bf16 run's recipe says ``auto`` and its launcher bf16: the launcher's choice is what trains."""
    runs = {"no": tmp_path / "fp32", "bf16": tmp_path / "bf16"}
    args = [*TINY, f"data.shards={lfw64}", "trainer.max_steps=40", "trainer.val_every=0", "trainer.image_every=0"]
    finished = concurrently([
        ([PY, "-m", "vaeforge.train", *args, f"run_dir={runs['no']}"], {}),
        ([PY, "-m", "vaeforge.train", *args, f"run_dir={runs['bf16']}", "trainer.mixed_precision=auto"],
         {"ACCELERATE_MIXED_PRECISION": "bf16"}),
    ])
    assert all(proc.returncode == 0 for proc in finished), [proc.stdout[-3000:] for proc in finished]
    assert json.loads((runs["bf16"] / "run.json").read_text())["mixed_precision"] == "bf16"
    # on a CPU without native bf16 (AVX2 only) the run says it is ~20x slower than it needs to be
    assert ("warning: trainer.mixed_precision=bf16 on a CPU without native bf16" in finished[1].stdout) \
        == (not native_bf16())
    fp32, bf16 = final_losses(runs["no"]), final_losses(runs["bf16"])
    assert [s for s, _ in fp32] == [s for s, _ in bf16] == list(range(5, 45, 5))
    gaps = [abs(b - a) / abs(a) for (_, a), (_, b) in zip(fp32, bf16)]
    print("bf16 vs fp32 relative loss gap per log:", " ".join(f"{g:.4f}" for g in gaps))
    assert max(gaps) < BF16_LOSS_RTOL
    assert fp32[-1][1] < 0.9 * fp32[0][1] and bf16[-1][1] < 0.9 * bf16[0][1]  # both actually train


def launched(precision: str) -> Launch:
    """A one-process launch whose launcher asked for ``precision``."""
    return Launch(world_size=1, deepspeed=False, precision=precision, single_cpu_trap=False)


def test_resolve_precision():
    assert resolve_precision("auto", launched("no")) == ("bf16" if native_bf16() else "no")
    assert resolve_precision("auto", launched("fp16")) == "fp16"  # the launcher decides what auto means
    assert [resolve_precision(p, launched("no")) for p in ("no", "bf16", "fp16")] == ["no", "bf16", "fp16"]
    with pytest.raises(ConfigError, match=r"unknown trainer.mixed_precision 'fp8' \(valid: auto, bf16, fp16, no; did you mean 'fp16'\?\)"):
        resolve_precision("fp8", launched("no"))


def test_the_accelerate_configs_find_their_deepspeed_json_outside_a_checkout(tmp_path, monkeypatch):
    """``recipes/deepspeed/zero2.json`` (what recipes/accelerate/zero2.yaml names) is the shipped copy where the
    working folder has none, the working folder's own where it has one; other names are left alone."""
    monkeypatch.chdir(tmp_path)
    shipped = Path(str(resources.files("vaeforge.recipes"))) / "deepspeed" / "zero2.json"
    names = ["recipes/deepspeed/zero2.json", "recipes/deepspeed/zero9.json", "mine/zero2.json", str(shipped)]
    found = []
    for name in names:
        env = {DEEPSPEED_CONFIG: name}
        find_deepspeed_config(env)
        found.append(env[DEEPSPEED_CONFIG])
    assert found == [str(shipped), *names[1:]]
    (tmp_path / "recipes" / "deepspeed").mkdir(parents=True)
    (tmp_path / "recipes" / "deepspeed" / "zero2.json").write_text("{}")
    env = {DEEPSPEED_CONFIG: names[0]}
    find_deepspeed_config(env)
    assert env == {DEEPSPEED_CONFIG: names[0]}


@pytest.mark.parametrize("recipe", sorted(available_recipes()))
def test_a_launcher_s_mixed_precision_never_breaks_a_shipped_recipe(recipe):
    """``accelerate config`` saying bf16 (ACCELERATE_MIXED_PRECISION) trains every shipped recipe in bf16: none
    pins a precision, and ``auto`` is the schema's default for a recipe that says nothing."""
    cfg = load_config({"recipe": recipe})
    precision = resolve_precision(cfg.trainer.mixed_precision, launched("bf16"))
    assert precision == "bf16"
    check_launch(launched("bf16"), precision)


def test_auto_precision_trains_in_the_hardware_s_choice(lfw64, tmp_path):
    """lfw_unet's ``auto``: bf16 where the CPU computes it natively, fp32 on an AVX2-only CPU; recorded in
    run.json while config.yaml keeps ``auto`` (a resume elsewhere chooses again)."""
    run([PY, "-m", "vaeforge.train", *TINY, f"data.shards={lfw64}", f"run_dir={tmp_path}", "trainer.max_steps=2",
         "trainer.mixed_precision=auto", "trainer.val_every=0", "trainer.image_every=0"])
    assert json.loads((tmp_path / "run.json").read_text())["mixed_precision"] == ("bf16" if native_bf16() else "no")
    assert "mixed_precision: auto" in (tmp_path / "config.yaml").read_text()


def test_launches_that_would_silently_differ_are_refused(lfw64, tmp_path):
    args = [*TINY, f"data.shards={lfw64}", f"run_dir={tmp_path / 'run'}", "trainer.max_steps=2"]
    cpu_trap, fp16, disagree = concurrently([
        ([str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
          "--main_process_port", str(free_port()), "-m", "vaeforge.train", *args], {}),
        ([PY, "-m", "vaeforge.train", *args, "trainer.mixed_precision=fp16"], {}),
        ([PY, "-m", "vaeforge.train", *args], {"ACCELERATE_MIXED_PRECISION": "bf16"}),
    ])
    assert cpu_trap.returncode != 0 and "accelerate launch --cpu starts ONE process" in cpu_trap.stdout
    assert fp16.returncode == 2 and "fp16 needs a GPU" in fp16.stdout
    assert disagree.returncode == 2 and "the launcher asked for mixed precision 'bf16'" in disagree.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()
