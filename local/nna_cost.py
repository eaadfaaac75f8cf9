#!/usr/bin/env python3
"""The cost-model table: where each op of a model runs (NNA or CPU), the per-frame engine latency
that placement costs (``nnaqat.nna.cost``), and the WER of the emulated model under it.

An fp32 checkpoint is converted after training under each ``--nna-spec`` and calibrated on
``--calibration-cuts``; an NNA checkpoint (trained with ``--nna-spec``) keeps its own spec. Each
of ``--placements`` (``GLOB=cpu`` rules, comma-separated, put before the spec's own; ``""`` is
the spec's placement) gives one row. Ops on the CPU run in float (``nnaqat.nna.placement``). WER
is greedy search through the emulation (identical to the integer engine for all-NNA models).

  local/nna_cost.py --checkpoint exp/fp32/pretrained.pt --bpe-model data/lang_bpe_32/bpe.model \\
      --nna-spec conf/nna/harsh-coarse.yaml --placements "" "encoder.layers.*=cpu" \\
      --calibration-cuts data/fbank/fsdd_cuts_train.jsonl.gz --cuts dev=data/fbank/fsdd_cuts_dev.jsonl.gz
"""

import argparse
import copy
import logging
from pathlib import Path
from typing import Dict, List

import torch
import yaml
from lhotse import load_manifest_lazy

from nnaqat.checkpoint import add_model_arguments, load_model_from_args
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.dataset import decode_cuts, named_manifests
from nnaqat.decode.wer import error_stats
from nnaqat.nna.cost import DeviceProfile, frame_latency, transducer_ops
from nnaqat.nna.placement import place_
from nnaqat.nna.recognize import add_post_training_conversion_arguments, convert_after_training


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--bpe-model", type=Path, required=True)
    add_post_training_conversion_arguments(parser, several_specs=True)  # one row per spec
    parser.add_argument("--placements", nargs="*", default=[""],
                        help='rule sets such as "encoder.layers.*=cpu,joiner.*=cpu", one row each ("": as the spec)')
    parser.add_argument("--device-profile", type=Path, help="YAML of nnaqat.nna.cost.DeviceProfile fields")
    parser.add_argument("--symbols-per-frame", type=float, default=0.1,
                        help="predictor runs per encoder frame (FSDD: about 4 digits in 60 frames)")
    parser.add_argument("--cuts", nargs="*", default=[], help="NAME=manifest.jsonl.gz to decode (greedy)")
    parser.add_argument("--blank-penalty", type=float, default=0.0)
    parser.add_argument("--max-duration", type=float, default=300.0)
    parser.add_argument("--num-threads", type=int, default=0)
    parser.add_argument("--label", default="", help="model name for the table (default: the checkpoint)")
    return parser.parse_args()


def weight_bits_of(model: torch.nn.Module) -> Dict[str, int]:
    """Bits per quantized parameter of a quantization-aware model (empty otherwise)."""
    quantizer = getattr(model, "quantizer", None)
    return dict(quantizer.bits) if quantizer is not None else {}


def main() -> None:
    args = get_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    profile = DeviceProfile.from_dict(yaml.safe_load(args.device_profile.read_text()) or {}, str(args.device_profile)) \
        if args.device_profile else DeviceProfile()  # fmt: skip
    tokenizer = Tokenizer(args.bpe_model)
    test_sets = named_manifests(args.cuts)
    rows: List[str] = []
    for spec_path in args.nna_spec or [None]:
        for rules in args.placements:
            model, name = load_model_from_args(args)
            if spec_path is not None:
                conversion = copy.copy(args)
                conversion.nna_spec = spec_path
                convert_after_training(model, conversion, tokenizer, args.max_duration, rules)
            elif getattr(model, "nna_spec", None) is not None:
                place_(model, model.nna_spec.placed(rules))
            else:
                raise SystemExit("an fp32 checkpoint needs --nna-spec (and --calibration-cuts)")
            model.eval()
            report = frame_latency(transducer_ops(model), model.nna_spec, profile, weight_bits_of(model),
                                   args.symbols_per_frame)  # fmt: skip
            wers = []
            for manifest in test_sets.values():
                results = decode_cuts(model, load_manifest_lazy(manifest), tokenizer, max_duration=args.max_duration,
                                      progress=False, blank_penalty=args.blank_penalty)  # fmt: skip
                wers.append(f"{error_stats(results)[0].wer:.2f}")
            us = {part: 1e6 * sum(getattr(report, part).values()) for part in ("compute", "weights", "transfers")}
            rows.append(
                f"| {args.label or name} | {spec_path.stem if spec_path else 'its own'} | "
                f"{', '.join(report.cpu_ops) or 'none'} | {us['compute']:.1f} | {us['weights']:.1f} | "
                f"{us['transfers']:.1f} | {1e6 * report.seconds_per_frame:.1f} | {' | '.join(wers)} |"
            )
            logging.info("%s", rows[-1])
    print(f"Per-frame engine latency in µs ({describe(profile)}; {args.symbols_per_frame} symbols per frame), "
          "greedy WER %")
    print("| model | spec | ops on the CPU | compute | weights | transfers | total | " + " | ".join(test_sets) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(test_sets))
    print("\n".join(rows))


def describe(profile: DeviceProfile) -> str:
    return (f"NNA {profile.nna_macs_per_second / 1e9:g} GMAC/s, CPU {profile.cpu_macs_per_second / 1e9:g} GMAC/s "
            f"in float, weights {profile.weight_bytes_per_second / 1e9:g} GB/s, a transfer "
            f"{profile.transfer_seconds * 1e6:g} µs + {profile.transfer_bytes_per_second / 1e9:g} GB/s")


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
