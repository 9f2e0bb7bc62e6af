"""LFW preparation: the real devtrain archive end to end, idempotency, sources, and clear user errors."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from vaeforge.data.images import load_image
from vaeforge.data.lfw import read_attributes, read_emotions, read_gender
from vaeforge.data.build import prepare
from vaeforge.data.splits import read_split
from vaeforge.errors import ConfigError, DataError

DEVTRAIN_IMAGES, DEVTRAIN_PEOPLE = 9525, 4038
SMALL = {"train_shards": 4, "val_shards": 1, "val_fraction": 0.2}


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def shard_paths(folder: Path) -> list[Path]:
    manifest = manifest_of(folder)
    return [folder / shard["name"] for split in manifest["splits"].values() for shard in split["shards"]]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaeforge.prepare", *args], capture_output=True, text=True)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2 and, after any progress bar, one last stderr line ``vaeforge: error: ...`` with every fragment."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vaeforge: error: ")]
    assert result.returncode == 2 and errors == lines[-1:], result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


# --- the real devtrain archive (prepared once by the lfw64 fixture) ---------------------------------------------

def test_counts_and_identities(lfw64):
    splits = manifest_of(lfw64)["splits"]
    assert splits["train"]["count"] + splits["val"]["count"] == DEVTRAIN_IMAGES
    train, val = set(splits["train"]["identities"]), set(splits["val"]["identities"])
    assert not train & val and len(train | val) == DEVTRAIN_PEOPLE
    assert 0.04 <= splits["val"]["count"] / DEVTRAIN_IMAGES <= 0.07


def test_label_columns(lfw64):
    columns = manifest_of(lfw64)["label_columns"]
    assert columns["Smiling"] == columns["Pale Skin"] == {"kind": "real", "count": 2353}
    assert columns["happiness"] == {"kind": "binary", "count": 9184, "positives": 3862}
    assert columns["neutral"]["positives"] == 4784 and columns["gender_male"]["kind"] == "binary"
    assert sum(1 for column in columns.values() if column["kind"] == "real") == 73


def test_shards_equal_and_checksummed(lfw64):
    manifest = manifest_of(lfw64)
    for split, shards in (("train", 16), ("val", 4)):
        entries = manifest["splits"][split]["shards"]
        counts = [entry["count"] for entry in entries]
        assert len(entries) == shards and max(counts) - min(counts) <= 1
        assert sum(counts) == manifest["splits"][split]["count"]
        for entry in entries:
            assert hashlib.sha256((lfw64 / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]


def test_samples_decode_and_carry_labels(lfw64):
    manifest = manifest_of(lfw64)
    samples = {sample["__key__"]: sample for sample in wds.WebDataset([str(p) for p in shard_paths(lfw64)],
                                                                      shardshuffle=False, empty_check=False)}
    assert len(samples) == DEVTRAIN_IMAGES
    meta = json.loads(samples["Aaron_Peirsol_0001"]["json"])
    assert meta["identity"] == "Aaron_Peirsol" and meta["file"] == "Aaron_Peirsol_0001.jpg"
    assert meta["labels"]["happiness"] == 1 and meta["labels"]["neutral"] == 0 and meta["labels"]["gender_male"] == 1
    pixels = np.load(io.BytesIO(samples["Aaron_Peirsol_0001"]["npy"]), allow_pickle=False)
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3) and 40 < pixels.mean() < 215
    kumar = json.loads(samples["Alejandro_Toledo_0001"]["json"])["labels"]
    assert {name for name, column in manifest["label_columns"].items() if column["kind"] == "real"} <= set(kumar)


def test_train_shards_mix_identities(lfw64):
    with tarfile.open(lfw64 / "train-000000.tar") as tar:
        keys = [Path(name).stem for name in tar.getnames() if name.endswith(".json")]
    identities = {key.rsplit("_", 1)[0] for key in keys}
    assert len(identities) > len(keys) // 3


def test_rerun_is_idempotent(lfw64, caplog):
    files = sorted(lfw64.iterdir())
    before = {path: path.stat().st_mtime_ns for path in files}
    manifest = manifest_of(lfw64)
    caplog.set_level(logging.INFO, logger="vaeforge")
    assert prepare(out=lfw64, **manifest["config"]) == manifest
    assert "up to date" in caplog.text  # a library call logs it (vaeforge's logger, level info)
    assert {path: path.stat().st_mtime_ns for path in sorted(lfw64.iterdir())} == before


# --- small sources built from the first images of the real archive -----------------------------------------------

@pytest.fixture
def small_tgz(lfw_members, make_tgz, tmp_path) -> Path:
    return make_tgz(tmp_path / "small.tgz", lfw_members)


def test_changed_config_replaces_output(small_tgz, lfw_members, tmp_path):
    out = tmp_path / "out"
    first = prepare(small_tgz, out, **SMALL)
    second = prepare(small_tgz, out, image_size=32, **SMALL)
    assert first["image_size"] == 64 and second["image_size"] == 32 and manifest_of(out) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small.tgz"]  # no staging leftovers
    with tarfile.open(out / "train-000000.tar") as tar:
        npy = next(tar.extractfile(m).read() for m in tar if m.name.endswith(".npy"))  # type: ignore[union-attr]
    assert np.load(io.BytesIO(npy), allow_pickle=False).shape == (32, 32, 3)


def test_an_output_of_the_png_format_is_rebuilt(small_tgz, tmp_path):
    out = tmp_path / "out"
    manifest = prepare(small_tgz, out, **SMALL)
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))  # as written by format-1 vaeforge
    assert prepare(small_tgz, out, **SMALL)["format"] == 2 and manifest_of(out)["format"] == 2


def test_output_is_deterministic(small_tgz, tmp_path):
    shas = [[shard["sha256"] for split in prepare(small_tgz, tmp_path / name, **SMALL)["splits"].values()
             for shard in split["shards"]] for name in ("a", "b")]
    assert shas[0] == shas[1]


@pytest.mark.parametrize("layout", ["parent", "lfw-deepfunneled", "people"])
def test_folder_sources(lfw_members, tmp_path, layout):
    root = tmp_path / "src"
    for name, data in lfw_members:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    source = {"parent": root, "lfw-deepfunneled": root / "lfw-deepfunneled",
              "people": root / "lfw-deepfunneled"}[layout]
    if layout == "people":  # a plain folder of <Name>/<Name>_NNNN.jpg
        source = source.rename(tmp_path / "people")
    manifest = prepare(source, tmp_path / "out", **SMALL)
    identities = {name.split("/")[1] for name, _ in lfw_members}
    splits = manifest["splits"].values()
    assert sum(split["count"] for split in splits) == len(lfw_members)
    assert sorted(i for split in splits for i in split["identities"]) == sorted(identities)


def test_cli_folder_source_with_labels_dir(lfw_members, labels_dir, tmp_path):
    for name, data in lfw_members:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    out = tmp_path / "out"
    result = run_cli("dataset=lfw", f"source={tmp_path / 'src'}", f"out={out}", f"labels={labels_dir}",
                     "train_shards=4", "val_shards=1", "val_fraction=0.2", "crop=[60,60,190,190]", "image_size=32")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "happiness" in result.stdout and "Pale Skin" in result.stdout
    manifest = manifest_of(out)
    assert manifest["crop"] == [60, 60, 190, 190] and manifest["image_size"] == 32
    assert sum(split["count"] for split in manifest["splits"].values()) == len(lfw_members)
    assert {"Smiling", "happiness", "gender_male"} <= set(manifest["label_columns"])


def test_foreign_output_folder_is_not_replaced(small_tgz, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="refusing to replace"):
        prepare(small_tgz, tmp_path / "mine", **SMALL)


@pytest.mark.parametrize("kwargs, message", [
    ({"crop": (0, 0, 300, 300)}, "crop must be"),
    ({"image_size": 0}, "image_size must be"),
    ({"val_fraction": 1.5}, "val_fraction must be"),
    ({"checksum": "crc:1"}, "checksum 'crc:1'"),
])
def test_invalid_settings(small_tgz, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        prepare(small_tgz, tmp_path / "out", **kwargs)


def test_checksum_of_local_archive(small_tgz, tmp_path):
    with pytest.raises(DataError, match=r"checksum mismatch for .*small\.tgz"):
        prepare(small_tgz, tmp_path / "out", checksum="md5:" + "0" * 32, **SMALL)
    assert not (tmp_path / "out").exists()


# --- command-line errors ---------------------------------------------------------------------------------------

def test_cli_unknown_option(tmp_path):
    assert_user_error(run_cli("sourse=x.tgz", f"out={tmp_path}"), "unknown key 'sourse' in prepare",
                      "did you mean 'source'")


def test_cli_unknown_dataset(tmp_path):
    assert_user_error(run_cli("dataset=celeba", "source=x.tgz", f"out={tmp_path}"), "unknown dataset 'celeba'", "lfw")


def test_cli_missing_source(tmp_path):
    assert_user_error(run_cli(f"source={tmp_path / 'nope.tgz'}", f"out={tmp_path / 'out'}"),
                      str(tmp_path / "nope.tgz"), "no such file")


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_cli_damaged_archive(lfw_tgz, tmp_path, damage):
    bad = tmp_path / "bad.tgz"
    with open(lfw_tgz, "rb") as f:
        bad.write_bytes(f.read(1_000_000) if damage == "truncated" else b"<html>not found</html>" * 100)
    assert_user_error(run_cli(f"source={bad}", f"out={tmp_path / 'out'}"), str(bad), "not a complete .tgz")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["truncated", "garbage"])
def test_cli_corrupt_jpeg_in_archive(lfw_members, make_tgz, tmp_path, content):
    real = lfw_members[0][1]
    member = "lfw-deepfunneled/Broken_Person/Broken_Person_0001.jpg"
    data = real[: len(real) // 2] if content == "truncated" else b"\x00garbage" * 100
    tgz = make_tgz(tmp_path / "corrupt.tgz", [*lfw_members[:8], (member, data)])
    out = tmp_path / "out"
    assert_user_error(run_cli(f"source={tgz}", f"out={out}", *[f"{k}={v}" for k, v in SMALL.items()]),
                      f"{tgz}:{member}", "not a readable image")
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


# --- label files and image loading ---------------------------------------------------------------------------

@pytest.mark.parametrize("reader, text, line", [
    (read_attributes, "# c\n#\tperson\timagenum\tMale\tSmiling\nAaron Eckhart\t1\t0.5\t1.0\n"
                      "Aaron Eckhart\t2\t0.5\n", 4),
    (read_attributes, "#\tperson\timagenum\tMale\nAaron Eckhart\tone\t0.5\n", 2),
    (read_attributes, "Aaron Eckhart\t1\t0.5\n", 1),
    (read_emotions, "image,emotion\nAaron_Eckhart_0001.jpg,neutral\nAaron_Eckhart_0002.jpg\n", 3),
    (read_emotions, "image,emotion\nAaron_Eckhart.png,neutral\n", 2),
    (read_emotions, "file,label\n", 1),
])
def test_malformed_label_file_names_file_and_line(tmp_path, reader, text, line):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"{path}, line {line}: "):
        reader(path)


def test_label_readers(tmp_path):
    attributes = tmp_path / "a.txt"
    attributes.write_text("# c\n#\tperson\timagenum\tMale\tPale Skin\nAaron Van Eckhart\t12\t0.5\t-1.25\n")
    assert read_attributes(attributes).values == {"Aaron_Van_Eckhart_0012.jpg": {"Male": 0.5, "Pale Skin": -1.25}}
    emotions = tmp_path / "e.csv"
    emotions.write_text("image,emotion\nA_B_0001.jpg,happiness\nA_B_0002.jpg,neutral\n")
    labels = read_emotions(emotions)
    assert labels.kinds == {"happiness": "binary", "neutral": "binary"}
    assert labels.values["A_B_0001.jpg"] == {"happiness": 1, "neutral": 0}
    male, female = tmp_path / "m.txt", tmp_path / "f.txt"
    male.write_text("A_B_0001.jpg\nC_D_0001.jpg\n")
    female.write_text("E_F_0001.jpg\nC_D_0001.jpg\n\n")
    assert read_gender(male, female).values == {"A_B_0001.jpg": {"gender_male": 1}, "E_F_0001.jpg": {"gender_male": 0}}


def test_load_image_errors(lfw_members, tmp_path):
    real = lfw_members[0][1]
    (tmp_path / "ok.jpg").write_bytes(real)
    assert load_image(tmp_path / "ok.jpg").size == (250, 250)
    (tmp_path / "cut.jpg").write_bytes(real[: len(real) // 2])
    for name in ("cut.jpg", "missing.jpg"):
        with pytest.raises(DataError, match=str(tmp_path / name)):
            load_image(tmp_path / name)


# --- odd files: any name, any size, any bytes --------------------------------------------------------------------

def jpeg(width: int, height: int | None = None, seed: int = 0) -> bytes:
    """A JPEG of noise (a stand-in face: these tests are about names, sizes and bytes, not content)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height or width, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def people(*names: str) -> list[tuple[str, bytes]]:
    """Two good 250x250 images for each name, in the official layout."""
    return [(f"lfw-deepfunneled/{n}/{n}_{i:04d}.jpg", jpeg(250, seed=i)) for n in names for i in (1, 2)]


