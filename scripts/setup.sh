#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: torch, then vaeforge with its test and DeepSpeed extras.
# pip itself stays quiet; the script says what it installs, why, and how long a fresh install usually takes
# (an up-to-date .venv takes seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
say() { echo "setup: $*"; }
if [ ! -x .venv/bin/python ]; then
  # A full disk otherwise surfaces as a torch import error far from its cause.
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "${free_kb:-0}" -lt $((7 * 1024 * 1024)) ]; then
    say "error: a fresh .venv needs ~7 GB free here ($(pwd)); df shows $((free_kb / 1024)) MB free" >&2
    exit 1
  fi
  say "creating .venv: a fresh install is ~6 GB and usually takes 1.5-2 min on a 2-core machine with a warm pip" \
      "cache (longer when pip has to download)"
  "$PYTHON" -m venv .venv
fi
# pip's exit status is kept through the filter: a failed install (no network, full disk) stops setup here.
pip_quiet() {
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
      | { grep -v "^WARNING: Location" || true; }; then
    say "error: pip install $* failed; its message is above" >&2
    exit 1
  fi
}
# torch and torchvision first, as a matching pair (PyPI's torchvision does not import beside other torch builds).
say "1/2 torch 2.14.1 + torchvision 0.29.1: ~2.6 GB of wheels (~5.3 GB unpacked), most of it the CUDA libraries;" \
    "this build runs on CPU too, so one environment serves laptops and GPU nodes"
pip_quiet "torch==2.14.1" "torchvision==0.29.1"
say "2/2 vaeforge (editable) with accelerate, webdataset, timm, tensorboard, ...; the test extra (pytest, the" \
    "reference lpips the LPIPS test compares against) and the DeepSpeed extra (deepspeed, transformers: ZeRO-2/3 runs)"
pip_quiet -e ".[test,deepspeed]"
.venv/bin/python -c "import vaeforge, vaeforge_plugins, torch; print('setup: ready: vaeforge', vaeforge.__version__, '| torch', torch.__version__)"
