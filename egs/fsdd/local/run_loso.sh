#!/usr/bin/env bash
# Leave-one-speaker-out: for each FSDD speaker, train without it and test on its connected
# digits; then, for the fp32 model and for each kind of model stage 7 derived from it (quantized,
# NNA), print the per-speaker table and the mean. Extra options go to run.sh, e.g.
#   local/run_loso.sh --tag noaug --speed-perturb "" --spec-augment false --gain-db 0
#   local/run_loso.sh --tag edge0 --stop-stage 7 --quant-runs "" --nna-runs int8
#   local/run_loso.sh --tag edge0 --table-only      # the tables of runs made before
#   local/run_loso.sh --tag edge0 --speakers "lucas theo" --stage 7 --stop-stage 7 --quant-runs "" \
#       --nna-runs harsh+s8bqat:4                  # a stage-7 run for some speakers only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tag=aug
train=true
speakers=(george jackson lucas theo yweweler)  # every FSDD speaker
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --table-only) train=false; shift ;;
    --speakers) read -r -a speakers <<< "$2"; shift 2 ;;
    *) break ;;
  esac
done
if $train; then
  for speaker in "${speakers[@]}"; do
    ./run.sh --holdout-speaker "$speaker" --exp-tag "loso-$tag-$speaker" --stop-stage 6 "$@"
  done
fi
. ../../.venv/bin/activate
kinds=()  # "" (the fp32 model) and the suffixes of stage 7's folders, e.g. -aat-int8, in order found
declare -A seen=()  # keyed "_$kind": an associative array has no empty key
for speaker in "${speakers[@]}"; do
  for folder in "exp/loso-$tag-$speaker" "exp/loso-$tag-$speaker"-*; do
    [ -d "$folder" ] || continue
    kind=${folder#"exp/loso-$tag-$speaker"}
    [ -n "${seen[_$kind]:-}" ] || { seen[_$kind]=1; kinds+=("$kind"); }
  done
done
for kind in "${kinds[@]}"; do
  folders=()
  for speaker in "${speakers[@]}"; do
    [ -d "exp/loso-$tag-$speaker$kind" ] && folders+=("exp/loso-$tag-$speaker$kind")
  done
  echo
  echo "loso-$tag-SPEAKER$kind: ${#folders[@]} of ${#speakers[@]} speakers"
  python ../../local/results_table.py --mean --exp-dir "${folders[@]}"
done
