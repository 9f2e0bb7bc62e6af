#!/usr/bin/env bash
# The main job, from nothing: set up, prepare LFW, train lfw_unet, run the tasks, say where to look.
#   LFW=<url | lfw-deepfunneled.tgz | extracted folder>   default: the official download (needs internet)
#   LFW_LABELS=<folder with lfw_attributes.txt, lfw_emotions.csv, lfw_gender_*.txt>   default: next to a local LFW
#   TRAIN_TIME=<seconds>   train for this many seconds, the lr's cosine decay running over them, so the schedule ends
#                          with the time on any machine (trainer.time_budget; default: the recipe's max_steps).
#                          Rerunning continues the run (resume=true): after a kill it trains the rest of the budget;
#                          once the budget is used up it trains nothing more and only reruns the tasks; a larger
#                          TRAIN_TIME trains on, the decay stretched over the new total (the lr rises again to where
#                          the longer schedule stands)
#   LPIPS_WEIGHTS=<folder with lpips_alexnet.safetensors>   the recipes' perceptual loss (default: ../shared/weights
#                  when present, else $VAEFORGE_LPIPS_WEIGHTS or ~/.cache/vaeforge; see docs/troubleshooting.md)
#   RECIPE=lfw_unet  DATA=data/lfw64  RUN=runs/<recipe>
set -euo pipefail
cd "$(dirname "$0")/.."
LFW=${LFW:-http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz}
RECIPE=${RECIPE:-lfw_unet}
DATA=${DATA:-data/lfw64}
RUN=${RUN:-runs/$RECIPE}
if [ -z "${LPIPS_WEIGHTS:-}" ] && [ -f ../shared/weights/lpips_alexnet.safetensors ]; then
  LPIPS_WEIGHTS=$(cd ../shared/weights && pwd)
fi
if [ -n "${LPIPS_WEIGHTS:-}" ]; then export VAEFORGE_LPIPS_WEIGHTS=$LPIPS_WEIGHTS; fi
if [ -z "${LFW_LABELS:-}" ] && [ -e "$LFW" ] && ls "$(dirname "$LFW")"/lfw_*.{txt,csv} >/dev/null 2>&1; then
  LFW_LABELS=$(dirname "$LFW")
fi

bash scripts/setup.sh
PY=.venv/bin/python
$PY -m vaeforge.prepare dataset=lfw source="$LFW" out="$DATA" ${LFW_LABELS:+labels="$LFW_LABELS"}
$PY -m vaeforge.train recipe="$RECIPE" data.shards="$DATA" run_dir="$RUN" resume=true \
  ${TRAIN_TIME:+trainer.time_budget=$TRAIN_TIME trainer.max_steps=1000000}
$PY -m vaeforge.run task=reconstruct run_dir="$RUN" input=val limit=32
$PY -m vaeforge.run task=sample run_dir="$RUN" n=64

cat <<MSG

Done. Look at:
  run folder:      $RUN   (config.yaml, run.json, checkpoints/)
  reconstructions: $RUN/tasks/reconstruct/grid.png
  samples:         $RUN/tasks/sample/grid.png
  TensorBoard:     .venv/bin/tensorboard --logdir $RUN/tb --host 127.0.0.1
  one HTML page:   .venv/bin/vaeforge report run_dir=$RUN
  from Python:     model = vaeforge.load("$RUN")
MSG
if [ -n "${TRAIN_TIME:-}" ]; then
  echo "  TRAIN_TIME=$TRAIN_TIME s is the run's training budget: a rerun trains only what is left of it (nothing once"
  echo "  used up); a larger TRAIN_TIME trains on."
fi
