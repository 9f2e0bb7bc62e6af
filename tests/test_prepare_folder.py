"""``dataset=folder``: any image folder (CelebA/FFHQ-style) -> the same shards and manifest as LFW. Built from the
shared LFW images laid out as a flat folder with varied names, formats and sizes, and a labels CSV derived from the
shared lfw_attributes.txt; the trainer and the edit task then run on it unchanged."""
from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TINY, task, train
from vaeforge.data.build import prepare
from vaeforge.data.images import crop_box, crop_resize, decode_image
from vaeforge.data.lfw import read_attributes
from vaeforge.data.splits import read_split
from vaeforge.errors import ConfigError, DataError

PEOPLE, PER_PERSON = 5, 8  # people of lfw_attributes.txt in the folder, and images of each
SMALL = {"train_shards": 4, "val_shards": 1, "val_fraction": 0.2}
ODD_NAMES = ["face with spaces.jpg", "dots.in.name.png", "100%.jpeg", "ünï cödé.webp", "more/nested.JPG"]
SIZES = [(178, 218), (300, 200), (120, 160), (250, 250)]  # CelebA's aligned size, landscape, small, LFW's
JUNK = {".hidden.jpg": b"x", "notes.txt": b"not an image", "__MACOSX/._000001.jpg": b"\0\5\26\7"}


@pytest.fixture(scope="module")
def attributed(lfw_tgz: Path, labels_dir: Path) -> list[tuple[str, bytes]]:
    """(LFW file name, JPEG bytes): PER_PERSON images of each of the first PEOPLE people of lfw_attributes.txt that
    have that many in the archive."""
    scored = read_attributes(labels_dir / "lfw_attributes.txt").values
    found: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(lfw_tgz, "r|gz") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in scored and len(found.setdefault(name[:-9], [])) < PER_PERSON:
                found[name[:-9]].append((name, tar.extractfile(member).read()))  # type: ignore[union-attr]
    people = sorted(person for person, images in found.items() if len(images) == PER_PERSON)[:PEOPLE]
    return [image for person in people for image in found[person]]


