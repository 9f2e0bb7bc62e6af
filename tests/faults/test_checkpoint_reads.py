"""Reading a checkpoint that is not what it should be (issue 22 item 8): weights holding NaN are refused in one
line naming the file (they loaded silently and ``reconstruct`` reported ``psnr: nan``)."""
from __future__ import annotations

import shutil

from safetensors.torch import load_file, save_file

from helpers import PY, run, train


def test_non_finite_weights_are_refused_naming_the_file(trained_run, tmp_path, tally):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("tasks", "priors", "vectors"))
    folder = max((run_dir / "checkpoints").iterdir())
    for name in ("model.safetensors", "ema.safetensors"):
        state = load_file(folder / name)
        state[sorted(state)[0]].view(-1)[0] = float("nan")
        save_file(state, str(folder / name))
    task = run([PY, "-m", "vaeforge.run", "task=reconstruct", f"run_dir={run_dir}", "input=val", "limit=2",
                f"output={tmp_path / 'out'}"], check=False)
    resume = train(f"run_dir={run_dir}", "resume=true", "trainer.max_steps=12", check=False)
    for proc, name in ((task, "ema.safetensors"), (resume, "model.safetensors")):
        lines = proc.stderr.strip().splitlines()
        tally["cases"] += 1
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
        tally["refused"] += 1
        assert f"checkpoint file {folder / name} holds non-finite weights" in lines[0], lines[0]

