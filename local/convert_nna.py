#!/usr/bin/env python3
"""Makes the post-training integer model of a trained checkpoint: converts it to an NNA spec
(``nnaqat.nna.convert.nna_``), calibrates its activation ranges on the first batches of a
manifest, freezes them and saves the result as an NNA checkpoint, which every script loads as it
loads a model trained with ``--nna-spec`` (AAT):

  local/convert_nna.py --checkpoint exp/fp32/pretrained.pt --nna-spec conf/nna/int8.yaml \\
      --calibration-cuts data/fbank/fsdd_cuts_train.jsonl.gz --bpe-model data/lang_bpe_32/bpe.model \\
      --out exp/fp32-nna-int8/pretrained.pt
  local/decode.py --checkpoint exp/fp32-nna-int8/pretrained.pt --engine integer ...
  local/export_nna.py --checkpoint exp/fp32-nna-int8/pretrained.pt --out exp/fp32-nna-int8/model.nna.npz

``--quantizer ptq --weight-bits K`` (or another post-training quantizer) rounds the weights first.
"""

import argparse
import logging
from pathlib import Path

import torch

from nnaqat.checkpoint import add_model_arguments, load_model, load_model_from_args, model_state, save_checkpoint
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.nna.recognize import add_post_training_conversion_arguments, convert_after_training


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--bpe-model", type=Path, required=True, help="the calibration batches' targets")
    parser.add_argument("--max-duration", type=float, default=300.0, help="calibration batch size (seconds)")
    parser.add_argument("--out", type=Path, required=True, help="NNA checkpoint to write (.pt)")
    add_post_training_conversion_arguments(parser)
    return parser.parse_args()


def main() -> None:
    args = get_args()
    if not args.nna_spec:
        raise SystemExit("--nna-spec is required (and --calibration-cuts)")
    model, _ = load_model_from_args(args)
    convert_after_training(model, args, Tokenizer(args.bpe_model), args.max_duration)
    state = model_state(model)
    save_checkpoint(args.out, state)
    reloaded = load_model([args.out]).state_dict()
    if reloaded.keys() != state["model"].keys():
        raise SystemExit(f"{args.out} loads back with other tensors: {sorted(reloaded.keys() ^ state['model'].keys())[:5]}")
    differing = [k for k, v in state["model"].items() if not torch.equal(v, reloaded[k])]
    if differing:
        raise SystemExit(f"{args.out} does not load back to the converted model: {differing[:5]}")
    logging.info("wrote %s: the post-training integer model under %s (loads back exactly)", args.out, args.nna_spec)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