def encode(data: bytes, name: str, size: tuple[int, int] | None) -> bytes:
    """The JPEG re-encoded in the format its new name says, resized to ``size`` (aspect changed) when given."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize(size, Image.Resampling.BICUBIC) if size else img
    buffer = io.BytesIO()
    suffix = Path(name).suffix.lower()
    img.save(buffer, format={".png": "PNG", ".webp": "WEBP"}.get(suffix, "JPEG"))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def celeba(attributed, lfw_members, labels_dir, tmp_path_factory) -> dict:
    """A CelebA-style folder: 000001.jpg... (some .png, odd names, one nested) of varied sizes, junk that is no
    image, and labels.csv (file, person, two Kumar scores, a 0/1 and a -1/1 column; empty where LFW has no
    score). Returns {"folder", "csv", "rows": file -> row, "sizes": file -> (w, h)}."""
    root = tmp_path_factory.mktemp("celeba")
    folder, scores = root / "images", read_attributes(labels_dir / "lfw_attributes.txt").values
    faces = [(name.rsplit("/", 1)[-1], data) for name, data in lfw_members] + attributed
    rows, sizes = {}, {}
    for index, (lfw_name, data) in enumerate(faces):
        file = ODD_NAMES[index] if index < len(ODD_NAMES) else f"{index + 1:06d}{'.png' if index % 7 == 0 else '.jpg'}"
        size = SIZES[index % len(SIZES)] if index % 3 == 0 else None
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_bytes(encode(data, file, size))
        sizes[file] = size or (250, 250)
        score = scores.get(lfw_name)
        rows[file] = {"file": file, "person": lfw_name[:-9], "Smiling": score and score["Smiling"],
                      "Male": score and score["Male"], "smiling": score and int(score["Smiling"] > 0),
                      "glasses": score and (1 if score["Eyeglasses"] > 0 else -1)}
    for name, data in JUNK.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    write_csv(root / "labels.csv", list(rows.values()))
    return {"folder": folder, "csv": root / "labels.csv", "rows": rows, "sizes": sizes}


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def samples(out: Path) -> dict[str, dict]:
    """Every sample of a prepared folder by file: pixels, metadata, the name tasks give it."""
    shards = [str(out / s["name"]) for split in manifest_of(out)["splits"].values() for s in split["shards"]]
    found = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                pixels = np.load(io.BytesIO(members[name[:-5] + ".npy"]), allow_pickle=False)
                found[meta["file"]] = {"meta": meta, "pixels": pixels, "key": name[:-5]}
    return found


def prepare_folder(source: Path, out: Path, **settings) -> dict:
    return prepare(source, out, dataset="folder", **{**SMALL, **settings})


@pytest.fixture(scope="module")
def by_image(celeba, tmp_path_factory) -> Path:
    """The folder prepared at 64x64, center crop, with the labels CSV and no identity column: split by image."""
    out = tmp_path_factory.mktemp("by_image") / "shards"
    prepare_folder(celeba["folder"], out, labels=celeba["csv"])
    return out


# --- the manifest and shards ---------------------------------------------------------------------------------------

def test_manifest_of_a_folder(by_image, celeba):
    manifest, rows = manifest_of(by_image), celeba["rows"]
    assert manifest["dataset"] == "folder" and manifest["crop"] == "center" and manifest["image_size"] == 64
    assert manifest["source_size"] is None  # the images have several sizes
    splits = manifest["splits"]
    assert splits["train"]["count"] + splits["val"]["count"] == len(rows) and manifest["skipped"] == []
    assert splits["train"]["identities"] == splits["val"]["identities"] == []
    assert 0.2 <= splits["val"]["count"] / len(rows) < 0.3
    labelled = [row for row in rows.values() if row["Smiling"] is not None]
    columns = manifest["label_columns"]
    assert set(columns) == {"Smiling", "Male", "smiling", "glasses"}  # person holds names: no label column
    assert columns["Smiling"] == columns["Male"] == {"kind": "real", "count": len(labelled)}
    assert columns["smiling"] == {"kind": "binary", "count": len(labelled),
                                  "positives": sum(row["smiling"] for row in labelled)}
    assert columns["glasses"]["kind"] == "binary"
    assert columns["glasses"]["positives"] == sum(row["glasses"] == 1 for row in labelled)


def test_every_image_is_a_sample_with_its_labels(by_image, celeba):
    found = samples(by_image)
    assert sorted(found) == sorted(celeba["rows"])  # junk, hidden files and __MACOSX left out
    for file, sample in found.items():
        row, meta = celeba["rows"][file], sample["meta"]
        assert sample["pixels"].shape == (64, 64, 3) and sample["pixels"].dtype == np.uint8
        assert meta["identity"] is None and "." not in sample["key"] and "/" not in sample["key"]
        expected = {} if row["Smiling"] is None else {"Smiling": row["Smiling"], "Male": row["Male"],
                                                      "smiling": row["smiling"], "glasses": int(row["glasses"] > 0)}
        assert meta["labels"] == pytest.approx(expected)
    assert found["more/nested.JPG"]["key"] == "more%2Fnested" and found["100%.jpeg"]["key"] == "100%25"
    assert found["dots.in.name.png"]["key"] == "dots%2Ein%2Ename"


def test_odd_names_survive_into_the_stream(by_image, celeba):
    shards = [str(by_image / s["name"]) for split in manifest_of(by_image)["splits"].values() for s in split["shards"]]
    names = {sample.name for sample in read_split(shards)}
    assert len(names) == len(celeba["rows"])
    assert {"face with spaces.png", "dots%2Ein%2Ename.png", "ünï cödé.png", "more%2Fnested.png"} <= names


def test_split_is_reproducible_by_seed(celeba, tmp_path):
    def val(out: Path, seed: int) -> list[str]:
        manifest = prepare_folder(celeba["folder"], out, seed=seed)
        return sorted(file for file, s in samples(out).items() if s["key"] in keys(out, manifest, "val"))

    first, again, other = val(tmp_path / "a", 0), val(tmp_path / "b", 0), val(tmp_path / "c", 1)
    assert first == again and first != other
    assert [s["sha256"] for s in manifest_of(tmp_path / "a")["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in manifest_of(tmp_path / "b")["splits"]["train"]["shards"]]


def keys(out: Path, manifest: dict, split: str) -> set[str]:
    names = set()
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            names |= {m.name.rsplit(".", 1)[0] for m in tar}
    return names


def test_identity_column_splits_by_person(celeba, tmp_path):
    out = tmp_path / "out"
    manifest = prepare_folder(celeba["folder"], out, labels=celeba["csv"], identity_column="person", val_fraction=0.3)
    train, val = (set(manifest["splits"][split]["identities"]) for split in ("train", "val"))
    people = {row["person"] for row in celeba["rows"].values()}
    assert train and val and not train & val and train | val == people
    for file, sample in samples(out).items():
        assert sample["meta"]["identity"] == celeba["rows"][file]["person"]
        in_val = sample["key"] in keys(out, manifest, "val")
        assert in_val == (sample["meta"]["identity"] in val)


def test_a_zip_names_its_images_inside_its_top_folder(celeba, tmp_path):
    archive = tmp_path / "img_align.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(celeba["folder"].rglob("*")):
            if path.is_file():
                zf.write(path, f"img_align/{path.relative_to(celeba['folder']).as_posix()}")
    manifest = prepare_folder(archive, tmp_path / "out", labels=celeba["csv"])
    found = samples(tmp_path / "out")
    assert sorted(found) == sorted(celeba["rows"]) and manifest["label_columns"]["smiling"]["count"] > 0


# --- crop modes ----------------------------------------------------------------------------------------------------

@pytest.fixture
def shapes(lfw_members, tmp_path) -> Path:
    """Three real faces resized to 300x200, 178x218 and 120x160."""
    folder = tmp_path / "shapes"
    folder.mkdir()
    for (_, data), (name, size) in zip(lfw_members, [("wide.jpg", (300, 200)), ("tall.png", (178, 218)),
                                                     ("small.png", (120, 160))]):
        (folder / name).write_bytes(encode(data, name, size))
    return folder


@pytest.mark.parametrize("crop, box, expected", [
    ("center", None, {"wide.jpg": (50, 0, 250, 200), "tall.png": (0, 20, 178, 198), "small.png": (0, 20, 120, 140)}),
    ("none", None, {"wide.jpg": (0, 0, 300, 200), "tall.png": (0, 0, 178, 218), "small.png": (0, 0, 120, 160)}),
    ("box", [10, 20, 110, 150], {name: (10, 20, 110, 150) for name in ("wide.jpg", "tall.png", "small.png")}),
])
def test_crop_modes(shapes, tmp_path, crop, box, expected):
    manifest = prepare_folder(shapes, tmp_path / "out", crop=crop, box=box, image_size=32, val_fraction=0)
    assert manifest["crop"] == (box or crop)
    for file, sample in samples(tmp_path / "out").items():
        original = Image.open(shapes / file)
        assert np.array_equal(sample["pixels"], np.asarray(crop_resize(original, expected[file], 32))), file


def test_task_inputs_are_cut_as_the_dataset_was():
    """A task's input files get the manifest's crop: a box scaled from the dataset's source size when its images all
    had one (LFW's 250x250, CelebA's 178x218), else as it is."""
    assert crop_box("center", (300, 200), "in.png") == (50, 0, 250, 200)
    assert crop_box("none", (300, 200), "in.png") == (0, 0, 300, 200)
    assert crop_box([0, 20, 178, 198], (356, 436), "in.png", [178, 218]) == (0, 40, 356, 396)
    assert crop_box([0, 20, 178, 198], (356, 436), "in.png") == (0, 20, 178, 198)
    with pytest.raises(DataError, match=r"in.png: image is 100x100, smaller than the crop box \[0, 20, 178, 198\]"):
        crop_box([0, 20, 178, 198], (100, 100), "in.png")


def test_a_camera_photo_is_turned_upright():
    """A phone stores a portrait as landscape pixels and an EXIF orientation; cutting those would cut sideways."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), "phone.jpg").size == (30, 40)


