"""Calibrating a converted model on cut sets, and decoding them with the integer reference
engine (``local/decode.py --engine integer``).

The encoder's float front end (``LstmEncoder.front_end``: mean normalisation, band limit,
per-bin normalisation) runs in torch, as it runs on the device's CPU; everything after it runs
in the NumPy engine from the model's exported integers.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path
from typing import List, Optional

import torch
from lhotse import CutSet, load_manifest_lazy

from nnaqat.data.datamodule import batch_to_tensors, eval_dataloader
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.dataset import split_too_short
from nnaqat.decode.streaming import features_of
from nnaqat.decode.wer import Result
from nnaqat.models.transducer import Transducer
from nnaqat.nna.convert import calibrate, freeze_calibration, nna_
from nnaqat.nna.engine import IntegerTransducer
from nnaqat.nna.export import export_integer_model
from nnaqat.nna.spec import NnaSpec
from nnaqat.quant import quantize_
from nnaqat.quant.config import add_post_training_arguments, post_training_config


def calibrate_on_cuts(
    model: Transducer, cuts: CutSet, tokenizer: Tokenizer, num_batches: int, max_duration: float,
    prune_range: int = 5,
) -> int:
    """Calibrates an ``nna_``-converted model on the first ``num_batches`` batches of ``cuts``
    (with features, unaugmented, in order) and freezes its ranges: before AAT training, or for
    the post-training integer model. Returns the batches used."""
    tokenizer = tokenizer.with_repeat_marks(model.config.mark_repeats)  # the targets the model learned
    batches = (batch_to_tensors(batch, tokenizer)[:4] for batch in eval_dataloader(cuts, max_duration))
    count = calibrate(model, itertools.islice(batches, num_batches), prune_range=prune_range)
    freeze_calibration(model)
    return count


def integer_decode_cuts(
    model: Transducer, cuts: CutSet, tokenizer: Tokenizer, chunk_frames: Optional[int] = None,
    blank_penalty: float = 0.0,
) -> List[Result]:
    """Greedy-search results ``(cut_id, reference words, hypothesis words)`` of the integer
    engine running ``model``'s exported integers, streaming in chunks of ``chunk_frames``
    encoder frames (whole utterances when None). Cuts with audio only are featurised here.
    ``blank_penalty`` is in logits, as the torch search's."""
    engine = IntegerTransducer(export_integer_model(model))
    logit_scale, _ = model.joiner.output_linear.output_observer.scale_and_zero_point()
    penalty_codes = blank_penalty / float(logit_scale)
    cuts, results = split_too_short(cuts.to_eager(), model.encoder.min_input_frames)
    for cut in cuts:
        with torch.no_grad():
            features = features_of(cut)
            normalised = model.encoder.front_end(features[None], torch.tensor([features.size(0)]))[0][0].numpy()
        tokens = engine.decode(normalised, chunk_frames, penalty_codes)
        results.append((cut.id, cut.supervisions[0].text.split(), tokenizer.decode(tokens).split()))
    return results


def add_post_training_conversion_arguments(parser: argparse.ArgumentParser, several_specs: bool = False) -> None:
    """``--nna-spec --calibration-cuts --calibration-batches`` and the post-training quantizer
    flags: how a script turns a trained checkpoint into a post-training integer/quantized model
    (``several_specs``: ``--nna-spec`` takes a list, for scripts comparing specs)."""
    if several_specs:
        parser.add_argument("--nna-spec", type=Path, nargs="*", default=[],
                            help="convert an fp32 checkpoint under each of these specs")
    else:
        parser.add_argument("--nna-spec", type=Path, help="convert an fp32 checkpoint to this NNA after training")
    parser.add_argument("--calibration-cuts", type=Path, help="with --nna-spec: manifest whose first batches calibrate")
    parser.add_argument("--calibration-batches", type=int, default=20)
    add_post_training_arguments(parser)


def convert_after_training(
    model: Transducer, args: argparse.Namespace, tokenizer: Tokenizer, max_duration: float, placement: str = ""
) -> str:
    """Applies :func:`add_post_training_conversion_arguments` flags to a loaded model (in place):
    NNA conversion (before the quantizer, which wraps the emulated layers' weights), post-training
    quantization, then calibration. ``placement``: rules put before the spec's own
    (:meth:`NnaSpec.placed`). Returns a suffix naming what was done (may be empty)."""
    suffix = ""
    if args.nna_spec:
        if getattr(model, "nna_spec", None) is not None:
            raise SystemExit("--nna-spec: the checkpoint already emulates an NNA")
        if not args.calibration_cuts:
            raise SystemExit("--nna-spec needs --calibration-cuts")
        if getattr(model, "quantizer", None) is not None:
            # A quantization-aware checkpoint loads finalized: its weights are plain codebook
            # values, which the NNA's weight quantization takes like any others.
            model.quantizer = None
        nna_(model, NnaSpec.from_yaml(args.nna_spec).placed(placement))
        suffix += f"-nna-{args.nna_spec.stem}"
    if args.quantizer != "none":
        if getattr(model, "quantizer", None) is not None:
            raise SystemExit(f"the checkpoint is already quantized ({model.quantizer.config.quantizer})")
        quantizer = quantize_(model, post_training_config(args))
        quantizer.finalize(model)
        quantizer.check_on_codebook(model)
    if getattr(model, "quantizer", None) is not None:
        logging.info("%s: all %d quantized tensors lie exactly on their codebooks", model.quantizer.config.quantizer,
                     len(model.quantizer.bits))
    if args.nna_spec:
        used = calibrate_on_cuts(model, load_manifest_lazy(args.calibration_cuts).to_eager(), tokenizer,
                                 args.calibration_batches, max_duration)
        logging.info("NNA ranges calibrated on %d batches of %s", used, args.calibration_cuts)
    return suffix
