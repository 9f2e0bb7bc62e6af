"""Recipes, overrides and the typed schema: valid configs resolve, every mistake is one clear line."""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import pytest
from omegaconf import OmegaConf

from helpers import PY, run
from vaeforge.config import available_recipes, load_config, save_config
from vaeforge.config.loader import apply_by_precision
from vaeforge.errors import ConfigError
from vaeforge.train.__main__ import main as train_main


def test_recipes_resolve_with_overrides():
    assert {"lfw_unet", "lfw_mlp"} <= set(available_recipes())
    cfg = load_config({"recipe": "lfw_unet", "trainer.max_steps": 7, "losses.kl.args.beta": 0.5})
    assert cfg.trainer.max_steps == 7 and cfg.losses.kl.args.beta == 0.5
    assert cfg.model.backbone.name == "unet" and cfg.run_dir == "runs/lfw_unet"


def test_recipe_base_inherits(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("base: lfw_mlp\nmodel:\n  latent_dim: 7\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config({"recipe": "mine"})
    assert cfg.model.latent_dim == 7 and cfg.model.backbone.name == "mlp"


def test_saved_config_round_trips(tmp_path):
    cfg = load_config({"recipe": "lfw_mlp", "data.batch_size": 3})
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config({"trainer.max_steps": 9}, saved=tmp_path / "config.yaml")
    assert again.data.batch_size == 3 and again.trainer.max_steps == 9
    assert OmegaConf.to_container(again.model) == OmegaConf.to_container(cfg.model)


@pytest.mark.parametrize("args, expected", [
    ({"recipe": "lfw_unte"}, "unknown recipe 'lfw_unte' (valid: lfw_denoise, lfw_kl_f4, lfw_kl_f8, lfw_mlp, lfw_resnet"),
    ({"recipe": "lfw_unte"}, "; did you mean 'lfw_unet'?)"),
    ({"recipe": "lfw_unet", "trainer.max_stepz": 3}, "did you mean 'max_steps'?"),
    ({"recipe": "lfw_unet", "trainr.max_steps": 3}, "did you mean 'trainer'?"),
    ({"recipe": "lfw_unet", "trainer.max_steps": "abc"}, "bad value for 'trainer.max_steps'"),
    ({}, "no recipe given"),
    ({"recipe": "lfw_unet", "by_precision.fp32.model.latent_dim": 8}, "by_precision.fp32: fp32 is called 'no' there"),
    ({"recipe": "lfw_unet", "by_precision.bf61.model.latent_dim": 8},
     "unknown by_precision key 'bf61' (valid: bf16, fp16, no; did you mean 'bf16'?)"),
    ({"recipe": "lfw_unet", "by_precision.no.model.latent_dimm": 8},
     "unknown key 'model.latent_dimm' in by_precision.no (at model: valid: backbone, latent_dim; did you mean"),
    ({"recipe": "lfw_unet", "by_precision.no.model.latent_dim": "x"}, "bad value for 'model.latent_dim' in by_precision.no"),
])
def test_config_errors(args, expected):
    with pytest.raises(ConfigError) as err:
        load_config(args)
    assert expected in str(err.value)


def train_in_process(args: list[str]) -> tuple[int, str]:
    """The training entry point called in this process (fast, the unit tier): its exit status and stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_:
        train_main(args)
    return exit_.value.code, stderr.getvalue()


def train_process(args: list[str]) -> tuple[int, str]:
    """``python -m vaeforge.train`` as a user runs it: its exit status and stderr."""
    proc = run([PY, "-m", "vaeforge.train", *args], check=False)
    return proc.returncode, proc.stderr


BAD_INPUT = [
    ("recipe=lfw_unte", "did you mean 'lfw_unet'?"),
    ("model.backbone.name=unett", "unknown backbone plugin 'unett' (valid: autoencoder_kl, mlp, resnet, unet; did you mean 'unet'?)"),
    ("losses.kl.name=kll", "unknown loss plugin 'kll'"),
    ("model.backbone.args.widthz=[1]", "did you mean 'widths'?"),
    ("losses.kl.args.beta=abc", "bad value for 'beta'"),
    ("trainer.max_stepz=1", "did you mean 'max_steps'?"),
    ("notakeyvalue", "is not of the form key=value"),
    ("trainer.time_budget=0", "trainer.time_budget must be > 0 or null, got 0"),
    ("trainer.ema_every=0", "trainer.ema_every must be >= 1, got 0"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.batch_size=-3", "data.batch_size must be >= 1, got -3"),
    ("trainer.grad_accum=0", "trainer.grad_accum must be >= 1, got 0"),
    ("trainer.log_every=0", "trainer.log_every must be >= 1, got 0"),
    ("trainer.max_steps=-5", "trainer.max_steps must be >= 1, got -5"),
    ("trainer.ema_decay=2", "trainer.ema_decay must be >= 0 and <= 1, got 2"),
    ("optim.lr=-1", "optim.lr must be > 0, got -1"),
    ("model.latent_dim=0", "model.latent_dim must be >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("optim.schedule=cosinus", "unknown optim.schedule 'cosinus' (valid: constant, cosine, linear; did you mean 'cosine'?)"),
    ("trainer.mixed_precision=bf61", "unknown trainer.mixed_precision 'bf61' (valid: auto, bf16, fp16, no; did you mean"),
    ("trainer.compile=maybe", "unknown trainer.compile 'maybe' (valid: auto, off, on)"),
    ("losses.kl.args.beta=-1", "loss 'kl' (kl): beta must be >= 0, got -1"),
    ("losses.recon.args.kind=ms", "loss 'recon' (recon): unknown kind 'ms' (valid: bce, gaussian_nll, l1, mse; did you"),
    ("trainer.log_with=[tensorboard,mlfow]", "unknown trainer.log_with tracker 'mlfow' (valid: aim, clearml, comet_ml, "
                                             "dvclive, mlflow, swanlab, tensorboard, trackio, wandb; did you mean 'mlflow'?)"),
    ("trainer.log_with=[comet_ml]", "trainer.log_with names comet_ml, which is not installed: pip install comet-ml"),
]
# Also as real processes (python -m vaeforge.train): one case of each place an error is raised (recipe, plugin
# name, plugin option key and value, schema key, argument form, schema range and choice, tracker) shows the
# entry point's exit status and one-line stderr; the rest would repeat the same path.
AS_PROCESS = {"recipe=lfw_unte", "model.backbone.name=unett", "model.backbone.args.widthz=[1]",
              "losses.kl.args.beta=abc", "trainer.max_stepz=1", "notakeyvalue", "trainer.time_budget=0",
              "trainer.mixed_precision=bf61", "trainer.log_with=[comet_ml]"}


@pytest.mark.parametrize("override, expected, launch", [
    *[pytest.param(o, e, train_in_process, id=f"{o}-in_process") for o, e in BAD_INPUT],
    *[pytest.param(o, e, train_process, id=f"{o}-process", marks=pytest.mark.integration)
      for o, e in BAD_INPUT if o in AS_PROCESS],
])
def test_train_cli_rejects_bad_input_in_one_line(override: str, expected: str,
                                                 launch: Callable[[list[str]], tuple[int, str]]):
    args = [override] if override.startswith("recipe=") else ["recipe=lfw_unet", override]
    code, stderr = launch(args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("vaeforge: error:") and expected in lines[-1], stderr
    assert "Traceback" not in stderr


def test_replacing_a_plugin_drops_the_recipe_args_of_the_old_one():
    cfg = load_config({"recipe": "lfw_unet", "model.backbone.name": "mlp", "model.backbone.args.hidden": [8]})
    assert dict(cfg.model.backbone.args) == {"hidden": [8]}
    same = load_config({"recipe": "lfw_unet", "model.backbone.name": "unet"})
    assert "widths" in same.model.backbone.args


def test_by_precision_settings_apply_for_the_precision_that_trains_under_the_command_line():
    """lfw_unet trains narrower stages in fp32; the precision is resolved where the run trains, so a config loaded
    elsewhere (a submit, a login node) keeps the settings; a key on the command line wins for every precision."""
    here = {p: load_config({"recipe": "lfw_unet"}, precision=lambda cfg, p=p: p) for p in ("no", "bf16")}
    assert list(here["no"].model.backbone.args.widths) == [32, 64, 128]
    assert list(here["bf16"].model.backbone.args.widths) == [64, 128, 256]
    assert here["no"].by_precision is None and here["bf16"].by_precision is None  # what ran, nothing pending
    pending = load_config({"recipe": "lfw_unet"})
    assert OmegaConf.to_container(pending.by_precision) == {"no": {"model.backbone.args.widths": [32, 64, 128]}}
    assert apply_by_precision(pending, "no").model.backbone.args.widths == [32, 64, 128]  # Trainer(cfg) callers
    given = load_config({"recipe": "lfw_unet", "model.backbone.args.widths": [8, 16]}, precision=lambda cfg: "no")
    assert list(given.model.backbone.args.widths) == [8, 16]
    added = load_config({"recipe": "lfw_unet", "by_precision.no.model.latent_dim": 64,
                         "model.backbone.args.widths": [8]}, precision=lambda cfg: "no")
    assert added.model.latent_dim == 64 and list(added.model.backbone.args.widths) == [8]
    # recipes over lfw_unet: another backbone drops the unet's settings, lfw_unet_128 drops them all (null)
    for recipe in ("lfw_resnet", "lfw_kl_f8", "lfw_unet_128"):
        base = load_config({"recipe": recipe})
        fp32 = load_config({"recipe": recipe}, precision=lambda cfg: "no")
        assert OmegaConf.to_container(fp32.model) == OmegaConf.to_container(base.model), recipe
    replaced = load_config({"recipe": "lfw_unet", "model.backbone.name": "mlp"}, precision=lambda cfg: "no")
    assert "widths" not in replaced.model.backbone.args
    assert load_config({"recipe": "lfw_unet_nll"}, precision=lambda cfg: "no").model.backbone.args.widths == \
        [32, 64, 128]  # a recipe over lfw_unet with the same backbone inherits them


def test_override_words_stay_words():
    from vaeforge.cli.args import parse_overrides

    args = parse_overrides(["trainer.mixed_precision=no", "resume=true", "optim.betas=[0.5,0.9]", "a=off"])
    assert args == {"trainer.mixed_precision": "no", "resume": True, "optim.betas": [0.5, 0.9], "a": "off"}
    cfg = load_config({"recipe": "lfw_mlp", "trainer.mixed_precision": args["trainer.mixed_precision"]})
    assert cfg.trainer.mixed_precision == "no"