def test_an_image_smaller_than_the_box_is_named_or_skipped(shapes, tmp_path):
    with pytest.raises(DataError, match=rf"{shapes / 'small.png'}: image is 120x160, smaller than the crop box "
                                        r"\[0, 0, 150, 150\]; on_error=skip"):
        prepare_folder(shapes, tmp_path / "out", crop="box", box=[0, 0, 150, 150], val_fraction=0)
    manifest = prepare_folder(shapes, tmp_path / "out", crop="box", box=[0, 0, 150, 150], val_fraction=0,
                              on_error="skip")
    assert manifest["skipped"] == [{"file": str(shapes / "small.png"),
                                    "reason": "image is 120x160, smaller than the crop box [0, 0, 150, 150]"}]
    assert manifest["splits"]["train"]["count"] == 2


@pytest.mark.parametrize("settings, message", [
    ({"crop": "box"}, "crop=box needs box=[left,top,right,bottom]"),
    ({"box": [0, 0, 10, 10]}, "box= is only used with crop=box (crop is center)"),
    ({"crop": "box", "box": [10, 0, 5, 10]}, "box must be [left, top, right, bottom] with 0 <= left < right"),
    ({"crop": "square"}, "unknown crop 'square' (valid: box, center, none"),
    ({"identity_column": "person"}, "identity_column= names a column of the labels CSV: give labels=<csv> too"),
])
def test_invalid_settings(shapes, tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        prepare_folder(shapes, tmp_path / "out", **settings)


# --- bad images, labels that do not fit, idempotency ---------------------------------------------------------------

def test_bad_images_are_named_or_skipped(shapes, lfw_members, tmp_path):
    real = lfw_members[0][1]
    bad = {"cut.jpg": real[: len(real) // 2], "text.png": b"this is not a picture\n" * 20, "empty.webp": b""}
    for name, data in bad.items():
        (shapes / name).write_bytes(data)
    result = subprocess.run([sys.executable, "-m", "vaeforge.prepare", "dataset=folder", f"source={shapes}",
                             f"out={tmp_path / 'out'}", "val_fraction=0"], capture_output=True, text=True)
    assert result.returncode == 2 and any(f"{shapes / name}: not a readable image" in result.stderr for name in bad)
    assert not (tmp_path / "out").exists()
    manifest = prepare_folder(shapes, tmp_path / "out", on_error="skip", val_fraction=0)
    assert sorted(entry["file"] for entry in manifest["skipped"]) == sorted(str(shapes / name) for name in bad)
    assert manifest["splits"]["train"]["count"] == 3


def test_two_names_that_make_one_key_are_named(shapes, tmp_path):
    (shapes / "wide.png").write_bytes((shapes / "tall.png").read_bytes())
    with pytest.raises(DataError, match=rf"{shapes / 'wide.jpg'} and {shapes / 'wide.png'} would be the same "
                                        "sample 'wide'"):
        prepare_folder(shapes, tmp_path / "out")


def test_labels_that_do_not_fit_the_images(celeba, tmp_path):
    rows = list(celeba["rows"].values())
    elsewhere = write_csv(tmp_path / "elsewhere.csv", [{**row, "file": f"img/{row['file']}"} for row in rows])
    with pytest.raises(DataError, match=r"none of its \d+ rows names an image of the source .*named like"):
        prepare_folder(celeba["folder"], tmp_path / "out", labels=elsewhere)
    partial = write_csv(tmp_path / "partial.csv", rows[:-2])
    with pytest.raises(DataError, match=r"2 image\(s\) have no row in the labels CSV, so no person"):
        prepare_folder(celeba["folder"], tmp_path / "out", labels=partial, identity_column="person")
    with pytest.raises(DataError, match=r"line 1: no column 'image_id' \(file_column=\)"):
        prepare_folder(celeba["folder"], tmp_path / "out", labels=celeba["csv"], file_column="image_id")
    twice = write_csv(tmp_path / "twice.csv", [*rows, rows[0]])
    with pytest.raises(DataError, match=rf"{twice}, line {len(rows) + 2}: second row for {rows[0]['file']}"):
        prepare_folder(celeba["folder"], tmp_path / "out", labels=twice)


def test_second_run_is_up_to_date_and_a_changed_csv_rebuilds(celeba, tmp_path, caplog):
    out, labels = tmp_path / "out", tmp_path / "labels.csv"
    labels.write_bytes(celeba["csv"].read_bytes())
    first = prepare_folder(celeba["folder"], out, labels=labels)
    before = {path: path.stat().st_mtime_ns for path in out.iterdir()}
    caplog.set_level(logging.INFO, logger="vaeforge")
    assert prepare_folder(celeba["folder"], out, labels=labels) == first
    assert "up to date" in caplog.text  # a library call logs it (vaeforge's logger, level info)
    assert {path: path.stat().st_mtime_ns for path in out.iterdir()} == before
    labels.write_text(labels.read_text().replace(",Smiling,", ",Smile,"))
    assert "Smile" in prepare_folder(celeba["folder"], out, labels=labels)["label_columns"]


def test_cli_summary(celeba, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "vaeforge.prepare", "dataset=folder", f"source={celeba['folder']}",
                             f"out={out}", f"labels={celeba['csv']}", "identity_column=person", "image_size=32"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "prepared folder: 32x32 RGB, crop center" in result.stdout and "identities" in result.stdout
    assert "2 real label columns: Smiling, Male" in result.stdout and str(out) in result.stdout
    assert "binary label columns: smiling, glasses" in result.stdout


# --- the trainer and the tasks on it, unchanged --------------------------------------------------------------------

def test_training_and_tasks_run_on_a_folder_dataset(by_image, shapes, tmp_path):
    run_dir = tmp_path / "run"
    train(*TINY, f"data.shards={by_image}", f"run_dir={run_dir}", "trainer.max_steps=4")
    assert (run_dir / "checkpoints" / "step_00000004").is_dir()
    edit = tmp_path / "edit"
    task("task=edit", f"run_dir={run_dir}", "input=val", "limit=2", "attribute=smiling", "alphas=[0,2]",
         f"output={edit}")
    summary = json.loads((edit / "summary.json").read_text())
    assert summary["kind"] == "binary" and summary["vector_images"] > 0 and len(summary["images"]) == 2
    rec = tmp_path / "rec"
    task("task=reconstruct", f"run_dir={run_dir}", f"input={shapes}", f"output={rec}")  # center-cut as prepared
    assert sorted(p.name for p in rec.glob("*.png") if p.name != "grid.png") == ["small.png", "tall.png", "wide.png"]
