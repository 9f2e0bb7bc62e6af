"""The wheel, installed into a fresh virtual environment, works from a folder outside the checkout: prepare, a short
training, a task and a SLURM dry run with the shipped recipe and profile, every file of vaeforge from the wheel.

The fresh environment gets the dependencies without a download: a ``.pth`` line puts this environment's
site-packages after its own. Only that folder is added, and its ``.pth`` files are not run, so the editable
install of the checkout (a path finder installed by such a file) stays invisible: the test asserts where each
part is imported from.
"""
from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from helpers import PY, env, run

REPO = Path(__file__).resolve().parents[1]
# Top-level folders of a checkout that no wheel is built from: environment, history, build leftovers, tests, docs,
# and a developer's prepared data and runs (git-ignored, possibly large).
NOT_SOURCES = {".git", ".venv", "build", "dist", "tests", "docs", "benchmarks", "data", "runs"}
SMALL_PREPARE = ["train_shards=2", "val_shards=1", "val_fraction=0.2"]  # the 40-image archive
TINY_MLP = ["recipe=lfw_mlp", "model.latent_dim=8", "model.backbone.args.hidden=[32]", "data.batch_size=8",
            "data.num_workers=0", "data.val_max_batches=1", "data.val_batch_size=8", "trainer.max_steps=3",
            "trainer.val_every=0", "trainer.image_every=0", "trainer.progress=false"]
WHERE = (
    "import json, vaeforge, vaeforge_plugins\n"
    "from vaeforge.config import available_recipes\n"
    "from vaeforge.registry import REGISTRY\n"
    "from vaeforge.submit import available_profiles\n"
    "print(json.dumps({'vaeforge': vaeforge.__file__, 'plugins': vaeforge_plugins.__file__,\n"
    "  'backbones': REGISTRY.names('backbone'), 'recipes': {k: str(v) for k, v in available_recipes().items()},\n"
    "  'profiles': {k: str(v) for k, v in available_profiles().items()}}))\n"
)


def not_built_from(folder: str, names: list[str]) -> set[str]:
    """``shutil.copytree``'s ignore: the NOT_SOURCES at the top, caches and egg-info anywhere."""
    top = NOT_SOURCES if Path(folder) == REPO else set()
    return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}


def fresh_venv(wheel: Path, venv: Path) -> Path:
    """A new environment holding ``wheel`` (installed without an index) and seeing this one's dependencies."""
    run([PY, "-m", "venv", "--without-pip", str(venv)])
    fresh = venv / "bin" / "python"
    run([PY, "-m", "pip", "--python", str(fresh), "install", "--quiet", "--no-deps", "--no-index", str(wheel)])
    site = Path(run([str(fresh), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after the wheel: pip saw none
    return venv / "bin"


@pytest.mark.integration  # a real build, a new environment and five CLI processes
def test_wheel_in_a_fresh_venv_prepares_trains_samples_and_submits(lfw_members, make_tgz, tmp_path):
    src = Path(shutil.copytree(REPO, tmp_path / "src", ignore=not_built_from))  # the build writes into its copy
    run([PY, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path / "dist"), str(src)])
    wheel = next((tmp_path / "dist").glob("vaeforge-*.whl"))
    bin_dir = fresh_venv(wheel, tmp_path / "venv")
    work = tmp_path / "work"  # outside the checkout: no ./recipes, no ./slurm
    work.mkdir()
    clean = {k: v for k, v in env(TQDM_DISABLE="1").items() if k not in ("PYTHONPATH", "VAEFORGE_LPIPS_WEIGHTS")}

    def vaeforge(*args: str, **kw) -> str:
        return run([str(bin_dir / "vaeforge"), *args], cwd=work, env=kw.pop("env", clean), **kw).stdout

    where = json.loads(run([str(bin_dir / "python"), "-c", WHERE], cwd=work, env=clean).stdout)
    site = str(tmp_path / "venv")
    assert where["vaeforge"].startswith(site) and where["plugins"].startswith(site), where
    assert {"mlp", "unet", "resnet"} <= set(where["backbones"])
    assert {"lfw_mlp", "lfw_unet"} <= set(where["recipes"]) and {"local", "example-gpu"} <= set(where["profiles"])
    assert all(p.startswith(site) for p in [*where["recipes"].values(), *where["profiles"].values()]), where

    make_tgz(work / "small.tgz", lfw_members)
    vaeforge("prepare", "dataset=lfw", "source=small.tgz", "out=data", *SMALL_PREPARE)
    vaeforge("train", *TINY_MLP, "data.shards=data", "run_dir=run")
    assert (work / "run" / "checkpoints" / "step_00000003" / "model.safetensors").is_file()
    vaeforge("run", "task=sample", "run_dir=run", "n=4", "sampler=prior")  # N(0, I): no prior to fit
    summary = json.loads((work / "run" / "tasks" / "sample" / "summary.json").read_text())
    assert summary["n"] == 4 and summary["sampler"] == "prior" and (work / "run" / "tasks" / "sample" / "grid.png").is_file()

    no_slurm = {**clean, "PATH": str(bin_dir)}  # SLURM's commands are not needed to render the job
    script = vaeforge("submit", "slurm=local", *TINY_MLP, "data.shards=data", "run_dir=run2", "--dry-run",
                      env=no_slurm)
    for line in ["#SBATCH --ntasks-per-node=2", "#SBATCH --partition=debug", "export GLOO_SOCKET_IFNAME=lo",
                 f"{bin_dir / 'python'} -m vaeforge.train recipe=lfw_mlp"]:  # the profile shipped in the wheel
        assert line in script, line
    assert not (work / "run2").exists()

