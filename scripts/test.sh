#!/usr/bin/env bash
# Set up the environment and run the whole test suite on CPU (real LFW from ../shared, real processes); arguments go
# to pytest: -m "not integration" runs the unit tier alone, which needs no ../shared (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two workers by default: most tests wait on one single-threaded training process (docs/testing.md); each
# worker's in-process computations then get one thread, a single process gets both
WORKERS=${VAEFORGE_TEST_WORKERS:-2}
THREADS=$([ "$WORKERS" = 0 ] && echo 2 || echo 1)
export TQDM_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}
exec .venv/bin/python -m pytest -q --durations=15 -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
