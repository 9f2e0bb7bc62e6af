#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: torch, then vaeforge with its test and DeepSpeed extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_quiet() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# torch and torchvision first, as a matching pair (PyPI's torchvision does not import beside other torch builds).
pip_quiet "torch==2.14.1" "torchvision==0.29.1"
pip_quiet -e ".[test,deepspeed]"
.venv/bin/python -c "import vaeforge, vaeforge_plugins, torch; print('vaeforge', vaeforge.__version__, '| torch', torch.__version__)"
