"""Plugins come from entry points (built-in and third-party alike) or from modules a recipe names."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import BIN, PY, TINY, TINY_RUN, env, run

FIXTURE = Path(__file__).parent / "fixtures" / "tinyplugin"


def test_plugins_lists_builtins_with_kind_and_origin():
    out = run([str(BIN / "vaeforge"), "plugins"]).stdout
    rows = {tuple(line.split()[:2]) for line in out.splitlines()}
    assert {("backbone", "unet"), ("backbone", "mlp"), ("loss", "kl"), ("loss", "recon"),
            ("task", "reconstruct"), ("task", "sample")} <= rows
    assert "vaeforge 0.1.0 (vaeforge_plugins.backbones.unet)" in out
    # a module another built-in imports keeps its own origin (unet: autoencoder_kl; flow_matching: conv_diffusion)
    assert "vaeforge 0.1.0 (vaeforge_plugins.priors.flow_matching)" in out


@pytest.fixture(scope="module")
def third_party(tmp_path_factory) -> Path:
    """The fixture plugin package pip-installed (its own pyproject) into a folder put on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    run([PY, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--target", str(target), str(FIXTURE)],
        cwd=build)
    return target


def test_third_party_plugin_is_listed_trains_and_its_export_needs_it(third_party, lfw64, tmp_path):
    plugin_env = env(PYTHONPATH=str(third_party))
    out = run([str(BIN / "vaeforge"), "plugins"], env=plugin_env).stdout
    assert "tinyconv" in out and "vaeforge-tinyplugin 0.0.1" in out
    run_dir, export = tmp_path / "run", tmp_path / "export"
    run([PY, "-m", "vaeforge.train", *TINY_RUN, f"data.shards={lfw64}", f"run_dir={run_dir}",
         "model.backbone.name=tinyconv", "model.backbone.args={width: 4}", "trainer.max_steps=5"], env=plugin_env)
    assert (run_dir / "checkpoints" / "step_00000005" / "model.safetensors").is_file()
    run([str(BIN / "vaeforge"), "export", f"run_dir={run_dir}", f"out={export}"], env=plugin_env)
    load = [PY, "-c", f"import vaeforge; print(vaeforge.from_pretrained({str(export)!r}).latent_dim)"]
    assert run(load, env=plugin_env).stdout.strip() == "16"
    missing = run(load, check=False).stderr.strip().splitlines()[-1]
    assert missing.startswith("vaeforge.errors.ConfigError: unknown backbone plugin 'tinyconv' (valid: ") and \
        "exported with it from vaeforge-tinyplugin 0.0.1 (vaeforge_tinyplugin.backbone): install it, or pass" in missing


def test_recipe_plugins_list_imports_user_module(lfw64, tmp_path):
    (tmp_path / "my_losses.py").write_text(
        "from dataclasses import dataclass\n"
        "from vaeforge.api import LossTerm, LossValue, register_loss\n"
        "@dataclass\nclass Cfg:\n    scale: float = 1.0\n"
        "@register_loss('latent_l2', config=Cfg)\n"
        "class LatentL2(LossTerm):\n"
        "    def __init__(self, cfg):\n        super().__init__(); self.cfg = cfg\n"
        "    def forward(self, out, target, step):\n"
        "        return LossValue(self.cfg.scale * out.z.square().mean(), {'z2': out.z.square().mean()})\n"
    )
    run_dir = tmp_path / "run"
    run([PY, "-m", "vaeforge.train", *TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "plugins=[my_losses]",
         "losses.reg.name=latent_l2", "losses.reg.weight=0.1", "trainer.max_steps=5"],
        env=env(PYTHONPATH=str(tmp_path)))
    assert "latent_l2" in (run_dir / "config.yaml").read_text()
