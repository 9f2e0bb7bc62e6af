"""Start-up: a process that trains or runs a task imports no heavy package it does not use (each costs ~1 s in
every process; benchmarks/startup.py measures them, docs/benchmarks.md, "Start-up")."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("torchvision", "timm", "deepspeed", "transformers", "wandb", "mlflow")
CODE = """
import sys
import vaeforge.train.__main__, vaeforge.train.trainer, vaeforge.run, vaeforge.api
from vaeforge.registry import REGISTRY
REGISTRY.discover()
print(' '.join(m for m in %r if m in sys.modules))
""" % (HEAVY,)


def test_training_and_task_code_with_every_plugin_imports_no_heavy_package():
    loaded = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"imported at start-up: {loaded} (import them where they are used)"
