"""Every verb parses its ``key=value`` options the same way (one checker, one wording) and prints them with
``--help`` from the dataclass that docs/config.md is generated from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from vaeforge.cli import PluginsOptions, main
from vaeforge.config.loader import validate_options
from vaeforge.config.reference import _verb_options, rows
from vaeforge.config.schema import RunConfig


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return stop.value.code or 0, out.out, out.err


@pytest.mark.parametrize("verb, cls, prefix", [("train", RunConfig, ""), *_verb_options()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_help_lists_every_option_with_type_and_default(capsys, verb, cls, prefix):
    code, out, err = run(capsys, *verb.split(), "--help")
    assert code == 0 and not err and out.startswith(f"usage: vaeforge {verb}")
    lines = out.splitlines()
    for key, type_name, default, _, _ in rows(cls, prefix):
        line = next((line for line in lines if line.split()[:1] == [key]), None)
        assert line is not None, f"{key} missing from `vaeforge {verb} --help`"
        assert type_name in line and default in line, line


def test_run_help_adds_the_named_tasks_options(capsys):
    _, general, _ = run(capsys, "run", "--help")
    assert "tasks: " in general and "temperature" not in general
    _, sample, _ = run(capsys, "run", "task=sample", "--help")
    assert "options of task 'sample'" in sample and "temperature" in sample


@pytest.mark.parametrize("argv, message", [
    (["prepare", "sourse=x.tgz", "out=y"], "unknown key 'sourse' in prepare (at top level: valid: "),
    (["prepare", "out=y"], "prepare: missing required option(s): source=..."),
    (["prepare", "source=x", "out=y", "image_size=0"], "prepare: image_size must be >= 1, got 0"),
    (["prepare", "source=x", "out=y", "train_shards=many"], "bad value for 'train_shards' in prepare"),
    (["lpips", "net=vgx"], "lpips: unknown net 'vgx' (valid: alex, squeeze, vgg; did you mean 'vgg'?)"),
    (["lpips", "trunk_name=../alexnet-7be5be79.pth"], "is a path: give the file's name"),
    (["report"], "report: missing required option(s): run_dir=..."),
    (["report", "run_dir=r", "ouput=x"], "did you mean 'output'?"),
    (["export", "run_dir=r"], "export: missing required option(s): out=..."),
    (["export", "run_dir=r", "out=o", "fited=false"], "did you mean 'fitted'?"),
    (["run", "task=sample", "run_dir=r", "weights=emma"], "run: unknown weights 'emma' (valid: ema, model"),
    (["run", "task=sample", "run_dir=r", "limit=-1"], "run: limit must be >= 0, got -1"),
    (["submit", "recipe=lfw_mlp", "slurm.nodes=0", "--dry-run"], "nodes must be >= 1, got 0"),
    (["plugins", "pluginz=x"], "unknown key 'pluginz' in plugins"),
    (["recipes", "x=1"], "vaeforge recipes takes no options, got: x"),
])
def test_bad_options_end_in_one_line_before_any_work(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert err.startswith("vaeforge: error: ") and err.count("\n") == 1 and message in err, err


@dataclass
class Inner:
    names: Optional[List[str]] = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    sizes: List[int] = field(default_factory=list)
    word: str = "x"


def test_a_single_value_for_a_list_option_is_a_list_of_one():
    """``plugins=mod`` means ``plugins=[mod]`` for every verb, nested options too; other values are untouched."""
    assert validate_options(PluginsOptions, {"plugins": "my_tasks"}, "plugins").plugins == ["my_tasks"]
    assert validate_options(PluginsOptions, {"plugins": ["a", "b"]}, "plugins").plugins == ["a", "b"]
    got = validate_options(Outer, {"inner.names": "a", "sizes": 3, "word": "y"}, "outer")
    assert (got.inner.names, got.sizes, got.word) == (["a"], [3], "y")
    assert validate_options(Outer, {}, "outer").inner.names is None
