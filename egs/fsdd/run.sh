#!/usr/bin/env bash
# FSDD connected digits, end to end: data, fbank, tokens, training, decoding, results.
# Options are those of the top-level run.sh (e.g. --stage 5 --num-epochs 4 --holdout-speaker theo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec ../../run.sh --corpus fsdd "$@"
