#!/usr/bin/env python3
"""Decodes test sets (lhotse cut manifests) or wav files; writes icefall-style result files.

  local/decode.py --exp-dir exp/fp32 --epoch 10 --avg 3 --bpe-model data/lang_bpe_32/bpe.model \\
      --method modified_beam_search --beam-size 4 --cuts test=data/fbank/fsdd_cuts_test.jsonl.gz
  local/decode.py --checkpoint exp/fp32/epoch-10.pt --bpe-model ... --wavs a.wav b.wav

Quantization-aware checkpoints decode with their weights snapped onto their codebooks; a packed
side-car (``--checkpoint model.pack``) decodes as is; ``--quantizer ptq --weight-bits K`` rounds
an fp32 model's weights after training (the post-training baseline).

NNA checkpoints (trained with ``--nna-spec``) decode with the emulated NNA; ``--engine integer``
decodes them with the NumPy integer reference engine instead (greedy search, bit-exact with the
emulation; ``--check-emulated`` also decodes with the emulated model, writes its results too and
fails unless every hypothesis is the same). ``--nna-spec conf/nna/int8.yaml --calibration-cuts train.jsonl.gz`` converts an fp32
checkpoint after training (the post-training integer model).
"""

import argparse
import logging
from pathlib import Path

import torch
from lhotse import load_manifest_lazy

from nnaqat.checkpoint import add_model_arguments, load_model_from_args
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.dataset import cuts_from_wavs, decode_cuts, named_manifests
from nnaqat.decode.search import add_search_arguments
from nnaqat.decode.wer import Result, differing_hypotheses, search_suffix, write_recogs, write_results
from nnaqat.nna.recognize import add_post_training_conversion_arguments, convert_after_training, integer_decode_cuts


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, exp_dir_required=True)
    parser.add_argument("--bpe-model", type=Path, required=True)
    add_search_arguments(parser)
    parser.add_argument("--max-duration", type=float, default=300.0)
    parser.add_argument("--cuts", nargs="*", default=[], help="NAME=manifest.jsonl.gz (features or audio)")
    parser.add_argument("--wavs", nargs="*", default=[], type=Path, help="wav files (any sample rate)")
    parser.add_argument("--num-threads", type=int, default=0)
    parser.add_argument("--engine", default="torch", choices=["torch", "integer"],
                        help="integer: the NumPy integer reference engine (NNA checkpoints, greedy search)")
    parser.add_argument("--chunk-frames", type=int, default=0,
                        help="integer engine: stream in chunks of this many encoder frames (0: whole utterances)")
    parser.add_argument("--check-emulated", action="store_true",
                        help="integer engine: also decode (and write) the emulated model; exit 1 unless the hypotheses agree")
    add_post_training_conversion_arguments(parser)
    return parser.parse_args()


def main() -> None:
    args = get_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model, suffix = load_model_from_args(args)
    suffix += search_suffix(args.method, args.beam_size, args.blank_penalty)
    tokenizer = Tokenizer(args.bpe_model)
    suffix += convert_after_training(model, args, tokenizer, args.max_duration)
    emulated_suffix = suffix  # --check-emulated: the emulated model's files
    if args.engine == "integer":
        if getattr(model, "nna_spec", None) is None:
            raise SystemExit("--engine integer needs an NNA checkpoint (trained with --nna-spec) or --nna-spec")
        if args.method != "greedy_search":
            raise SystemExit("--engine integer decodes with greedy_search")
        suffix += "-integer" + (f"-chunk-{args.chunk_frames}" if args.chunk_frames else "")
    elif args.check_emulated:
        raise SystemExit("--check-emulated compares the integer engine with the emulation: add --engine integer")
    out_dir = args.exp_dir / args.method
    out_dir.mkdir(parents=True, exist_ok=True)

    test_sets = [(name, load_manifest_lazy(manifest)) for name, manifest in named_manifests(args.cuts).items()]
    if args.wavs:
        test_sets.append(("wavs", cuts_from_wavs(args.wavs)))
    if not test_sets:
        raise SystemExit("nothing to decode: give --cuts NAME=manifest and/or --wavs")
    for name, cuts in test_sets:
        if args.engine == "integer":
            results = integer_decode_cuts(model, cuts, tokenizer, args.chunk_frames or None, args.blank_penalty)
        else:
            results = decode_cuts(model, cuts, tokenizer, args.method, args.beam_size, args.max_duration,
                                   blank_penalty=args.blank_penalty)
        report(out_dir, name, suffix, args.method, results)
        if args.check_emulated:
            emulated = decode_cuts(model, cuts, tokenizer, "greedy_search", args.beam_size, args.max_duration,
                                   blank_penalty=args.blank_penalty)
            report(out_dir, name, emulated_suffix, args.method, emulated)
            differing = differing_hypotheses(results, emulated)
            logging.info("%s: integer engine and emulated model give the same hypothesis on %d of %d utterances",
                         name, len(results) - len(differing), len(results))
            if differing:
                raise SystemExit(f"{name}: the integer engine differs from the emulated model on {len(differing)} "
                                 f"utterances, e.g. {differing[:5]}")


def report(out_dir: Path, name: str, suffix: str, method: str, results: list[Result]) -> None:
    """The result files of a test set, its WER logged (wav files: recogs, and the hypotheses
    printed: they have no references)."""
    if name == "wavs":
        write_recogs(out_dir / f"recogs-{name}-{suffix}.txt", results)
        for cut_id, _, hyp in sorted(results):
            print(f"{cut_id}\t{' '.join(hyp)}")
        return
    stats = write_results(out_dir, name, suffix, method, results)
    logging.info("%s %s %s: WER %.2f%% (%d/%d)", name, method, suffix, stats.wer, stats.errors, stats.words)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
