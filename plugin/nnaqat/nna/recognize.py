"""Calibrating a converted model on cut sets, and decoding them with the integer reference
engine (``local/decode.py --engine integer``).

The encoder's float front end (``LstmEncoder.front_end``: mean normalisation, band limit,
per-bin normalisation) runs in torch, as it runs on the device's CPU; everything after it runs
in the NumPy engine from the model's exported integers.
"""

from __future__ import annotations

import itertools
from typing import Iterable, List, Optional

import torch
from lhotse import CutSet

from nnaqat.data.datamodule import batch_to_tensors, eval_dataloader
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.streaming import features_of
from nnaqat.decode.wer import Result
from nnaqat.models.transducer import Transducer
from nnaqat.nna.convert import calibrate, freeze_calibration
from nnaqat.nna.engine import IntegerTransducer
from nnaqat.nna.export import export_integer_model


def calibrate_on_cuts(
    model: Transducer, cuts: CutSet, tokenizer: Tokenizer, num_batches: int, max_duration: float,
    prune_range: int = 5,
) -> int:
    """Calibrates an ``nna_``-converted model on the first ``num_batches`` batches of ``cuts``
    (with features, unaugmented, in order) and freezes its ranges: before AAT training, or for
    the post-training integer model. Returns the batches used."""
    batches = (batch_to_tensors(batch, tokenizer)[:4] for batch in eval_dataloader(cuts, max_duration))
    count = calibrate(model, itertools.islice(batches, num_batches), prune_range=prune_range)
    freeze_calibration(model)
    return count


def integer_decode_cuts(
    model: Transducer, cuts: Iterable, tokenizer: Tokenizer, chunk_frames: Optional[int] = None
) -> List[Result]:
    """Greedy-search results ``(cut_id, reference words, hypothesis words)`` of the integer
    engine running ``model``'s exported integers, streaming in chunks of ``chunk_frames``
    encoder frames (whole utterances when None). Cuts with audio only are featurised here."""
    engine = IntegerTransducer(export_integer_model(model))
    results: List[Result] = []
    for cut in cuts:
        with torch.no_grad():
            features = features_of(cut)
            normalised = model.encoder.front_end(features[None], torch.tensor([features.size(0)]))[0][0].numpy()
        tokens = engine.decode(normalised, chunk_frames)
        results.append((cut.id, cut.supervisions[0].text.split(), tokenizer.decode(tokens).split()))
    return results
