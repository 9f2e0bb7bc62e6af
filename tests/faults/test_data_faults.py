"""Bad data is named (on_error=raise) or skipped and counted (on_error=skip), never a short rank."""
from __future__ import annotations

import io
import itertools
import json
import shutil
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from vaeforge.data.stream import StreamSpec, eval_batches, train_loader
from vaeforge.data.manifest import read_manifest, shard_paths
from vaeforge.errors import DataError


def png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 64, 32)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def faulty(lfw64: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the prepared data with four faults: shard 1 truncated, shard 2 holding a garbage sample and a
    32x32 image among good ones, and shard 3 missing."""
    out = tmp_path_factory.mktemp("faults") / "faulty"
    shutil.copytree(lfw64, out)
    shard1 = out / "train-000001.tar"
    shard1.write_bytes(shard1.read_bytes()[: shard1.stat().st_size // 2])
    shard2 = out / "train-000002.tar"
    good = list(wds.tarfile_to_samples()(iter([{"url": str(shard2)}])))[:40]
    with wds.TarWriter(str(shard2)) as writer:
        for i, sample in enumerate(good):
            writer.write({k: v for k, v in sample.items() if k in ("__key__", "npy", "json")})
            if i == 5:
                writer.write({"__key__": "Garbage_0001", "npy": b"\x93NUMPY garbage bytes", "json": b"{}"})
            if i == 9:
                writer.write({"__key__": "Tiny_0001", "png": png(32), "json": b"{}"})  # format-1 shards held PNGs
    (out / "train-000003.tar").unlink()
    return out


def spec(shards: list[str], on_error: str, batches: int = 10) -> StreamSpec:
    return StreamSpec(tuple(shards), 16, batches, 0, 1, 0, 0, 32, image_size=64, on_error=on_error)


def test_missing_shard_is_named(faulty):
    with pytest.raises(DataError, match="missing shard file.*train-000003.tar"):
        shard_paths(faulty, read_manifest(faulty), "train")


def only(faulty: Path, *names: str) -> list[str]:
    return [str(faulty / n) for n in names]


def test_truncated_shard_is_named(faulty):
    with pytest.raises(DataError, match=r"shard .*train-000001.tar: (unexpected end of data|sample .* has no npy or png image)"):
        list(eval_batches(only(faulty, "train-000001.tar"), 64, 0, 1, 64))


@pytest.mark.parametrize("key, message", [("Garbage_0001", "is unreadable"), ("Tiny_0001", "is 32x32, the dataset's size is 64x64")])
def test_bad_sample_is_named_with_its_shard(faulty, key, message):
    with pytest.raises(DataError) as err:
        list(eval_batches(only(faulty, "train-000002.tar"), 64, 0, 1, 64))
    text = str(err.value)
    assert "train-000002.tar" in text and "sample 'Garbage_0001'" in text and "is unreadable" in text
    # The 32x32 image is named the same way once the garbage one is out of the way (skip mode warns about it).
    with pytest.warns(UserWarning, match=f"sample '{key}' {message}"):
        list(eval_batches(only(faulty, "train-000002.tar"), 64, 0, 1, 64, on_error="skip"))


def test_skip_counts_faults_and_still_fills_every_batch(faulty):
    shards = only(faulty, "train-000000.tar", "train-000001.tar", "train-000002.tar")
    with pytest.warns(UserWarning):
        batches = list(train_loader(spec(shards, "skip", batches=80), 0))
    assert len(batches) == 80 and all(b["image"].shape == (16, 3, 64, 64) for b in batches)
    keys = list(itertools.chain(*(b["key"] for b in batches)))
    assert "Garbage_0001" not in keys and "Tiny_0001" not in keys
    assert sum(b["skipped"] for b in batches) >= 3  # truncated shard, garbage sample, wrong size (each pass)


def test_raise_is_the_default_in_training_streams(faulty):
    with pytest.raises(DataError, match="train-000002.tar"):
        list(train_loader(spec(only(faulty, "train-000002.tar"), "raise"), 0))


def test_manifest_is_intact(faulty):
    assert json.loads((faulty / "manifest.json").read_text())["splits"]["train"]["count"] > 0


def test_training_with_skip_counts_bad_data_and_finishes(faulty, tmp_path, tally):
    """The engine end to end on four shards of which three are bad (truncated twice, garbage and wrong-size
    samples): raise stops naming the shard; skip trains to the end and logs the count."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from helpers import TINY, train

    data = tmp_path / "data"
    shutil.copytree(faulty, data)
    (data / "train-000003.tar").write_bytes((data / "train-000001.tar").read_bytes())
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"] = manifest["splits"]["train"]["shards"][:4]
    manifest["splits"]["train"]["count"] = sum(s["count"] for s in manifest["splits"]["train"]["shards"])
    (data / "manifest.json").write_text(json.dumps(manifest))
    args = [*TINY, f"data.shards={data}", "trainer.max_steps=40", "data.shuffle_buffer=16", "trainer.log_every=40"]
    raised = train(*args, f"run_dir={tmp_path / 'raise'}", check=False)
    assert raised.returncode == 2 and "vaeforge: error: shard" in raised.stderr and ".tar" in raised.stderr
    train(*args, f"run_dir={tmp_path / 'skip'}", "data.on_error=skip")
    acc = EventAccumulator(str(tmp_path / "skip" / "tb"))
    acc.Reload()
    assert acc.Scalars("train/data_skipped")[-1].value >= 1
    tally["trials"] += 2
    tally["faults"] += 4
