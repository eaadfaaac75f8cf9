#!/usr/bin/env python3
"""Averages epoch checkpoints into one model file (icefall's pretrained.pt), e.g. the fp32
baseline that quantization-aware training starts from:

  local/average_checkpoints.py --exp-dir exp/fp32 --epoch 8 --avg 2 --out exp/fp32/pretrained.pt
"""

import argparse
from pathlib import Path

from nnaqat.checkpoint import epoch_checkpoints, load_model, model_state, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", type=Path, required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--avg", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = load_model(epoch_checkpoints(args.exp_dir, args.epoch, args.avg))
    if getattr(model, "quantizer", None) is not None:
        raise SystemExit(f"{args.exp_dir} holds a quantized model; average fp32 checkpoints only")
    save_checkpoint(args.out, model_state(model))
    print(f"wrote {args.out} (epochs {args.epoch - args.avg + 1}..{args.epoch})")


if __name__ == "__main__":
    main()
