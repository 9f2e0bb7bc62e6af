"""Paths stay where they belong (issue 22 item 7): a task writes only under its output folder, whatever name it
passes; a run records its data folder as an absolute path, so it is used from any working directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import vaeforge
from helpers import PY, TINY, env, run, train
from vaeforge.api import TaskContext
from vaeforge.errors import DataError

ESCAPER = """\
from dataclasses import dataclass
import torch
from vaeforge.api import register_task

@dataclass
class EscapeConfig:
    name: str = "inside.png"
    grid: bool = False

@register_task("escaper", config=EscapeConfig)
def escaper(ctx, cfg):
    image = torch.full((3, 8, 8), 0.5)
    if cfg.grid:
        ctx.save_grid(cfg.name, image[None], nrow=1)
    else:
        ctx.save_image(cfg.name, image)
    return {}
"""


def files_outside(root: Path, folder: Path) -> list[Path]:
    return [p for p in root.rglob("*.png") if folder.resolve() not in p.resolve().parents]


@pytest.mark.parametrize("name,grid", [("../../escape.png", False), ("sub/../../escape.png", True),
                                       ("{root}/absolute.png", False), ("link/escape.png", False)])
def test_a_task_cannot_write_outside_its_output(name, grid, trained_run, tmp_path, tally):
    (tmp_path / "escape_tasks.py").write_text(ESCAPER)
    output = tmp_path / "a" / "b" / "out"
    output.mkdir(parents=True)
    (tmp_path / "linked").mkdir()
    (output / "link").symlink_to(tmp_path / "linked")  # a link in the output folder that leads out of it
    name = name.format(root=tmp_path)
    proc = run([PY, "-m", "vaeforge.run", "task=escaper", f"run_dir={trained_run}", f"output={output}",
                "plugins=[escape_tasks]", f"name={name}", f"grid={grid}"], check=False,
               env=env(PYTHONPATH=str(tmp_path)))
    lines = proc.stderr.strip().splitlines()
    tally["cases"] += 1
    tally["outside"] += len(files_outside(tmp_path, output))
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    tally["refused"] += 1
    assert "task 'escaper' (module escape_tasks)" in lines[0] and name in lines[0] and str(output) in lines[0]
    assert files_outside(tmp_path, output) == [] and not list(trained_run.parent.rglob("*escape*.png"))


def test_a_task_writes_into_sub_folders_of_its_output(trained_run, tmp_path):
    (tmp_path / "escape_tasks.py").write_text(ESCAPER)
    output = tmp_path / "out"
    run([PY, "-m", "vaeforge.run", "task=escaper", f"run_dir={trained_run}", f"output={output}",
         "plugins=[escape_tasks]", "name=sub/./inside.png"], env=env(PYTHONPATH=str(tmp_path)))
    assert (output / "sub" / "inside.png").is_file()


def test_a_label_column_cannot_place_its_vector_outside_the_run(trained_run, tmp_path, tally):
    """A run folder's manifest names the label columns; one named like a path is not a file name."""
    ctx = TaskContext(vaeforge.load(trained_run), tmp_path / "out")
    assert ctx.vector_path("Smiling") == (trained_run / "vectors" / "Smiling.safetensors").resolve()
    with pytest.raises(DataError, match="label column '../../evil' of .* is not a file name"):
        ctx.vector_path("../../evil")
    tally["cases"] += 1
    tally["refused"] += 1


def test_a_run_on_relative_data_is_used_from_another_folder(lfw64, tmp_path):
    run_dir = tmp_path / "run"
    relative = Path("..") / lfw64.parent.name / lfw64.name
    train(*TINY, f"data.shards={relative}", f"run_dir={run_dir}", "trainer.max_steps=2", cwd=lfw64.parent)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run([PY, "-m", "vaeforge.run", "task=reconstruct", f"run_dir={run_dir}", "input=val", "limit=4",
                "output=out"], cwd=elsewhere)
    summary = json.loads((elsewhere / "out" / "summary.json").read_text())
    assert len(summary["images"]) == 4, proc.stdout
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["shards"]
    assert recorded == str(lfw64.resolve())
