#!/usr/bin/env bash
# Generic recipe driver (ESPnet asr.sh style). Run it from a corpus folder, egs/<corpus>/, which
# holds the corpus's own data preparation (local/prepare_data.py) and conf/; outputs go to
# ./data and ./exp there. Every stage can be rerun: stages 0-5 skip work whose outputs exist,
# decoding and export (6-9) redo theirs.
#
#   ../../run.sh --corpus fsdd --stage 0 --stop-stage 9
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ---- options (each --foo-bar VALUE sets foo_bar) ----
stage=0
stop_stage=9
corpus=fsdd
dl_dir=download              # where the corpus is downloaded/extracted
local_tarball=""             # use this corpus archive instead of downloading
manifest_dir=""              # prepare these lhotse manifests ({prefix}_{recordings,supervisions}_{part}.jsonl.gz)
                             # instead of the corpus's own preparation (stages 0-2)
manifest_prefix=""           # prefix of those manifests (default: $corpus)
parts=""                     # first part is the training set, second the dev set; default "train dev test",
                             # for FSDD also "isolated" (its single test words as recorded, no added silence)
num_train=6000               # FSDD connected-digit utterances per split
num_dev=500
num_test=500
train_repeat_prob=0.3        # FSDD training utterances: chance that a word repeats the previous digit
train_min_edge=0.0           # FSDD training utterances: shortest edge silence (s), 0: speech may start at once
holdout_speaker=""           # train without this speaker, test on all its recordings
speed_perturb="0.9 1.1"      # extra training copies at these speeds ("" for none)
vocab_size=32
model_config=conf/model.yaml
encoder=""                   # override the model config's variants
predictor=""
joiner=""
num_epochs=8
max_duration=150
lr=0.003
warm_step=50                 # batches on the simple loss alone; pruned-loss scale 0.1 up to 2x, then 1
spec_augment=true
gain_db=10                   # random gain of +-gain_db dB per training utterance (0: off)
eq_db=0                      # random smooth equaliser curve of up to +-eq_db dB per utterance (0: off)
ctc_loss_scale=0             # weight of an auxiliary CTC loss on the encoder (0: none; 0.2 hurts unseen speakers, egs/fsdd/RESULTS.md)
train_args=""                # extra local/train.py flags, e.g. "--mel-warp 0.1 --time-mask-frames 5"
seed=42
world_size=1
decode_epoch=""              # default: num_epochs
avg=2
decode_methods="greedy_search modified_beam_search"
beam_size=4
blank_penalty=1.0            # subtracted from the blank logit when decoding (chosen on dev: see egs/fsdd/RESULTS.md)
exp_tag=""                   # experiment folder name under exp/ (default: derived from options)
quant_runs="ptq:8 s8bqat:4"  # stage 7: quantized models of the fp32 one, QUANTIZER:BITS or QUANTIZER:bits.yaml
codebook=channel             # s8bqat codebook scale: per output "channel", or per "tensor" (the paper)
qat_epochs=1                 # quantization-aware fine-tuning epochs (quantizers that train)
qat_lr=0.0002                # low: at 0.001 one epoch of 3-bit QAT wrecked the model (dev 44 %)
qat_args="--ste-forward true"  # extra local/train.py flags for it (snapped forward pass: see RESULTS.md)
nna_runs="int8"               # stage 7: NNA models of the fp32 one, SPEC or SPEC+QUANTIZER:BITS (SPEC: conf/nna/SPEC.yaml
                             # or a .yaml path): the post-training integer model (SPEC alone) and AAT
aat_epochs=1                 # AAT fine-tuning epochs through the emulated NNA
aat_lr=0.00005               # the lowest measured AAT learning rate kept unseen speakers best (README)
aat_args="--distill-scale 1"  # extra local/train.py flags of the AAT runs: the KL to the fp32 model keeps
                             # AAT at fp32 on unseen speakers (README)
nj=1

