"""YAML someone else wrote (a recipe, a run folder's config.yaml, a SLURM profile) is read without anchors and
aliases: an alias bomb of a few hundred bytes is refused in one line naming the file before it can expand
(issue 22 item 6: one grew past 1 GB in 90 s inside OmegaConf.merge)."""
from __future__ import annotations

import contextlib
import resource
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import PY, run
from vaeforge.config.loader import load_config, load_recipe
from vaeforge.errors import ConfigError

# nine levels of nine aliases each: 9^9 (387 million) strings once expanded, 392 bytes on disk
LEVELS = "abcdefghi"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{below}'] * 9)}]\n" for below, name in zip(LEVELS, LEVELS[1:]))
MEMORY_CAP = 1 << 30  # bytes of heap a refused bomb's process may use: a regression fails here, not the machine


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail the test when the block runs longer than ``seconds`` (it is interrupted, so a bomb cannot grow on)."""
    def expire(*_):
        raise AssertionError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def capped_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP, MEMORY_CAP))


def test_alias_bomb_recipe_is_refused_within_two_seconds(tmp_path, tally):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(f"base: lfw_mlp\n{BOMB}")
    started = time.monotonic()
    with deadline(2.0), pytest.raises(ConfigError) as err:
        load_recipe(str(recipe))
    tally["cases"] += 1
    tally["refused"] += 1
    assert str(recipe) in str(err.value) and "alias" in str(err.value) and "\n" not in str(err.value)
    print(f"refused in {time.monotonic() - started:.3f} s")


def bomb_run_folder(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of a trained run whose config.yaml is an alias bomb."""
    run_dir = tmp_path / "bombed_run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("tasks", "priors", "vectors"))
    (run_dir / "config.yaml").write_text(BOMB)
    return run_dir


ENTRY_POINTS = {  # where each entry point reads the bomb: (command, the file it names)
    "recipe": lambda bomb, run_dir: (["vaeforge.train", f"recipe={bomb}"], bomb),
    "resumed run": lambda bomb, run_dir: (["vaeforge.train", f"run_dir={run_dir}", "resume=true"],
                                          run_dir / "config.yaml"),
    "task on a run": lambda bomb, run_dir: (["vaeforge.run", "task=sample", f"run_dir={run_dir}"],
                                            run_dir / "config.yaml"),
    "report": lambda bomb, run_dir: (["vaeforge.runs.report", f"run_dir={run_dir}"], run_dir / "config.yaml"),
    "slurm profile": lambda bomb, run_dir: (["vaeforge.submit", "recipe=lfw_mlp", f"slurm={bomb}", "--dry-run"],
                                            bomb),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_alias_bomb_is_one_line_from_every_entry_point(entry, trained_run, tmp_path, tally):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"base: lfw_mlp\n{BOMB}" if entry == "recipe" else BOMB)
    args, named = ENTRY_POINTS[entry](bomb, bomb_run_folder(trained_run, tmp_path))
    proc = run([PY, "-m", *args], check=False, timeout=120, preexec_fn=capped_memory)
    lines = proc.stderr.strip().splitlines()
    tally["cases"] += 1
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    tally["refused"] += 1
    assert lines[0].startswith(f"vaeforge: error: {named}: YAML anchors and aliases")


SECRET = "Zs8u2nkW3x"
NOT_RECIPES = {  # files a recipe path may point at by mistake (or on purpose): their content is never shown
    "shadow": f"root:$6${SECRET}:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n".encode(),
    "unclosed quote": f'password: "{SECRET}\n'.encode(),
    "tab": f"token:\t{SECRET}\n".encode(),
    "undefined tag": f"key: !{SECRET} value\n".encode(),
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00" + SECRET.encode(),
    "control character": f"key: {SECRET}\x07\n".encode(),
}


@pytest.mark.parametrize("kind", NOT_RECIPES)
def test_a_file_that_is_not_a_recipe_is_named_never_shown(kind, tmp_path, tally):
    path = tmp_path / "secret"
    path.write_bytes(NOT_RECIPES[kind])
    with pytest.raises(ConfigError) as err:
        load_config({"recipe": str(path)})
    message = str(err.value)
    tally["cases"] += 1
    tally["echoed"] += SECRET in message
    assert message.startswith(f"{path}: ") and "\n" not in message and SECRET not in message, message
    tally["refused"] += 1
