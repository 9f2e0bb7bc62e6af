"""Library code only logs; the command line shows it (issue 21 item 3). A Python program that calls vaeforge without
setting logging up sees its warnings only (logging's last resort) and never an info line; a command shows info lines
on stdout and problems on stderr, ``-q`` only the problems, ``-v`` the debug lines too, and a rank other than 0 only
the problems."""
from __future__ import annotations

import csv
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import PY, env
from vaeforge.cli.logs import CommandHandler
from vaeforge.prepare import main as prepare_main

WARNING = "column 'mood' holds 'sunny', not a number: it is no label column"  # the CSV's one warning


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Ten small random images and a labels CSV whose 'mood' column is no number (a warning when read)."""
    root = tmp_path_factory.mktemp("faces")
    images, rng = root / "images", np.random.default_rng(0)
    images.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "smiling", "mood"])
        writer.writerows([f"{i:03d}.png", i % 2, "sunny"] for i in range(10))
    return images, labels


def options(folder: tuple[Path, Path], out: Path) -> list[str]:
    images, labels = folder
    return ["dataset=folder", f"source={images}", f"out={out}", f"labels={labels}", "image_size=8",
            "train_shards=1", "val_shards=1", "val_fraction=0.2"]


LIBRARY_CALL = """
import sys
from vaeforge.data.build import prepare
images, labels, out = sys.argv[1:]
for _ in range(2):  # the second call is up to date: an info line
    prepare(images, out, dataset="folder", labels=labels, image_size=8, train_shards=1, val_shards=1, val_fraction=0.2)
"""


def test_a_library_call_shows_its_warnings_and_no_info_when_logging_is_not_set_up(folder, tmp_path):
    proc = subprocess.run([PY, "-c", LIBRARY_CALL, *map(str, folder), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, env=env(TQDM_DISABLE="1"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"{folder[1]}, line 2: {WARNING}"]  # logging's last resort: the message


def prepare_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[str, str]:
    prepare_main(list(argv))
    out = capsys.readouterr()
    return out.out, out.err


def test_a_command_shows_info_on_stdout_problems_on_stderr_and_quiet_and_verbose_change_what(folder, tmp_path,
                                                                                             capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out, err = prepare_cli(capsys, *options(folder, tmp_path / "a"))
    assert out.startswith("prepared folder: 8x8 RGB, crop center") and f"output: {tmp_path / 'a'}" in out
    assert err.splitlines() == [f"vaeforge: warning: {folder[1]}, line 2: {WARNING}"]

    out, err = prepare_cli(capsys, "-q", *options(folder, tmp_path / "c"))
    assert out == "" and err.splitlines() == [f"vaeforge: warning: {folder[1]}, line 2: {WARNING}"]

    out, err = prepare_cli(capsys, *options(folder, tmp_path / "a"), "--verbose")
    assert "up to date" in out and f"vaeforge: debug: {folder[0]}: sha256 " in err

    monkeypatch.setenv("RANK", "1")  # a second process of a launch: its problems only
    out, err = prepare_cli(capsys, *options(folder, tmp_path / "b"), "-v")
    assert out == "" and err.splitlines() == [f"vaeforge: warning: {folder[1]}, line 2: {WARNING}"]


def test_a_command_leaves_the_callers_logging_as_it_was(folder, tmp_path, capsys):
    logger = logging.getLogger("vaeforge")
    before = (logger.level, list(logger.handlers))
    with pytest.raises(SystemExit):
        prepare_main(["-q", "source=nowhere"])
    assert capsys.readouterr().err.startswith("vaeforge: error: prepare: missing required option(s): out=")
    assert (logger.level, list(logger.handlers)) == before
    assert not any(isinstance(h, CommandHandler) for h in logger.handlers)
