"""The six tasks, run as a user runs them, on models trained on real LFW: files with the right count and size,
summaries, the Python API, quality claims, clear one-line errors; and the measuring tools against closed forms.

reconstruct and sample run on the session's tiny trained run (conftest). interpolate, denoise, edit and evaluate
run on a small MLP VAE trained here for 300 steps on the denoise recipe (noisy inputs, clean targets): fast on
two CPU cores, and trained long enough for the quality claims to show (denoising raises PSNR, the happiness
direction raises a classifier's P(happiness)).
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import vaeforge
from helpers import BIN, env, run, task, train
from vaeforge.metrics import frechet_distance, gaussian_frechet, ssim
from vaeforge.runs.load import interpolate_latents
from vaeforge.tasks.attributes import AttributeClassifier, direction
from vaeforge.tasks.context import read_split
from vaeforge.tasks.image_files import save_png, to_tensor

SMALL_DENOISER = [
    "recipe=lfw_denoise", "model.backbone.name=mlp", "model.backbone.args.hidden=[256]", "model.latent_dim=32",
    "data.batch_size=32", "data.num_workers=0", "data.val_max_batches=1", "data.val_batch_size=64",
    "trainer.val_every=1000", "trainer.image_every=0", "trainer.checkpoint_every=1000", "trainer.progress=false",
    "trainer.max_steps=300",
]
CELL = 66  # a 64-pixel image plus the grid's 2-pixel padding
CAPTION = 14


@pytest.fixture(scope="module")
def denoiser(lfw64, tmp_path_factory) -> Path:
    """The small MLP denoising VAE, trained 300 steps on the real shards."""
    run_dir = tmp_path_factory.mktemp("denoiser") / "run"
    train(*SMALL_DENOISER, f"data.shards={lfw64}", f"run_dir={run_dir}")
    return run_dir


@pytest.fixture(scope="module")
def faces(lfw64, tmp_path_factory) -> Path:
    """Five val faces as 64x64 PNG files: a user's folder of images."""
    folder = tmp_path_factory.mktemp("faces")
    for sample, _ in zip(read_split(sorted(map(str, lfw64.glob("val-*.tar")))), range(5)):
        save_png(sample.image, folder / sample.name)
    return folder


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


@pytest.fixture(scope="module")
def lpips_env(shared_dir) -> dict[str, str]:
    return env(VAEFORGE_LPIPS_WEIGHTS=str(shared_dir / "weights"))


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def pixels(path: Path) -> torch.Tensor:
    return to_tensor(Image.open(path))


def cell(grid: torch.Tensor, row: int, column: int, top: int = 0) -> torch.Tensor:
    """The image in a grid's cell (rows and columns of 64-pixel images with 2-pixel padding)."""
    y, x = top + 2 + row * CELL, 2 + column * CELL
    return grid[:, y : y + 64, x : x + 64]


# ----- on the session's tiny trained run -----------------------------------------------------------------------
def test_reconstruct_val_split(trained_run, tmp_path):
    out = tmp_path / "rec"
    task("task=reconstruct", f"run_dir={trained_run}", "input=val", "limit=5", f"output={out}")
    pngs = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 5
    assert all(Image.open(out / p).size == (64, 64) for p in pngs)
    s = summary(out)
    assert s["task"] == "reconstruct" and s["weights"] == "ema"
    assert sorted(s["psnr"]) == pngs and s["mean_psnr"] > 5
    assert Image.open(out / "grid.png").size[0] > 64 * 5 * 2


def test_reconstruct_files_of_any_size_keep_their_names(trained_run, photos, tmp_path):
    out = tmp_path / "rec"
    run([str(BIN / "vaeforge"), "run", "task=reconstruct", f"run_dir={trained_run}", f"input={photos}",
         f"output={out}"])
    expected = sorted(p.with_suffix(".png").name for p in photos.iterdir())
    assert sorted(p.name for p in out.glob("*.png") if p.name != "grid.png") == expected
    assert all(Image.open(out / name).size == (64, 64) for name in expected)


