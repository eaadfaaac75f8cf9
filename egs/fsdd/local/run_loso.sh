#!/usr/bin/env bash
# Leave-one-speaker-out: for each FSDD speaker, train without it and test on its connected
# digits; then print the per-speaker table and the mean. Extra options go to run.sh, e.g.
#   local/run_loso.sh --tag noaug --speed-perturb "" --spec-augment false --gain-db 0
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tag=aug
if [ "${1:-}" = --tag ]; then tag=$2; shift 2; fi
speakers="george jackson lucas theo yweweler"
for speaker in $speakers; do
  ./run.sh --holdout-speaker "$speaker" --exp-tag "loso-$tag-$speaker" --stop-stage 6 "$@"
done
. ../../.venv/bin/activate
python ../../local/results_table.py --mean --exp-dir $(for s in $speakers; do echo "exp/loso-$tag-$s"; done)
