"""Portable models: ``vaeforge export`` writes a run's VAE as a Hub-layout folder (config.json, model.safetensors with
its provenance in the header, a README.md model card, the fitted priors and directions); ``vaeforge.from_pretrained``
loads it in a fresh process without the run, bit-equal to ``vaeforge.load``; ``push_to_hub`` to a local folder and
a repo id resolved from a Hugging Face cache offline; one-line errors for bad inputs; nothing a folder names is
imported."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vaeforge
from helpers import BIN, PY, env, run, task
from vaeforge.api import REGISTRY, CheckpointError, ConfigError, DataError, TaskContext
from vaeforge.data.splits import read_split
from vaeforge.runs.card import model_card
from vaeforge.runs.export import replace_folder

GMM = {"components": 2}  # a prior that fits in a second on a few latents
RAW_GMM = {"components": 3}  # fitted on the raw weights: not exported with the EMA ones
FIT_LIMIT = 64  # training images the prior and the direction are fitted on
ATTRIBUTE = "Smiling"
REPO = "someone/tiny-vae"


def val_faces(lfw64: Path, n: int = 8) -> torch.Tensor:
    shards = sorted(map(str, lfw64.glob("val-*.tar")))
    return torch.stack([sample.image for sample, _ in zip(read_split(shards), range(n))])


def export_cli(*args: str, check: bool = True):
    return run([str(BIN / "vaeforge"), "export", *args], check=check)


@pytest.fixture(scope="module")
def fitted_run(trained_run: Path, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's run with what an export carries along: a gmm prior and a direction fitted on its EMA
    weights, and an evaluate summary; and a gmm fitted on its raw weights, which must stay behind."""
    run_dir = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("fitted") / "run"))
    vaeforge.load(run_dir, weights="model").sampler("gmm", RAW_GMM, FIT_LIMIT, progress=False)
    model = vaeforge.load(run_dir)
    model.sampler("gmm", GMM, FIT_LIMIT, progress=False)
    TaskContext(model, run_dir / "tasks").attribute_vector(ATTRIBUTE, FIT_LIMIT)
    task("task=evaluate", f"run_dir={run_dir}", "limit=64", "samples=32", "samplers=[prior]",
         env=env(VAEFORGE_LPIPS_WEIGHTS=str(shared_dir / "weights")))
    return run_dir


