#!/usr/bin/env python3
"""Derives S8BQAT's Lloyd-Max codebooks (on each tensor's int8 grid) from an fp32 model:

  local/derive_centroids.py --checkpoint exp/fp32/pretrained.pt --weight-bits 2 --out exp/s8bqat-2bit/centroids.pt

The file maps each quantized parameter to ``{"levels": int8 (L,), "scale": float32 () or (C,), "bits"}``;
``local/train.py --quantizer s8bqat --centroids FILE`` trains towards it.
"""

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from nnaqat.checkpoint import load_model, save_checkpoint
from nnaqat.quant import derive_centroids
from nnaqat.quant.config import add_post_training_arguments, post_training_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="fp32 model (e.g. pretrained.pt)")
    add_post_training_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = load_model([args.checkpoint])
    codebooks = derive_centroids(model, replace(post_training_config(args), quantizer="s8bqat"))
    save_checkpoint(args.out, codebooks)
    for name, entry in codebooks.items():
        logging.info("%-45s %d bits: %d int8 levels %s", name, int(entry["bits"]), entry["levels"].numel(),
                     entry["levels"].tolist() if entry["levels"].numel() <= 8 else "")
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
