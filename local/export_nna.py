#!/usr/bin/env python3
"""Writes the side-car an NNA toolchain takes: the integer model the reference engine runs, with
sub-8-bit weights as K-bit indices into int8 codebooks, requantization multipliers and shifts,
zero points, LUTs and the spec (versioned ``.npz``, no pickles), and prints its size report
(also written beside it as ``OUT.size.json``, e.g. ``model.nna.size.json``).

  # a model trained with --nna-spec (AAT, with or without a quantizer):
  local/export_nna.py --exp-dir exp/aat --epoch 2 --avg 1 --out exp/aat/model.nna.npz
  # the post-training integer model of an fp32 checkpoint, made by local/convert_nna.py:
  local/export_nna.py --checkpoint exp/fp32-nna-int8/pretrained.pt --out exp/fp32-nna-int8/model.nna.npz

``nnaqat.nna.engine.IntegerTransducer.load(OUT)`` rebuilds the integer model from the file. The
float front end (band limit, mean and variance normalisation) is not in it: it runs on the CPU
before the first quantization, from the checkpoint.
"""

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

from nnaqat.checkpoint import add_model_arguments, load_model_from_args
from nnaqat.nna.export import export_integer_model
from nnaqat.nna.integer_model import load_integer_model, save_integer_model, to_arrays
from nnaqat.sizes import write_size_summary


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="side-car to write (.npz)")
    return parser.parse_args()


def main() -> None:
    args = get_args()
    model, _ = load_model_from_args(args)
    if getattr(model, "nna_spec", None) is None:
        raise SystemExit("not an NNA model: give a checkpoint trained with --nna-spec or made by local/convert_nna.py")
    integer = export_integer_model(model.eval())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = save_integer_model(integer, args.out)
    expected, loaded = to_arrays(integer), to_arrays(load_integer_model(args.out))
    if expected.keys() != loaded.keys() or any((expected[k] != loaded[k]).any() for k in expected):
        raise SystemExit(f"{args.out} does not read back to the exported integers")
    print(f"{args.out}: {args.out.stat().st_size:,} bytes on disk (read back exactly)")
    print(report.table())
    write_size_summary(args.out, report.weight_size, {**asdict(report), "total": report.total})


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