@pytest.fixture(scope="module")
def exported(fitted_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vaeforge.export(fitted_run, tmp_path_factory.mktemp("exported") / "tiny-vae")


# ----- the claim: exported, loaded in a fresh process without the run, same reconstructions ---------------------
RECONSTRUCT = """
import sys
from safetensors.torch import load_file, save_file
import vaeforge

loader, source, faces, out = sys.argv[1:]
model = getattr(vaeforge, loader)(source)
save_file({"recon": model.reconstruct(load_file(faces)["faces"])}, out)
print(type(model).__name__, model.checkpoint.name, model.weights, model.latent_dim, model.image_size)
"""


def reconstruct_in_a_fresh_process(loader: str, source: Path, faces: Path, out: Path) -> tuple[list[str], torch.Tensor]:
    """What a new Python process that loads ``source`` with ``vaeforge.<loader>`` reconstructs ``faces`` as (both
    sides of a comparison run in processes set up alike: the thread count changes float sums)."""
    proc = run([PY, "-c", RECONSTRUCT, loader, str(source), str(faces), str(out)], cwd=out.parent)
    return proc.stdout.split(), load_file(str(out))["recon"]


def test_an_export_loads_in_a_fresh_process_without_the_run_and_reconstructs_bit_equal(trained_copy, lfw64,
                                                                                       tmp_path):
    faces = tmp_path / "faces.safetensors"
    save_file({"faces": val_faces(lfw64)}, str(faces))
    said, expected = reconstruct_in_a_fresh_process("load", trained_copy, faces, tmp_path / "run.safetensors")
    assert said == ["LoadedVAE", "step_00000010", "ema", "16", "64"]
    out = tmp_path / "export"
    assert f"export: {out}" in export_cli(f"run_dir={trained_copy}", f"out={out}").stdout
    shutil.rmtree(trained_copy)
    said, got = reconstruct_in_a_fresh_process("from_pretrained", out, faces, tmp_path / "export.safetensors")
    assert said == ["PretrainedVAE", "step_00000010", "ema", "16", "64"]
    assert torch.equal(got, expected)


# ----- what the folder holds ------------------------------------------------------------------------------------
def test_weights_carry_their_provenance_in_the_safetensors_header(exported, fitted_run):
    with safe_open(str(exported / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "pt" and meta["vaeforge_version"] == vaeforge.__version__
    assert (meta["image_size"], meta["channels"], meta["latent_dim"], meta["weights"]) == ("64", "3", "16", "ema")
    assert meta["source"] == "run/step_00000010"
    plugins = json.loads(meta["plugins"])
    assert plugins[0] == {"kind": "backbone", "name": "unet", "distribution": "vaeforge",
                          "version": vaeforge.__version__, "module": "vaeforge_plugins.backbones.unet"}
    assert ("prior", "gmm") in [(p["kind"], p["name"]) for p in plugins]
    ema = load_file(str(fitted_run / "checkpoints" / "step_00000010" / "ema.safetensors"))
    weights = load_file(str(exported / "model.safetensors"))
    assert weights.keys() == ema.keys() and all(torch.equal(weights[k], ema[k]) for k in ema)


def test_weights_model_exports_the_trained_weights(trained_copy, tmp_path):
    out = vaeforge.export(trained_copy, tmp_path / "raw", weights="model")
    trained = load_file(str(trained_copy / "checkpoints" / "step_00000010" / "model.safetensors"))
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(weights[k], trained[k]) for k in trained)
    assert json.loads((out / "config.json").read_text())["weights"] == "model"
    assert vaeforge.from_pretrained(out).weights == "model"


def test_config_json_describes_the_model_without_the_run(exported, fitted_run):
    info = json.loads((exported / "config.json").read_text())
    assert info["format"] == "vaeforge-export" and info["format_version"] == 1
    assert info["model"] == {"latent_dim": 16, "backbone": {"name": "unet", "args": {
        "widths": [8, 16, 32], "blocks_per_stage": 1, "stem": 4, "head": "icnr_blur"}}}
    assert info["image"] == {"size": 64, "channels": 3}
    assert info["source"]["checkpoint"] == "step_00000010" and info["source"]["step"] == 10
    manifest = json.loads((fitted_run / "manifest.json").read_text())
    assert info["data"]["label_columns"] == manifest["label_columns"]
    assert info["data"]["splits"] == {name: {"count": s["count"]} for name, s in manifest["splits"].items()}
    assert info["recipe"]["recipe"] == "lfw_unet" and info["evaluation"]["metrics"]["psnr"] > 0


def test_the_model_card_has_the_data_the_recipe_and_the_metrics(exported, fitted_run):
    card = ModelCard.load(exported / "README.md")
    assert card.data.library_name == "vaeforge" and {"vaeforge", "vae", "lfw", "unet"} <= set(card.data.tags)
    summary = json.loads((fitted_run / "tasks" / "evaluate" / "summary.json").read_text())
    manifest = json.loads((fitted_run / "manifest.json").read_text())
    text = card.text
    for section in ("## Use", "## Data", "## Recipe", "## Evaluation", "## Samplers", "## Plugins"):
        assert section in text
    assert f"{manifest['splits']['train']['count']:,} train" in text and "lfw-deepfunneled-devtrain.tgz" in text
    assert "Recipe `lfw_unet`" in text and "widths:" in text and "ema_decay:" in text
    assert f"| psnr | {summary['psnr']} |" in text and f"| fd_alexnet | {summary['fd_alexnet']} |" in text
    assert "| `gmm` | options `{\"components\": 2, \"covariance\": \"full\"}`, train_limit 64" in text
    assert f"`{ATTRIBUTE}`" in text and "| backbone `unet` | vaeforge" in text


def test_a_run_without_evaluation_gets_a_card_that_says_how_to_add_it(exported):
    info = {**json.loads((exported / "config.json").read_text()), "evaluation": None}
    text = model_card(info).text
    assert "had not been evaluated" in text and "task=evaluate" in text and "| psnr |" not in text


# ----- fitted priors and directions travel with the model; the task machinery takes it ---------------------------
def test_priors_and_directions_fitted_on_the_exported_weights_travel_with_it(exported, fitted_run):
    info = json.loads((exported / "config.json").read_text())
    priors = info["fitted"]["priors"]
    options = [p["options"] for p in priors]
    assert {**GMM, "covariance": "full"} in options and {**RAW_GMM, "covariance": "full"} not in options
    assert all(p["source"].startswith("step_00000010 ema ") for p in priors)
    assert sorted(p.name for p in (exported / "priors").iterdir()) == sorted(Path(p["file"]).name for p in priors)
    assert [v["attribute"] for v in info["fitted"]["vectors"]] == [ATTRIBUTE]
    model, original = vaeforge.from_pretrained(exported), vaeforge.load(fitted_run)
    draw = lambda m: m.decode(m.sampler("gmm", GMM, FIT_LIMIT).sample(4, torch.Generator().manual_seed(3)))  # noqa: E731
    assert torch.equal(draw(model), draw(original))
    with pytest.raises(DataError, match=r"prior 'gmm' with options .* was not exported with this model \(exported: "
                                        r".*gmm \{'components': 2, 'covariance': 'full'\} \(train_limit=64\)"):
        model.sample(2, sampler="gmm")
    assert model.sample(2, sampler="prior").shape == (2, 3, 64, 64)


def test_a_task_runs_on_an_exported_model(exported, tmp_path):
    model = vaeforge.from_pretrained(exported)
    ctx = TaskContext(model, tmp_path, seed=1)
    vector, reused = ctx.attribute_vector(ATTRIBUTE, FIT_LIMIT)
    assert reused and vector.direction.shape == (16,)
    summary = REGISTRY.get("task", "sample").target(ctx, REGISTRY.get("task", "sample").config(n=4, sampler="prior"))
    assert summary["n"] == 4 and (tmp_path / "grid.png").is_file()
    with pytest.raises(DataError, match="is an exported model: it has no dataset to read the val split from"):
        TaskContext(model, tmp_path, input="val").inputs()


# ----- push_to_hub and repo ids, offline -----------------------------------------------------------------------
def test_push_to_hub_into_a_local_folder_and_load_it_back(exported, lfw64, tmp_path):
    model = vaeforge.from_pretrained(exported)
    target = Path(model.push_to_hub(REPO, local_hub=tmp_path / "hub"))
    assert target == tmp_path / "hub" / REPO
    pushed = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert pushed == sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file())
    assert all((target / name).read_bytes() == (exported / name).read_bytes() for name in pushed)
    assert model.push_to_hub(REPO, local_hub=tmp_path / "hub") == str(target)  # an earlier export is replaced
    faces = val_faces(lfw64, 4)
    assert torch.equal(vaeforge.from_pretrained(target).reconstruct(faces), model.reconstruct(faces))
    with pytest.raises(ConfigError, match="push_to_hub: Repo id must be in the form"):
        model.push_to_hub("../../elsewhere/x", local_hub=tmp_path / "hub")


def test_a_repo_id_loads_from_the_hugging_face_cache_offline(exported, lfw64, tmp_path):
    """The Hub cache layout (refs/main -> snapshots/<commit>/files), as a download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / f"models--{REPO.replace('/', '--')}"
    shutil.copytree(exported, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = vaeforge.from_pretrained(REPO, cache_dir=tmp_path / "cache", local_files_only=True)
    assert model.run_dir == repo / "snapshots" / commit
    faces = val_faces(lfw64, 4)
    assert torch.equal(model.reconstruct(faces), vaeforge.from_pretrained(exported).reconstruct(faces))
    with pytest.raises(CheckpointError, match="'someone/other' is neither an export folder nor a Hub model repo that "
                                              "could be fetched"):
        vaeforge.from_pretrained("someone/other", cache_dir=tmp_path / "cache", local_files_only=True)


# ----- bad inputs ----------------------------------------------------------------------------------------------
def test_bad_export_inputs_are_one_line_and_leave_out_alone(trained_copy, exported, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    cases = [
        ([f"run_dir={tmp_path}", f"out={tmp_path / 'x'}"], f"{tmp_path} is not a vaeforge run folder"),
        ([f"run_dir={trained_copy}", f"out={foreign}"], f"out {foreign} exists and is not a vaeforge export: "
                                                        "refusing to replace it"),
        ([f"run_dir={trained_copy}", f"out={tmp_path / 'file'}"], "exists and is not a vaeforge export"),
        ([f"run_dir={trained_copy}", f"out={tmp_path / 'x'}", "weights=emma"], "unknown weights 'emma'"),
        ([f"run_dir={trained_copy}", f"out={tmp_path / 'x'}", "checkpoint=7"], "checkpoint '7' not found"),
    ]
    for args, message in cases:
        proc = export_cli(*args, check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert (foreign / "notes.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "keep me too"
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_write_leaves_the_earlier_export_and_no_debris(exported, tmp_path):
    out = Path(shutil.copytree(exported, tmp_path / "out"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def half_written(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_folder(out, half_written)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.fixture()
def tampered(exported, tmp_path):
    """A copy of the export whose config.json a test edits."""
    folder = Path(shutil.copytree(exported, tmp_path / "tampered"))

    def edit(change) -> Path:
        info = json.loads((folder / "config.json").read_text())
        change(info)
        (folder / "config.json").write_text(json.dumps(info))
        return folder

    return edit


SENTINEL = "import pathlib\npathlib.Path(__file__).with_name('IMPORTED').write_text('yes')\n"


def test_a_missing_backbone_plugin_is_one_line_and_the_module_the_folder_names_is_never_imported(
        tampered, tmp_path, monkeypatch):
    (tmp_path / "sentinel_backbone.py").write_text(SENTINEL)
    monkeypatch.syspath_prepend(str(tmp_path))

    def name_a_third_party_backbone(info):
        info["model"]["backbone"]["name"] = "tiny"
        info["plugins"][0].update(name="tiny", distribution="tinyplugin", version="0.3.0", module="sentinel_backbone")

    folder = tampered(name_a_third_party_backbone)
    with pytest.raises(ConfigError) as error:
        vaeforge.from_pretrained(folder)
    message = str(error.value)
    assert "\n" not in message and message.startswith("unknown backbone plugin 'tiny' (valid: ")
    assert "exported with it from tinyplugin 0.3.0 (sentinel_backbone): install it, or pass " \
           "plugins=[sentinel_backbone] if you trust that module" in message
    assert not (tmp_path / "IMPORTED").exists() and "sentinel_backbone" not in sys.modules


def test_another_plugin_version_is_warned_about_and_the_model_still_loads(tampered):
    folder = tampered(lambda info: info["plugins"][0].update(version="0.0.1"))
    with pytest.warns(UserWarning, match=r"backbone plugin 'unet': the model was exported with vaeforge 0\.0\.1 "
                                         r"\(vaeforge_plugins\.backbones\.unet\), this is vaeforge "):
        model = vaeforge.from_pretrained(folder)
    assert model.latent_dim == 16


@pytest.mark.parametrize("change, message", [
    (lambda info: info.update(format="something-else"), "is not a vaeforge export (config.json has no \"format\""),
    (lambda info: info.update(format_version=9), "is an export of format version 9; vaeforge"),
    (lambda info: info.pop("model"), "config.json is damaged: it lacks model"),
    (lambda info: info["model"].update(latent_dim=8), "was made for another architecture"),
])
def test_damaged_or_foreign_exports_are_one_line_errors(tampered, change, message):
    with pytest.raises(CheckpointError) as error:
        vaeforge.from_pretrained(tampered(change))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_run_folder_or_truncated_weights_are_not_loaded_as_an_export(trained_run, exported, tmp_path):
    with pytest.raises(CheckpointError, match=f"{trained_run} is not a vaeforge export"):
        vaeforge.from_pretrained(trained_run)
    folder = Path(shutil.copytree(exported, tmp_path / "cut"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is damaged or unreadable"):
        vaeforge.from_pretrained(folder)
