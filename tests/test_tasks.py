"""Tasks on a run trained in the test: files with the right count and size, summaries, clear errors."""
from __future__ import annotations

import json
import tarfile

import pytest
from PIL import Image

from helpers import BIN, PY, run


@pytest.fixture(scope="module")
def trained(trained_run):
    """The session's tiny trained run (conftest)."""
    return trained_run


@pytest.fixture(scope="module")
def photos(lfw_tgz, tmp_path_factory):
    """Two original 250x250 LFW JPEGs and one 64x64 PNG, as a user's folder of images."""
    folder = tmp_path_factory.mktemp("photos")
    with tarfile.open(lfw_tgz, "r|gz") as tar:
        for member in tar:
            if member.isfile():
                (folder / member.name.split("/")[-1]).write_bytes(tar.extractfile(member).read())
                if len(list(folder.iterdir())) == 2:
                    break
    Image.new("RGB", (64, 64), (200, 120, 90)).save(folder / "flat.png")
    return folder


def task(*args: str, check: bool = True):
    return run([PY, "-m", "vaeforge.run", *args], check=check)


def test_reconstruct_val_split(trained, tmp_path):
    out = tmp_path / "rec"
    task("task=reconstruct", f"run_dir={trained}", "input=val", "limit=5", f"output={out}")
    pngs = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 5
    assert all(Image.open(out / p).size == (64, 64) for p in pngs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "reconstruct" and summary["weights"] == "ema"
    assert sorted(summary["psnr"]) == pngs and summary["mean_psnr"] > 5
    assert Image.open(out / "grid.png").size[0] > 64 * 5 * 2


def test_reconstruct_files_of_any_size_keep_their_names(trained, photos, tmp_path):
    out = tmp_path / "rec"
    run([str(BIN / "vaeforge"), "run", "task=reconstruct", f"run_dir={trained}", f"input={photos}", f"output={out}"])
    expected = sorted(p.with_suffix(".png").name for p in photos.iterdir())
    assert sorted(p.name for p in out.glob("*.png") if p.name != "grid.png") == expected
    assert all(Image.open(out / name).size == (64, 64) for name in expected)


def test_sample_is_seeded(trained, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        task("task=sample", f"run_dir={trained}", "n=12", "grid_columns=4", f"seed={seed}", "save_each=true",
             f"output={out}")
    assert len(list(a.glob("sample_*.png"))) == 12
    assert Image.open(a / "grid.png").size == (4 * 66 + 2, 3 * 66 + 2)
    assert (a / "grid.png").read_bytes() == (b / "grid.png").read_bytes() != (c / "grid.png").read_bytes()
    assert json.loads((a / "summary.json").read_text())["n"] == 12


def test_python_api_matches_the_contract(trained):
    import torch

    import vaeforge

    model = vaeforge.load(trained)
    x = torch.rand(3, 3, model.image_size, model.image_size)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (3, model.latent_dim)
    images = model.decode(mean)
    assert images.shape == x.shape and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert torch.equal(model.reconstruct(x), images)
    assert model.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, 3, 64, 64)


@pytest.mark.parametrize("args, expected", [
    (["task=reconstruct", "input=/nonexistent/face.jpg"], "input '/nonexistent/face.jpg' does not exist"),
    (["task=reconstrct"], "did you mean 'reconstruct'?"),
    (["task=sample", "temprature=2"], "did you mean 'temperature'?"),
])
def test_bad_task_input_is_one_clear_line(trained, args, expected):
    proc = task(*args, f"run_dir={trained}", check=False)
    assert proc.returncode == 2 and expected in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_unreadable_image_and_run_without_checkpoint(trained, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = task("task=reconstruct", f"run_dir={trained}", f"input={bad}", check=False)
    assert proc.returncode == 2 and f"{bad}: not a readable image" in proc.stderr
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((trained / "config.yaml").read_text())
    (empty / "manifest.json").write_text((trained / "manifest.json").read_text())
    proc = task("task=sample", f"run_dir={empty}", check=False)
    assert proc.returncode == 2 and "has no checkpoint" in proc.stderr