def test_sample_is_seeded(trained_run, tmp_path):
    """The same seed, the same faces (from N(0, I): fitting the default sampler, seeded too, is test_priors')."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        task("task=sample", f"run_dir={trained_run}", "sampler=prior", "n=12", "grid_columns=4", f"seed={seed}",
             "save_each=true", f"output={out}")
    assert len(list(a.glob("sample_*.png"))) == 12
    assert Image.open(a / "grid.png").size == (4 * 66 + 2, 3 * 66 + 2)
    assert (a / "grid.png").read_bytes() == (b / "grid.png").read_bytes() != (c / "grid.png").read_bytes()
    assert summary(a)["n"] == 12


def test_python_api_matches_the_contract(trained_run):
    model = vaeforge.load(trained_run)
    x = torch.rand(3, 3, model.image_size, model.image_size)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (3, model.latent_dim)
    images = model.decode(mean)
    assert images.shape == x.shape and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert torch.equal(model.reconstruct(x), images)
    # N(0, I): the default sampler's fit is test_priors' (test_python_api_samples_from_a_fitted_prior)
    assert model.sample(4, sampler="prior", generator=torch.Generator().manual_seed(0)).shape == (4, 3, 64, 64)


# ----- on the small denoiser -----------------------------------------------------------------------------------
def test_interpolate_rows_endpoints_and_mix(denoiser, faces, tmp_path):
    rec, out = tmp_path / "rec", tmp_path / "interp"
    task("task=reconstruct", f"run_dir={denoiser}", f"input={faces}", f"output={rec}")
    task("task=interpolate", f"run_dir={denoiser}", f"input={faces}", "steps=4", "mode=slerp", "mix=[1,1,2]",
         f"output={out}")
    s = summary(out)
    names = sorted(p.name for p in faces.iterdir())
    assert s["pairs"] == [names[0:2], names[2:4]] and s["unpaired"] == names[4] and s["files"] == 5
    expected = [*s["pair_files"], "grid.png", "mix.png", "mix_grid.png"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(expected)
    assert Image.open(out / "grid.png").size == (7 * CELL + 2, 2 * CELL + 2 + CAPTION)  # input, 5 frames, input
    assert Image.open(out / "mix_grid.png").size == (4 * CELL + 2, CELL + 2 + CAPTION)  # 3 inputs, the mix
    assert s["mix"]["inputs"] == names[:3] and Image.open(out / "mix.png").size == (64, 64)
    for pair, file in zip(s["pairs"], s["pair_files"]):
        strip = pixels(out / file)
        assert strip.shape == (3, CELL + 2, 5 * CELL + 2)
        for column, name in ((0, pair[0]), (4, pair[1])):  # steps 0 and k are the reconstructions (8-bit PNGs)
            assert (cell(strip, 0, column) - pixels(rec / name)).abs().max() <= 1 / 255 + 1e-6


def test_python_api_interpolate_mix_edit(denoiser, faces):
    model = vaeforge.load(denoiser)
    x = torch.stack([pixels(p) for p in sorted(faces.iterdir())])
    recon = model.reconstruct(x)
    for mode in ("linear", "slerp"):
        path = model.interpolate(x[:2], x[2:4], steps=3, mode=mode)
        assert path.shape == (2, 4, 3, 64, 64)
        assert torch.allclose(path[:, 0], recon[:2], atol=1e-5) and torch.allclose(path[:, -1], recon[2:4], atol=1e-5)
    assert torch.allclose(model.mix(x[:1], [2.0]), recon[:1], atol=1e-5)
    edits = model.edit(x, torch.randn(model.latent_dim), [0.0, 1.0])
    assert edits.shape == (5, 2, 3, 64, 64) and torch.allclose(edits[:, 0], recon, atol=1e-5)
    assert not torch.allclose(edits[:, 1], recon, atol=1e-3)


def test_denoise_restores_noisy_val_faces(denoiser, faces, tmp_path):
    out = tmp_path / "den"
    task("task=denoise", f"run_dir={denoiser}", "input=val", "limit=32", "noise=gaussian:0.2", f"output={out}")
    s = summary(out)
    assert s["noise"] == "gaussian:0.2" and s["files"] == 2 * 32 + 1 and len(s["psnr_denoised"]) == 32
    assert len(list(out.glob("*_noisy.png"))) == len(list(out.glob("*_denoised.png"))) == 32
    assert Image.open(out / "grid.png").size == (12 * CELL + 2, 8 * CELL + 2 + CAPTION)  # 4 x (clean, noisy, denoised)
    assert s["mean_psnr_denoised"] > s["mean_psnr_noisy"] + 1.0, s
    already_noisy = tmp_path / "given"
    task("task=denoise", f"run_dir={denoiser}", f"input={faces}", "noise=none", f"output={already_noisy}")
    s = summary(already_noisy)
    assert s["files"] == 5 + 1 and s["psnr_denoised"] is None and "no clean reference" in s["note"]
    assert not list(already_noisy.glob("*_noisy.png"))


def test_edit_saves_the_direction_and_reuses_it(denoiser, faces, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    shown = task("task=edit", f"run_dir={denoiser}", f"input={faces}", "attribute=Pale Skin", "alphas=[-2,0,2]",
                 "train_limit=300", f"output={first}", env=env(TQDM_DISABLE="")).stderr
    assert "encoding images labelled Pale Skin" in shown  # the direction's encoding pass shows its progress
    s = summary(first)
    vector = denoiser / "vectors" / "Pale Skin.safetensors"
    assert s["vector"] == str(vector) and vector.is_file() and s["vector_origin"] == "computed"
    assert s["kind"] == "real" and s["vector_images"] == 300 and s["files"] == 5 + 1
    assert s["columns"] == ["input", "recon", "a=-2", "a=+0", "a=+2"]
    assert Image.open(first / "grid.png").size == (5 * CELL + 2, 5 * CELL + 2 + CAPTION)
    assert all(Image.open(first / n).size == (5 * CELL + 2, CELL + 2 + CAPTION) for n in s["images"])
    task("task=edit", f"run_dir={denoiser}", f"input={faces}", f"vectors={vector}", "alphas=[-2,0,2]",
         f"output={second}")
    assert summary(second)["vector_origin"] == "file" and summary(second)["attribute"] == "Pale Skin"
    assert (first / "grid.png").read_bytes() == (second / "grid.png").read_bytes()


def test_evaluate_metrics_and_happiness_edit(denoiser, lpips_env, tmp_path):
    out = tmp_path / "eval"
    task("task=evaluate", f"run_dir={denoiser}", "samples=200", "attribute=happiness", "edit_faces=neutral",
         "alphas=[0,2,4]", "train_limit=800", "samplers=[prior,gmm]", f"output={out}", env=lpips_env)
    s = summary(out)
    assert s["split"] == "val" and s["images"] > 400 and s["files"] == 1 and (out / "samples.png").is_file()
    assert 15 < s["psnr"] < 40 and 0 < s["ssim"] < 1 and 0 < s["lpips"] < 1 and s["fd_alexnet"] > 0
    assert s["kl"] > 0 and 0 < s["active_units"] <= s["latent_dim"] == 32
    assert s["fid"] is None and "no InceptionV3 weights" in s["fid_note"]
    assert 0 < s["fd_alexnet_gmm"] < float("inf") and s["samplers"]["gmm"]["prior_options"]["components"] == 10
    assert s["checkerboard_recon"] > 0 and s["checkerboard_prior"] > 0  # ratios to the val images' own
    assert s["samplers"]["gmm"]["checkerboard"] == s["checkerboard_gmm"] != s["checkerboard_prior"]
    edit = s["edit"]
    assert edit["faces"] == "neutral" and edit["n"] == 64 and edit["classifier"]["train_images"] == 800
    assert edit["classifier"]["val_accuracy_photos"] > 0.6  # happiness vs the rest, about 40% positives
    p = {row["alpha"]: row["p"] for row in edit["by_alpha"]}
    assert p[0.0] == edit["p_reconstruction"] and edit["by_alpha"][0]["lpips_to_reconstruction"] == 0
    assert p[2.0] > p[0.0] and p[4.0] > p[0.0], edit  # the happiness direction makes neutral faces happier
    assert 0 < edit["by_alpha"][1]["lpips_to_reconstruction"] < edit["by_alpha"][2]["lpips_to_reconstruction"]


# ----- user errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (["task=reconstruct", "input=/nonexistent/face.jpg"], ["input '/nonexistent/face.jpg' does not exist"]),
    (["task=reconstrct"], ["did you mean 'reconstruct'?"]),
    (["task=sample", "temprature=2"], ["did you mean 'temperature'?"]),
    (["task=edit", "input=val", "attribute=Smilng"], ["unknown attribute 'Smilng' (valid: ", "Pale Skin, ",
                                                      "happiness, ", "did you mean 'Smiling'?"]),
    (["task=interpolate", "input=/nonexistent/a.jpg"], ["input '/nonexistent/a.jpg' does not exist"]),
    (["task=interpolate", "input=val", "limit=2", "mode=slerpp"], ["did you mean 'slerp'?"]),
    (["task=denoise", "input=val", "noise=gausian:0.2"], ["unknown corruption 'gausian'", "did you mean 'gaussian'?"]),
    (["task=evaluate", "inception_weights=/nonexistent.pth"], ["inception_weights file /nonexistent.pth not found"]),
])
def test_bad_task_input_is_one_clear_line(trained_run, lpips_env, args, expected):
    proc = task(*args, f"run_dir={trained_run}", check=False, env=lpips_env)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and all(text in last for text in expected), proc.stderr


def test_unreadable_images_and_a_run_without_checkpoint_are_one_clear_line(trained_run, faces, tmp_path):
    jpg, png = tmp_path / "bad.jpg", tmp_path / "broken.png"
    jpg.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for bad, args in ((jpg, ["task=reconstruct", f"input={jpg}"]),
                      (png, ["task=interpolate", f"input={[str(next(faces.iterdir())), str(png)]}"])):
        proc = task(*args, f"run_dir={trained_run}", check=False)
        assert proc.returncode == 2 and f"{bad}: not a readable image" in proc.stderr, proc.stderr
    empty = tmp_path / "untrained"
    empty.mkdir()
    for name in ("config.yaml", "manifest.json"):
        (empty / name).write_text((trained_run / name).read_text())
    for args in (["task=sample"], ["task=edit", "input=val", "attribute=happiness"]):
        proc = task(*args, f"run_dir={empty}", check=False)
        assert proc.returncode == 2 and "has no checkpoint" in proc.stderr.strip().splitlines()[-1], proc.stderr


# ----- the measuring tools, against closed forms ---------------------------------------------------------------
def test_ssim_matches_closed_forms():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    flat_a, flat_b = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.6)
    luminance = (2 * 0.2 * 0.6 + 0.01**2) / (0.2**2 + 0.6**2 + 0.01**2)  # no variance: only the luminance term
    assert abs(float(ssim(flat_a, flat_b)) - luminance) < 1e-5
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    scores = [float(ssim((x + s * noise).clamp(0, 1), x).mean()) for s in (0.05, 0.1, 0.3)]
    assert scores == sorted(scores, reverse=True)


def test_frechet_distance_matches_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    var1, var2 = torch.tensor([1.0, 4.0]), torch.tensor([4.0, 9.0])
    expected = 1.0 + float((var1 + var2 - 2 * (var1 * var2).sqrt()).sum())  # diagonal covariances
    assert abs(gaussian_frechet(mu1, var1.diag(), mu2, var2.diag()) - expected) < 1e-9
    features = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(features, features)) < 1e-6
    assert abs(frechet_distance(features, features + 2.0) - 4.0 * 16) < 1e-6  # a shift of 2 in every dim


def test_slerp_keeps_the_radius_between_equal_norm_latents():
    a, b = torch.randn(4, 32), torch.randn(4, 32)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    t = torch.linspace(0, 1, 7)
    path = interpolate_latents(a, b, t, "slerp")
    assert torch.equal(path[:, 0], a) and torch.equal(path[:, -1], b)
    assert torch.allclose(path.norm(dim=-1), a.norm(dim=1, keepdim=True).expand(4, 7), rtol=1e-4)
    assert (interpolate_latents(a, b, t, "linear").norm(dim=-1)[:, 3] < a.norm(dim=1)).all()


def test_directions_and_classifier_find_a_planted_attribute():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(2000, 8, generator=gen)
    binary = (mu[:, 0] > 0).float()  # the attribute lives in latent dim 0
    v = direction(mu, binary, "binary", "planted")
    assert v.abs().argmax() == 0 and abs(float(v[0]) - 2 * (2 / torch.pi) ** 0.5) < 0.1  # E|z| difference
    score = 3.0 * mu[:, 1] + 0.1 * torch.randn(2000, generator=gen)  # a real-valued score along dim 1
    v = direction(mu, score, "real", "planted")
    assert v.abs().argmax() == 1 and abs(float(v[1]) - 1 / 3) < 0.02  # slope of mu on the score
    classifier = AttributeClassifier.fit(mu, binary.bool())
    assert float(((classifier.prob(mu) > 0.5) == binary.bool()).float().mean()) > 0.97