option_names="stage stop_stage corpus dl_dir local_tarball manifest_dir manifest_prefix parts num_train num_dev
  num_test train_repeat_prob train_min_edge holdout_speaker speed_perturb vocab_size model_config encoder predictor joiner num_epochs max_duration lr warm_step
  spec_augment gain_db eq_db ctc_loss_scale train_args seed world_size decode_epoch avg decode_methods beam_size blank_penalty exp_tag quant_runs codebook qat_epochs qat_lr qat_args nna_runs aat_epochs aat_lr aat_args nj"
help_message="Usage: run.sh [options]   (run from egs/<corpus>/)"
. "$root/local/parse_options.sh"

"$root/local/setup_env.sh"
# shellcheck disable=SC1091
. "$root/.venv/bin/activate"
export PYTHONUNBUFFERED=1

prefix=${manifest_prefix:-$corpus}
data=data${holdout_speaker:+/holdout-$holdout_speaker}
lang=data/lang_bpe_${vocab_size}
exp=exp/${exp_tag:-fp32${holdout_speaker:+-holdout-$holdout_speaker}}
if [ -z "$parts" ]; then
  parts="train dev test"
  if [ -z "$manifest_dir" ] && [ "$corpus" = fsdd ]; then parts+=" isolated"; fi
fi
read -r -a part_list <<< "$parts"
train_part=${part_list[0]}
dev_part=${part_list[1]}
decode_epoch=${decode_epoch:-$num_epochs}
qat_avg=$((avg < qat_epochs ? avg : qat_epochs))  # QAT checkpoints averaged for decoding
aat_avg=$((avg < aat_epochs ? avg : aat_epochs))
mkdir -p "$exp"
log_file=$exp/log/run-$(date +%Y%m%d-%H%M%S).log
mkdir -p "$(dirname "$log_file")"
log() { echo "$(date '+%F %T') [stage ${current_stage:-?}] $*" | tee -a "$log_file" >&2; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

if [ -n "$manifest_dir" ]; then
  if run_stage 2; then
    current_stage=2
    log "cuts from external manifests in $manifest_dir"
    python "$root/local/manifests_to_cuts.py" --manifest-dir "$manifest_dir" --prefix "$prefix" \
      --parts "${part_list[@]}" --output-dir "$data/manifests"
  fi
else
  if [ -z "$local_tarball" ] && [ "$corpus" = fsdd ] && [ -f "$root/../shared/corpora/fsdd/fsdd.tar.gz" ]; then
    local_tarball=$root/../shared/corpora/fsdd/fsdd.tar.gz
  fi
  prep=(python local/prepare_data.py --dl-dir "$dl_dir")
  if run_stage 0; then
    current_stage=0
    log "get the corpus ${local_tarball:+(from $local_tarball)}"
    "${prep[@]}" download ${local_tarball:+--local-tarball "$local_tarball"}
  fi
  if run_stage 1 && [ ! -f data/manifests/.done ]; then
    current_stage=1
    log "lhotse manifests"
    "${prep[@]}" manifests --manifest-dir data/manifests
    touch data/manifests/.done
  fi
  if run_stage 2 && [ ! -f "$data/manifests/.cuts.done" ]; then
    current_stage=2
    log "utterances ${holdout_speaker:+(holding out $holdout_speaker)}"
    "${prep[@]}" cuts --manifest-dir data/manifests --output-dir "$data/manifests" --num-train "$num_train" \
      --num-dev "$num_dev" --num-test "$num_test" --train-repeat-prob "$train_repeat_prob" \
      --train-min-edge "$train_min_edge" \
      ${holdout_speaker:+--holdout-speaker "$holdout_speaker"}
    touch "$data/manifests/.cuts.done"
  fi
fi

if run_stage 3; then
  current_stage=3
  log "fbank"
  python "$root/local/compute_fbank.py" --src-dir "$data/manifests" --output-dir "$data/fbank" --prefix "$prefix" \
    --parts "${part_list[@]}" --train-part "$train_part" --num-jobs "$nj" \
    ${speed_perturb:+--speed-perturb $speed_perturb}
fi

if run_stage 4 && [ ! -f "$lang/tokens.txt" ]; then
  current_stage=4
  log "sentencepiece tokens ($lang)"
  python "$root/local/train_bpe.py" --cuts "$data/manifests/${prefix}_cuts_${train_part}_raw.jsonl.gz" \
    --lang-dir "$lang" --vocab-size "$vocab_size"
fi

train() {  # train EXP_DIR NUM_EPOCHS LR WARM_STEP TRAIN_FLAGS...: resumes after the last finished epoch
  local exp_dir=$1 epochs=$2 lr=$3 warm=$4
  shift 4
  if [ -f "$exp_dir/epoch-$epochs.pt" ]; then
    log "training already done ($exp_dir/epoch-$epochs.pt)"
    return
  fi
  local start_epoch=1
  while [ -f "$exp_dir/epoch-$start_epoch.pt" ]; do start_epoch=$((start_epoch + 1)); done
  log "training $exp_dir from epoch $start_epoch ($*)"
  python "$root/local/train.py" --train-cuts "$data/fbank/${prefix}_cuts_${train_part}${speed_perturb:+_sp}.jsonl.gz" \
    --dev-cuts "$data/fbank/${prefix}_cuts_${dev_part}.jsonl.gz" --bpe-model "$lang/bpe.model" \
    --exp-dir "$exp_dir" --num-epochs "$epochs" --start-epoch "$start_epoch" --max-duration "$max_duration" \
    --lr "$lr" --warm-step "$warm" --spec-augment "$spec_augment" --gain-db "$gain_db" --eq-db "$eq_db" \
    --ctc-loss-scale "$ctc_loss_scale" --seed "$seed" --world-size "$world_size" $train_args "$@" 2>&1 | tee -a "$log_file"
}

if run_stage 5; then
  current_stage=5
  train "$exp" "$num_epochs" "$lr" "$warm_step" --model-config "$model_config" ${encoder:+--encoder $encoder} \
    ${predictor:+--predictor $predictor} ${joiner:+--joiner $joiner}
fi

decode_sets=()  # NAME=manifest of every set but the training one
for part in "${part_list[@]:1}"; do decode_sets+=("$part=$data/fbank/${prefix}_cuts_${part}.jsonl.gz"); done

decode() {  # decode EXP_DIR MODEL_FLAGS...: every method on every set but the training one
  local exp_dir=$1 method
  shift
  for method in $decode_methods; do
    log "decoding $exp_dir with $method ($*)"
    python "$root/local/decode.py" --exp-dir "$exp_dir" "$@" --bpe-model "$lang/bpe.model" \
      --method "$method" --beam-size "$beam_size" --blank-penalty "$blank_penalty" --cuts "${decode_sets[@]}" 2>&1 \
      | tee -a "$log_file"
  done
}

if run_stage 6; then
  current_stage=6
  decode "$exp" --epoch "$decode_epoch" --avg "$avg"
fi

quant_suffix() {  # QUANTIZER:BITS or QUANTIZER:file.yaml -> -QUANTIZER-BITSbit or -QUANTIZER-STEM
  local quantizer=${1%%:*} bits=${1#*:}
  if [[ $bits == *.yaml ]]; then echo "-$quantizer-$(basename "$bits" .yaml)"; else echo "-$quantizer-${bits}bit"; fi
}

quant_exp() { echo "$exp$(quant_suffix "$1")"; }  # QUANTIZER:BITS -> folder of that quantized model

nna_spec_file() {  # SPEC -> conf/nna/SPEC.yaml, or SPEC itself when it is a .yaml path
  if [[ $1 == *.yaml ]]; then echo "$1"; else echo "conf/nna/$1.yaml"; fi
}

nna_spec_name() { basename "$(nna_spec_file "$1")" .yaml; }  # SPEC -> its file's stem

nna_exp() {  # SPEC or SPEC+QUANTIZER:BITS -> folder of its AAT model
  local name
  name=$(nna_spec_name "${1%%+*}")
  if [[ $1 == *+* ]]; then echo "$exp-aat-$name$(quant_suffix "${1#*+}")"; else echo "$exp-aat-$name"; fi
}

post_training_nna_exp() { echo "$exp-nna-$(nna_spec_name "$1")"; }  # SPEC -> folder

set_bit_flags() {  # QUANTIZER:BITS -> bit_flags: the bit-width and codebook flags of that run
  local bits=${1#*:}
  if [[ $bits == *.yaml ]]; then bit_flags=(--bit-config "$bits"); else bit_flags=(--weight-bits "$bits"); fi
  bit_flags+=(--codebook "$codebook")
}

set_quant_train_flags() {  # QEXP QUANTIZER:BITS -> quant_train_flags for local/train.py (s8bqat: centroids into QEXP)
  local qexp=$1 quantizer=${2%%:*}
  set_bit_flags "$2"
  quant_train_flags=(--quantizer "$quantizer" "${bit_flags[@]}")
  if [ "$quantizer" = s8bqat ]; then
    [ -f "$qexp/centroids.pt" ] || python "$root/local/derive_centroids.py" --checkpoint "$pretrained" \
      "${bit_flags[@]}" --out "$qexp/centroids.pt" 2>&1 | tee -a "$log_file"
    quant_train_flags+=(--centroids "$qexp/centroids.pt")
  fi
  # shellcheck disable=SC2206
  quant_train_flags+=($qat_args)
}

decode_nna() {  # decode_nna EXP_DIR MODEL_FLAGS...: greedy search by the integer reference engine and by the
  local exp_dir=$1  # emulated model, which must give the same hypothesis on every utterance
  shift
  log "decoding $exp_dir with the integer reference engine and the emulated model ($*)"
  python "$root/local/decode.py" --exp-dir "$exp_dir" "$@" --bpe-model "$lang/bpe.model" --method greedy_search \
    --blank-penalty "$blank_penalty" --cuts "${decode_sets[@]}" --engine integer --check-emulated 2>&1 | tee -a "$log_file"
}

if run_stage 7 && [ -n "$quant_runs$nna_runs" ]; then
  current_stage=7
  pretrained=$exp/pretrained.pt
  if [ ! -f "$pretrained" ]; then
    log "averaging $exp (epoch $decode_epoch, avg $avg) into $pretrained"
    python "$root/local/average_checkpoints.py" --exp-dir "$exp" --epoch "$decode_epoch" --avg "$avg" --out "$pretrained"
  fi
  for run in $quant_runs; do
    quantizer=${run%%:*}
    qexp=$(quant_exp "$run")
    mkdir -p "$qexp"
    trains=$(python -c "from nnaqat import registry; print(int(registry.get('quantizer', '$quantizer').trains))")
    if [ "$trains" = 0 ]; then
      set_bit_flags "$run"
      log "$quantizer ${bit_flags[*]}: post-training quantization of $pretrained"
      decode "$qexp" --checkpoint "$pretrained" --quantizer "$quantizer" "${bit_flags[@]}"
      python "$root/local/export_packed.py" --checkpoint "$pretrained" --quantizer "$quantizer" "${bit_flags[@]}" \
        --out "$qexp/model.pack" | tee -a "$log_file"
      continue
    fi
    set_quant_train_flags "$qexp" "$run"
    train "$qexp" "$qat_epochs" "$qat_lr" 0 --init-checkpoint "$pretrained" "${quant_train_flags[@]}"
    decode "$qexp" --epoch "$qat_epochs" --avg "$qat_avg"
    python "$root/local/export_packed.py" --exp-dir "$qexp" --epoch "$qat_epochs" --avg "$qat_avg" \
      --out "$qexp/model.pack" | tee -a "$log_file"
    if [ "$quantizer" = s8bqat ]; then  # the first LSTM layer's weights against their codebook, before and after
      python "$root/local/plot_weights.py" --before "$pretrained" --after "$qexp/epoch-$qat_epochs.pt" \
        --out "$qexp/weights.png" | tee -a "$log_file"
    fi
  done
  calibration_cuts=$data/fbank/${prefix}_cuts_${train_part}.jsonl.gz
  for run in $nna_runs; do
    spec_file=$(nna_spec_file "${run%%+*}")
    [ -f "$spec_file" ] || { log "no NNA spec $spec_file (--nna-runs entry $run)"; exit 1; }
    if [[ $run != *+* ]]; then
      nexp=$(post_training_nna_exp "$run")
      mkdir -p "$nexp"
      log "$spec_file: post-training integer model of $pretrained"
      python "$root/local/convert_nna.py" --checkpoint "$pretrained" --nna-spec "$spec_file" \
        --calibration-cuts "$calibration_cuts" --bpe-model "$lang/bpe.model" --out "$nexp/pretrained.pt" 2>&1 | tee -a "$log_file"
      decode_nna "$nexp" --checkpoint "$nexp/pretrained.pt"
      python "$root/local/export_nna.py" --checkpoint "$nexp/pretrained.pt" --out "$nexp/model.nna.npz" 2>&1 | tee -a "$log_file"
    fi
    aexp=$(nna_exp "$run")
    mkdir -p "$aexp"
    quant_train_flags=()
    [[ $run != *+* ]] || set_quant_train_flags "$aexp" "${run#*+}"  # AAT with sub-8-bit weights
    # shellcheck disable=SC2086
    train "$aexp" "$aat_epochs" "$aat_lr" 0 --init-checkpoint "$pretrained" --nna-spec "$spec_file" \
      "${quant_train_flags[@]}" $aat_args
    decode_nna "$aexp" --epoch "$aat_epochs" --avg "$aat_avg"
    python "$root/local/export_nna.py" --exp-dir "$aexp" --epoch "$aat_epochs" --avg "$aat_avg" \
      --out "$aexp/model.nna.npz" 2>&1 | tee -a "$log_file"
  done
fi

sherpa() {  # sherpa EXP_DIR ONNX_DIR PRECISION: decode every set but the training one (audio) with sherpa-onnx
  local sets=() part
  for part in "${part_list[@]:1}"; do sets+=("$part=$data/manifests/${prefix}_cuts_${part}_raw.jsonl.gz"); done
  python "$root/local/sherpa_decode.py" --onnx-dir "$2" --precision "$3" --exp-dir "$1" --cuts "${sets[@]}" \
    --blank-penalty "$blank_penalty" 2>&1 | tee -a "$log_file"
}

if run_stage 8; then
  current_stage=8
  log "sherpa-onnx: fp32, icefall's post-training int8 and the quantization-aware int8 models"
  python "$root/local/export_onnx.py" --exp-dir "$exp" --epoch "$decode_epoch" --avg "$avg" --tokens "$lang/tokens.txt" \
    --out-dir "$exp/onnx" --check-cuts "$data/fbank/${prefix}_cuts_${dev_part}.jsonl.gz" 2>&1 | tee -a "$log_file"
  sherpa "$exp" "$exp/onnx" fp32
  sherpa "$exp" "$exp/onnx" int8
  for run in $quant_runs; do
    qexp=$(quant_exp "$run")
    [ -f "$qexp/epoch-$qat_epochs.pt" ] || continue  # post-training runs have no QAT checkpoint
    python "$root/local/export_onnx.py" --exp-dir "$qexp" --epoch "$qat_epochs" --avg "$qat_avg" --tokens "$lang/tokens.txt" \
      --out-dir "$qexp/onnx" --no-int8 2>&1 | tee -a "$log_file"
    sherpa "$qexp" "$qexp/onnx" int8-qat
  done
fi

if run_stage 9; then
  current_stage=9
  quant_exps=()
  for run in $quant_runs; do quant_exps+=("$(quant_exp "$run")"); done
  for run in $nna_runs; do
    [[ $run == *+* ]] || quant_exps+=("$(post_training_nna_exp "$run")")
    quant_exps+=("$(nna_exp "$run")")
  done
  python "$root/local/results_table.py" --exp-dir "$exp" "${quant_exps[@]}" \
    ${quant_runs:+--plot-wer-bytes "$exp/wer-vs-bytes.png"} | tee -a "$log_file"
fi
