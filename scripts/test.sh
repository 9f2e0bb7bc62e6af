#!/usr/bin/env bash
# Set up the environment and run the whole test suite on CPU (real LFW from ../shared, real processes); arguments go
# to pytest: -m "not integration" runs the unit tier alone, which needs no ../shared (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TQDM_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q --durations=15 "$@"
