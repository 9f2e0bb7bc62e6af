"""Sweeps and the leaderboard without a cluster: the grid's points and folder names, ``submit sweep=... --dry-run``
(the array's sbatch script, every point validated before anything is queued), and ``vaeforge leaderboard`` on
run folders written by hand (a task summary, a TensorBoard log only, nothing at all, a point not started yet).
The sweep on the local SLURM cluster is in test_slurm.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from helpers import TINY, dump_dom
from vaeforge.errors import ConfigError
from vaeforge.runs.leaderboard import LeaderboardOptions, main as leaderboard_main, write_leaderboard
from vaeforge.runs.sweep import SWEEP_FILE, expand, parse_grid, write_index
from vaeforge.submit import main as submit_main


def test_grid_is_the_cartesian_product_with_readable_folders():
    points = expand("optim.lr=[1e-3,7e-4],losses.kl.args.beta=[0.02, 0.05],trainer.max_steps=30")
    assert [p.folder for p in points] == ["lr=1e-3,beta=0.02,max_steps=30", "lr=1e-3,beta=0.05,max_steps=30",
                                          "lr=7e-4,beta=0.02,max_steps=30", "lr=7e-4,beta=0.05,max_steps=30"]
    assert points[1].overrides == {"optim.lr": "1e-3", "losses.kl.args.beta": 0.05, "trainer.max_steps": 30}
    assert points[1].args() == ["optim.lr=1e-3", "losses.kl.args.beta=0.05", "trainer.max_steps=30"]


def test_grid_values_are_yaml_and_folder_names_are_safe_paths():
    assert parse_grid("model.backbone.args.widths=[[8,16],[16,32]],data.corruption.kind=['a b', \"c,d\"]") == {
        "model.backbone.args.widths": [[8, 16], [16, 32]], "data.corruption.kind": ["a b", "c,d"]}
    points = expand("model.backbone.args.widths=[[8,16],[16,32]],data.corruption.kind=['a b/*', \"no\"]")
    assert [p.folder for p in points] == ["widths=8_16,kind=a_b", "widths=8_16,kind=no",
                                          "widths=16_32,kind=a_b", "widths=16_32,kind=no"]
    # quoted where a bare word would read back differently: the string "no" stays a string, a list a list
    assert points[1].args() == ["model.backbone.args.widths=[8,16]", "data.corruption.kind=no"]
    assert expand("x.kind=[true,'true']")[1].args() == ['x.kind="true"']
    # keys sharing a last part keep enough of their path to tell them apart
    assert expand("losses.kl.args.beta=0.1,losses.other.args.beta=0.2")[0].folder == "kl.args.beta=0.1,other.args.beta=0.2"


def test_folders_fall_back_to_numbers_when_names_collide_or_grow_long():
    assert [p.folder for p in expand("data.corruption.kind=['a/b','a*b']")] == ["point_000", "point_001"]
    assert expand(f"data.corruption.kind=['{'x' * 120}']")[0].folder == "point_000"


@pytest.mark.parametrize("spec, message", [
    ("optim.lr", "'optim.lr' is not key=[value,...]"),
    ("optim.lr=[]", "'optim.lr' has no values"),
    ("optim.lr=1,optim.lr=2", "key 'optim.lr' is given twice"),
    ("run_dir=[a,b]", "'run_dir' cannot be swept"),
])
def test_bad_grids_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand(spec)


def test_sweep_index_keeps_the_points_of_an_earlier_submit(tmp_path):
    write_index(tmp_path, "optim.lr=[1,2]", expand("optim.lr=[1,2]"), ["7_0", "7_1"], None)
    write_index(tmp_path, "optim.lr=[2,3]", expand("optim.lr=[2,3]"), ["8_0", "8_1"], "evaluate")
    index = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert [(p["folder"], p["job_id"]) for p in index["points"]] == [("lr=1", "7_0"), ("lr=2", "8_0"), ("lr=3", "8_1")]
    assert index["grid"] == "optim.lr=[2,3]" and index["then"] == "evaluate"


def test_sweep_dry_run_prints_one_array_and_validates_every_point_first(tmp_path, capsys):
    root = tmp_path / "sweep"
    args = [*TINY, "data.shards=data/lfw64", f"run_dir={root}", "slurm=local", "slurm.array_parallelism=2",
            "sweep=optim.lr=[1e-3,7e-4],losses.kl.args.beta=[0.02,0.05]", "then=evaluate", "then.samples=32"]
    submit_main([*args, "--dry-run"])
    out = capsys.readouterr().out
    assert f"# sweep: 4 point(s) as one SLURM array (at most 2 at once), run folders under {root}" in out
    assert "#   task 3: lr=7e-4,beta=0.05  (optim.lr=7e-4 losses.kl.args.beta=0.05)" in out
    assert "#SBATCH --array=0-3%2" in out and f"#SBATCH --output={root}/slurm/%A_%a_0_log.out" in out
    assert f"optim.lr=1e-3 losses.kl.args.beta=0.02 run_dir={root}/lr=1e-3,beta=0.02 resume=true" in out
    assert f"-m vaeforge.run task=evaluate samples=32 run_dir={root}/lr=1e-3,beta=0.02" in out
    assert not root.exists()
    (root / "lr=7e-4,beta=0.02" / "checkpoints" / "step_00000010").mkdir(parents=True)
    (root / "lr=7e-4,beta=0.02" / "checkpoints" / "step_00000010" / "model.safetensors").write_bytes(b"")
    (root / "lr=7e-4,beta=0.02" / "checkpoints" / "step_00000010" / "state.json").write_text('{"step": 10}')
    for bad, message in [
        ("optim.lr=[1e-3],losses.kl.args.bta=[0.02]", "sweep point optim.lr=1e-3 losses.kl.args.bta=0.02: unknown "
                                                      "key 'bta' in loss 'kl' (kl) (at top level: valid: beta,"),
        ("optim.lr=[1e-3,7e-4],losses.kl.args.beta=[0.02]", "sweep point optim.lr=7e-4 losses.kl.args.beta=0.02: "
                                                            f"run_dir {root}/lr=7e-4,beta=0.02 already has checkpoints"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            submit_main([*[a for a in args if not a.startswith("sweep=")], f"sweep={bad}", "--dry-run"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        submit_main([*args[:-1], "then.sample=3", "--dry-run"])
    assert "unknown key 'sample' in task 'evaluate'" in capsys.readouterr().err
    # the recipe itself may be swept: no point is resolved without its overrides
    submit_main(["slurm=local", "data.shards=data/lfw64", f"run_dir={root}", "sweep=recipe=[lfw_unet,lfw_mlp]",
                 "--dry-run"])
    assert "#   task 1: recipe=lfw_mlp  (recipe=lfw_mlp)" in capsys.readouterr().out


def fake_run(folder: Path, config: dict, step: int | None = None) -> Path:
    """A run folder as training leaves one: its config, run.json and (``step``) a checkpoint."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "run.json").write_text("{}")
    if step is not None:
        checkpoint = folder / "checkpoints" / f"step_{step:08d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_bytes(b"")
        (checkpoint / "state.json").write_text(json.dumps({"step": step}))
    return folder


