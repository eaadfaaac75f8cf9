#!/usr/bin/env python3
"""Training-step time of each quantizer, and of NNA emulation (AAT), relative to fp32, measured
side by side in one run.

The same real batches go through one Trainer per variant, round-robin (so machine load hits
every variant alike), the order rotated every step (so no variant always runs after the same
one); the median seconds per step are printed, with two ratios to the reference: the ratio of
the medians, and the median of the per-step ratios (each pairs runs of the same batch moments
apart, so it cancels the machine's drift and the batches' sizes). Variants:
a quantizer name (``none`` is fp32), ``aat`` (``--nna-spec``, no quantizer) or ``aat+QUANTIZER``,
each optionally ``+distill`` (``--distill-scale 1``: the teacher's forward pass too, as the
recipe's AAT runs) and ``+levels`` (s8bqat with ``--learn-levels``).
Run from egs/fsdd after stage 6:

  python ../../benchmarks/qat_step_time.py --checkpoint exp/fp32/pretrained.pt --steps 30
  python ../../benchmarks/qat_step_time.py --checkpoint exp/fp32/pretrained.pt --steps 10 \
      --variants none aat aat+distill aat+s8bqat --nna-spec conf/nna/int8.yaml
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nnaqat.quant import QuantConfig
from nnaqat.trainer import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="fp32 model to start from")
    parser.add_argument("--train-cuts", default="data/fbank/fsdd_cuts_train.jsonl.gz")
    parser.add_argument("--dev-cuts", default="data/fbank/fsdd_cuts_dev.jsonl.gz")
    parser.add_argument("--bpe-model", default="data/lang_bpe_32/bpe.model")
    parser.add_argument("--variants", nargs="+", default=["none", "uniform", "lsq", "s8bqat"],
                        help="quantizer names, aat, aat+QUANTIZER, each with optional +distill and +levels; "
                             "the first is the reference")
    parser.add_argument("--nna-spec", default="conf/nna/int8.yaml", help="the NNA the aat variants emulate")
    parser.add_argument("--weight-bits", type=int, default=2)
    parser.add_argument("--max-duration", type=float, default=150.0)
    parser.add_argument("--ste-forward", type=lambda v: v.lower() == "true", default=True,
                        help="s8bqat forward through the snapped weights (true, as the recipe trains)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=3)
    args = parser.parse_args()

    for name in args.variants:
        parts = name.split("+")
        if "levels" in parts and "s8bqat" not in parts:
            parser.error(f"{name}: +levels (learned codebook levels) is an s8bqat option")
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            parts = name.split("+")
            distill, levels = "distill" in parts, "levels" in parts
            parts = [part for part in parts if part not in ("distill", "levels")]
            aat = parts[0] == "aat"
            quantizer = parts[1] if aat and len(parts) > 1 else ("none" if aat else parts[0])
            config = TrainConfig(
                train_cuts=args.train_cuts, dev_cuts=args.dev_cuts, bpe_model=args.bpe_model,
                exp_dir=str(Path(tmp) / name), init_checkpoint=str(args.checkpoint), max_duration=args.max_duration,
                lr=1e-3, warm_step=0, progress=False,
                quant=QuantConfig(quantizer=quantizer, weight_bits=args.weight_bits, ste_forward=args.ste_forward,
                                  learn_levels=levels),
                nna_spec=args.nna_spec if aat else "", distill_scale=1.0 if distill else 0.0,
            )
            trainers[name] = Trainer(config)
        batches = iter(next(iter(trainers.values())).train_dl)
        times = {name: [] for name in trainers}
        names = list(trainers)
        for step in range(args.warmup_steps + args.steps):
            batch = next(batches)
            for name in names[step % len(names):] + names[:step % len(names)]:
                trainer = trainers[name]
                torch.manual_seed(step)
                started = time.perf_counter()
                trainer.train_step(batch)
                if step >= args.warmup_steps:
                    times[name].append(time.perf_counter() - started)
    reference = times[args.variants[0]]
    base = statistics.median(reference)
    print(f"{args.steps} steps of the same real batches (max duration {args.max_duration} s), "
          f"{torch.get_num_threads()} threads, {args.weight_bits}-bit weights, s8bqat ste_forward={args.ste_forward}")
    print(f"| variant | median s/step | ratio of medians to {args.variants[0]} | median per-step ratio |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        paired = statistics.median(value / ref for value, ref in zip(values, reference))
        print(f"| {name} | {median:.4f} | {median / base:.3f} | {paired:.3f} |")


if __name__ == "__main__":
    main()
