#!/usr/bin/env python3
"""Writes a quantized model as the packed side-car (K-bit indices, int8 codebooks, scales) and
prints its size against fp32 and per-channel int8 (also written beside it, ``model.size.json``):

  local/export_packed.py --exp-dir exp/s8bqat-2bit --epoch 4 --avg 2 --out exp/s8bqat-2bit/model.pack
  local/export_packed.py --checkpoint exp/fp32/pretrained.pt --quantizer ptq --weight-bits 8 --out int8.pack
"""

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from nnaqat.checkpoint import add_model_arguments, load_model_from_args
from nnaqat.export import load_packed, save_packed
from nnaqat.quant import quantize_
from nnaqat.quant.config import add_post_training_arguments, is_training_only, post_training_config
from nnaqat.sizes import write_size_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_post_training_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, _ = load_model_from_args(args)
    if args.quantizer != "none":
        quantize_(model, post_training_config(args)).finalize(model)
    report = save_packed(model, args.out)
    reloaded = load_packed(args.out).state_dict()
    mismatched = [k for k, v in reloaded.items() if k in model.state_dict() and not is_training_only(k)
                  and not torch.equal(v, model.state_dict()[k])]
    if mismatched:
        raise SystemExit(f"{args.out} does not reload to the same weights: {mismatched}")
    print(report.table())
    write_size_summary(args.out, report.weight_size, asdict(report))


if __name__ == "__main__":
    main()