def summary(run: Path, **numbers: float) -> None:
    (run / "tasks" / "evaluate").mkdir(parents=True)
    record = {"task": "evaluate", "seed": 0, "seconds": 3.2, "files": 2, "options": {"samples": 32},
              "samples": 32, "fid": None, "samplers": {"prior": {"fd_alexnet": 9.0}}, **numbers}
    (run / "tasks" / "evaluate" / "summary.json").write_text(json.dumps(record))


@pytest.fixture()
def sweep_folder(tmp_path: Path) -> Path:
    """A sweep of optim.lr over four points: two evaluated, one with only its TensorBoard log, one with nothing,
    and a fifth point not started yet."""
    root = tmp_path / "sweep"
    points = expand("optim.lr=[0.001,0.002,0.004,0.008,0.016]")
    write_index(root, "optim.lr=[...]", points, [f"5_{i}" for i in range(5)], "evaluate")
    runs = [fake_run(root / p.folder, {"run_dir": str(root / p.folder), "optim": {"lr": p.overrides["optim.lr"]},
                                       "trainer": {"max_steps": 20}}, step=20) for p in points[:4]]
    summary(runs[0], psnr=9.75, lpips=0.31)
    summary(runs[1], psnr=19.25, lpips=0.29)
    with SummaryWriter(str(runs[2] / "tb")) as tb:
        for step, value in ((10, 16.0), (20, 17.5)):
            tb.add_scalar("val/psnr", value, step)
    return root