def test_any_identity_name_survives_into_the_stream(make_tgz, tmp_path):
    odd = ["Dot.Name", "Per%cent", "Two..Dots.", "Ünï Cödé"]
    tgz = make_tgz(tmp_path / "odd.tgz", people(*odd, "Plain_Name"))
    out = tmp_path / "out"
    manifest = prepare(tgz, out, val_fraction=0.0, train_shards=2, val_shards=1)
    samples = list(read_split([str(out / s["name"]) for s in manifest["splits"]["train"]["shards"]]))
    keys = sorted(s.name for s in samples)
    assert len(keys) == len(set(keys)) == 10
    assert "Dot%2EName_0001.png" in keys and "Per%25cent_0002.png" in keys and "Two%2E%2EDots%2E_0001.png" in keys
    with tarfile.open(out / manifest["splits"]["train"]["shards"][0]["name"]) as tar:
        files = {json.load(tar.extractfile(m))["file"] for m in tar if m.name.endswith(".json")}
    assert files <= {f"{n}_{i:04d}.jpg" for n in [*odd, "Plain_Name"] for i in (1, 2)} and files


BAD_IMAGES = {
    "Tiny_Face": (jpeg(10), "is 10x10, LFW images are 250x250"),
    "Huge_Face": (jpeg(1200, 900), "is 1200x900, LFW images are 250x250"),
    "Empty_File": (b"", "not a readable image"),
    "Text_File": (b"this is not a picture\n" * 20, "not a readable image"),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_a_bad_image_is_named_by_default(make_tgz, tmp_path, name):
    data, reason = BAD_IMAGES[name]
    member = f"lfw-deepfunneled/{name}/{name}_0001.jpg"
    tgz = make_tgz(tmp_path / "bad.tgz", [*people("Good_One", "Good_Two"), (member, data)])
    assert_user_error(run_cli(f"source={tgz}", f"out={tmp_path / 'out'}", "val_fraction=0"),
                      f"{tgz}:{member}", reason, "on_error=skip")
    assert not (tmp_path / "out").exists()


def test_on_error_skip_leaves_bad_images_out_and_lists_them(make_tgz, tmp_path):
    bad = [(f"lfw-deepfunneled/{n}/{n}_0001.jpg", data) for n, (data, _) in BAD_IMAGES.items()]
    tgz = make_tgz(tmp_path / "bad.tgz", [*people("Good_One", "Good_Two", "Good_Three"), *bad])
    out = tmp_path / "out"
    result = run_cli(f"source={tgz}", f"out={out}", "on_error=skip", "val_fraction=0.3", "train_shards=8")
    assert result.returncode == 0, result.stderr
    assert "skipped 4 image(s) (on_error=skip):" in result.stdout
    for name, (_, reason) in BAD_IMAGES.items():
        assert f"{tgz}:lfw-deepfunneled/{name}/{name}_0001.jpg: " in result.stdout and reason in result.stdout
    manifest = manifest_of(out)
    assert {entry["file"].rsplit("/", 1)[-1] for entry in manifest["skipped"]} == {f"{n}_0001.jpg" for n in BAD_IMAGES}
    splits = manifest["splits"]
    assert splits["train"]["count"] + splits["val"]["count"] == 6
    assert not set(BAD_IMAGES) & {i for split in splits.values() for i in split["identities"]}
    assert all(shard["count"] > 0 and (out / shard["name"]).is_file() for s in splits.values() for shard in s["shards"])
    assert sum(1 for _ in read_split([str(p) for p in shard_paths(out)])) == 6
