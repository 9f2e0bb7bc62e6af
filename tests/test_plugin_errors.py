"""Mistakes a plugin author makes end in one line that names the plugin and the fix, before any data is read
where possible: wrong backbone shapes, loss terms that return the wrong thing or NaN, config dataclasses
OmegaConf cannot use, modules that register nothing, a clash with a built-in name, a task's return value."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from helpers import PY, TINY, env, run, train
from vaeforge.api import BackboneParts, LossTerm, LossValue, register_backbone, register_loss
from vaeforge.config.loader import validate_options
from vaeforge.errors import PluginError
from vaeforge.models.objective import LossSet
from vaeforge.models.vae import ImageSpec, build_model
from vaeforge.registry import Registry


class Spec:
    """A stand-in for a config section: ``name`` and ``args`` (and ``weight``, ``latent_dim``)."""

    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


def backbone(encoder_out: int, decoder_shape: tuple[int, ...], feature_dim: int = 16) -> str:
    """Register a backbone whose encoder gives ``[B, encoder_out]`` and decoder ``[B, *decoder_shape]``."""
    name = f"broken_{uuid.uuid4().hex[:6]}"

    class Enc(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], encoder_out)

    class Dec(nn.Module):
        def forward(self, z):
            return torch.zeros(z.shape[0], *decoder_shape)

    register_backbone(name)(lambda cfg, image, latent_dim: BackboneParts(Enc(), Dec(), feature_dim))
    return name


def build(name: str):
    return build_model(Spec(backbone=Spec(name=name, args={}), latent_dim=8), ImageSpec(64))


@pytest.mark.parametrize("encoder_out,decoder_shape,expected", [
    (16, (1, 64, 64), "decoder output is [2, 1, 64, 64], expected [2, 3, 64, 64]"),  # one channel: trains silently
    (16, (3, 32, 32), "decoder output is [2, 3, 32, 32], expected [2, 3, 64, 64]"),  # half size
    (24, (3, 64, 64), "encoder output is [2, 24], expected [2, 16]: make it match feature_dim"),
])
def test_backbone_with_wrong_shapes_is_named_when_built(encoder_out, decoder_shape, expected):
    name = backbone(encoder_out, decoder_shape)
    with pytest.raises(PluginError) as err:
        build(name)
    message = str(err.value)
    assert f"backbone '{name}'" in message and expected in message and "\n" not in message


def loss_set(result) -> LossSet:
    name = f"bad_{uuid.uuid4().hex[:6]}"

    @register_loss(name)
    class Bad(LossTerm):
        def forward(self, out, target, step):
            return result

    return LossSet({"mine": Spec(name=name, weight=1.0, args={})})


@pytest.mark.parametrize("result,expected", [
    (torch.tensor(1.0), "returned Tensor, not a LossValue: return LossValue(value)"),
    (LossValue(torch.ones(4)), "returned a value of shape [4], not a 0-dim tensor: reduce it over the batch"),
])
def test_loss_term_returning_the_wrong_thing_is_named(result, expected):
    losses = loss_set(result)
    out = build(backbone(16, (3, 64, 64)))(torch.rand(2, 3, 64, 64))
    with pytest.raises(PluginError) as err:
        losses(out, torch.rand(2, 3, 64, 64), 0)
    assert "loss term 'mine'" in str(err.value) and expected in str(err.value)


def test_config_dataclass_that_omegaconf_cannot_use_names_the_plugin():
    @dataclass
    class BadDefault:
        width: int = "wide"  # type: ignore[assignment]

    with pytest.raises(PluginError) as err:
        validate_options(BadDefault, {}, "backbone 'wide'")
    assert str(err.value).startswith("backbone 'wide': its config dataclass BadDefault cannot be a config")
    assert "give each field a type" in str(err.value)


def test_module_that_registers_nothing_is_named(tmp_path, monkeypatch):
    (tmp_path / "forgot_decorator.py").write_text("class Tiny:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="plugin module 'forgot_decorator' registered no plugin: decorate"):
        Registry().import_modules(["forgot_decorator"])


def test_module_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "typo_module.py").write_text("import torch\ntorch.nn.Linearr(2, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="plugin module 'typo_module' failed to import: AttributeError"):
        Registry().import_modules(["typo_module"])


def test_a_builtin_name_is_replaced_only_with_replace_true():
    registry = Registry()
    registry._discovered = True  # this registry holds only what the test registers
    builtin, other, opted = object(), object(), object()
    with registry._origin_as("module thirdparty"):  # loaded first: order must not matter
        registry.register("backbone", "mlp")(other)
    with registry._origin_as("vaeforge 0.1.0 (vaeforge_plugins.backbones.mlp)"):
        with pytest.warns(UserWarning, match="from module thirdparty is ignored; to replace it, register with "
                                             "replace=True"):
            registry.register("backbone", "mlp")(builtin)
    assert registry.get("backbone", "mlp").target is builtin
    with registry._origin_as("module optin"), pytest.warns(UserWarning, match="from module optin is used"):
        registry.register("backbone", "mlp", replace=True)(opted)
    assert registry.get("backbone", "mlp").target is opted


def test_a_builtin_module_imported_before_discovery_stays_builtin():
    """``from vaeforge_plugins.losses.adversarial import ...`` before any lookup: the plugin it registered is
    still the built-in one (its origin is its entry point's), as the reference and clash rule expect."""
    code = ("import vaeforge_plugins.losses.adversarial\n"
            "from vaeforge.registry import REGISTRY\n"
            "plugin = REGISTRY.get('loss', 'adversarial')\n"
            "print(plugin.builtin, plugin.origin)")
    out = run([PY, "-c", code]).stdout
    assert out.startswith("True vaeforge ") and "(vaeforge_plugins.losses.adversarial)" in out, out


def test_nan_loss_term_stop_names_the_term_and_its_plugin(lfw64, tmp_path):
    (tmp_path / "nan_loss.py").write_text(
        "from vaeforge.api import LossTerm, LossValue, register_loss\n"
        "@register_loss('always_nan')\n"
        "class AlwaysNaN(LossTerm):\n"
        "    def forward(self, out, target, step):\n        return LossValue(out.z.mean() * float('nan'))\n"
    )
    proc = train(*TINY, f"data.shards={lfw64}", f"run_dir={tmp_path / 'run'}", "plugins=[nan_loss]",
                 "losses.broken.name=always_nan", "trainer.max_nonfinite=2", "trainer.max_steps=5", check=False,
                 env=env(PYTHONPATH=str(tmp_path)))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "2 consecutive non-finite updates" in lines[0]
    assert "loss term 'broken' (plugin 'always_nan' from module nan_loss)" in lines[0]


def test_task_from_a_module_named_on_the_command_line_and_its_contract(trained_run, tmp_path):
    """``vaeforge run ... plugins=[module]`` imports the module before the task lookup; a task returning
    something else than a dict of JSON values is named with the fix; output and files are filled in. (Its task
    samples N(0, I): the default sampler would fit a flow prior on the whole train split first.)"""
    (tmp_path / "my_tasks.py").write_text(
        "import torch\nfrom vaeforge.api import register_task\n"
        "@register_task('latent_norm')\n"
        "def latent_norm(ctx, cfg):\n"
        "    ctx.save_grid('grid.png', ctx.model.sample(4, sampler='prior').cpu(), nrow=2)\n"
        "    return {'norm': 1.5}\n"
        "@register_task('tensor_summary')\n"
        "def tensor_summary(ctx, cfg):\n    return {'norm': torch.ones(2)}\n"
    )
    plugin_env = env(PYTHONPATH=str(tmp_path))
    out = tmp_path / "out"
    proc = run([PY, "-m", "vaeforge.run", "task=latent_norm", f"run_dir={trained_run}", f"output={out}",
                "plugins=[my_tasks]"], env=plugin_env)
    assert f"wrote 1 file(s) to {out}" in proc.stdout
    bad = run([PY, "-m", "vaeforge.run", "task=tensor_summary", f"run_dir={trained_run}", f"output={out}",
               "plugins=my_tasks"], env=plugin_env, check=False)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "task 'tensor_summary' (module my_tasks) returned a summary that is not JSON" in lines[0]
    assert "convert tensors with float()" in lines[0]