def test_leaderboard_lists_every_run_with_its_source_and_sorts(sweep_folder, capsys):
    leaderboard_main([f"dir={sweep_folder}", "sort=-psnr"])
    printed = capsys.readouterr().out
    table = (sweep_folder / "leaderboard.md").read_text()
    assert printed.startswith(table.split("\n\n", 1)[1])
    assert table.splitlines()[2:] == [
        "| run | optim.lr | steps | source | psnr | lpips | val/psnr |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| lr=0.002 | 0.002 | 20 | evaluate | 19.25 | 0.29 |  |",
        "| lr=0.001 | 0.001 | 20 | evaluate | 9.75 | 0.31 |  |",
        "| lr=0.004 | 0.004 | 20 | val (step 20) |  |  | 17.5 |",
        "| lr=0.008 | 0.008 | 20 |  |  |  |  |",
        "| lr=0.016 | 0.016 |  | not started |  |  |  |",
    ]
    page = (sweep_folder / "leaderboard.html").read_text()
    assert "http://" not in page and "https://" not in page and "<th data-order=desc>psnr</th>" in page
    assert '<td class=num data-v="19.25">19.25</td>' in page and page.count("<tr>") == 6


def test_leaderboard_without_a_sweep_compares_the_configs_that_differ(tmp_path, capsys):
    for name, lr, widths in (("a", 0.001, [8, 16]), ("b", 0.002, [8, 16]), ("nested/c", 0.001, [16, 32])):
        fake_run(tmp_path / "runs" / name, {"run_dir": name, "optim": {"lr": lr, "betas": [0.9, 0.99]},
                                            "model": {"backbone": {"args": {"widths": widths}}}})
    table, out = write_leaderboard(LeaderboardOptions(dir=str(tmp_path / "runs"), sort="-optim.lr",
                                                      out=str(tmp_path / "board")))
    assert table.splitlines()[0] == "| run | optim.lr | model.backbone.args.widths | steps | source |"
    assert table.splitlines()[2:] == ["| b | 0.002 | [8,16] |  |  |", "| a | 0.001 | [8,16] |  |  |",
                                      "| nested/c | 0.001 | [16,32] |  |  |"]
    assert (out / "leaderboard.html").is_file() and not (tmp_path / "runs" / "leaderboard.md").exists()


def test_leaderboard_errors_are_one_line(tmp_path, sweep_folder, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for args, message in [
        ([f"dir={tmp_path / 'empty'}"], f"no run folders below {tmp_path / 'empty'} (a run folder holds config.yaml"),
        ([f"dir={tmp_path / 'nowhere'}"], f"{tmp_path / 'nowhere'} is not a folder"),
        ([f"dir={sweep_folder}", "sort=psnrr"], "unknown leaderboard column 'psnrr' (valid: "),
        ([f"dir={sweep_folder}", "order=psnr"], "unknown key 'order' in leaderboard"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            leaderboard_main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.integration  # a real browser
def test_leaderboard_page_sorts_by_the_clicked_header_in_chromium(sweep_folder, chromium, tmp_path):
    write_leaderboard(LeaderboardOptions(dir=str(sweep_folder)))
    order = "document.body.dataset.%s=[...document.querySelectorAll('tbody tr')].map(r=>r.cells[0].textContent);"
    clicks = ("<script>const h=[...document.querySelectorAll('th')].find(t=>t.textContent==='psnr');"
              f"h.click();{order % 'up'}h.click();{order % 'down'}</script></body>")
    page = tmp_path / "clicked.html"
    page.write_text((sweep_folder / "leaderboard.html").read_text().replace("</body>", clicks))
    dom = dump_dom(chromium, page, tmp_path / "profile")
    # numbers as numbers (9.75 before 19.25), blanks last both ways
    assert 'data-up="lr=0.001,lr=0.002,lr=0.004,lr=0.008,lr=0.016"' in dom, dom[:2000]
    assert 'data-down="lr=0.002,lr=0.001,lr=0.004,lr=0.008,lr=0.016"' in dom
    assert '<th data-order="desc">psnr</th>' in dom
