"""Decoding whole lhotse cut sets (with stored features, or audio featurised on the fly)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.dataset import K2SpeechRecognitionDataset, OnTheFlyFeatures, PrecomputedFeatures, SimpleCutSampler
from torch.utils.data import DataLoader
from tqdm import tqdm

from nnaqat.data.features import SAMPLING_RATE, fbank_extractor, num_frames
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.search import search
from nnaqat.decode.wer import Result
from nnaqat.models.transducer import Transducer


def named_manifests(specs: Sequence[str]) -> Dict[str, str]:
    """``NAME=manifest`` command-line specs -> ``{NAME: manifest}``; a malformed spec is named."""
    pairs = [spec.split("=", 1) for spec in specs]
    bad = [s for s, p in zip(specs, pairs) if len(p) != 2 or not all(p)]
    if bad:
        raise SystemExit(f"expected NAME=manifest, got {bad}")
    return dict(pairs)


def cuts_from_wavs(paths: Sequence[Path | str]) -> CutSet:
    """One cut per wav file (any sample rate, resampled to 16 kHz), with an empty transcript."""
    recordings = []
    for path in paths:
        try:
            recordings.append(Recording.from_file(path))
        except Exception as error:
            raise ValueError(f"{path}: unreadable audio ({error})") from error
    supervisions = [
        SupervisionSegment(id=r.id, recording_id=r.id, start=0.0, duration=r.duration, text="") for r in recordings
    ]
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    return CutSet.from_cuts(c.with_id(c.recording_id) for c in cuts).resample(SAMPLING_RATE)


def split_too_short(cuts: CutSet, min_frames: int) -> Tuple[CutSet, List[Result]]:
    """``(the cuts the encoder can take, empty-hypothesis results of the others)``: a cut with
    fewer than ``min_frames`` feature frames is reported by id and counts as errors instead of
    vanishing from the WER."""
    short = [c for c in cuts if num_frames(c) < min_frames]
    if short:
        logging.warning("%d utterance(s) too short to decode (< %d frames): %s", len(short), min_frames,
                        [c.id for c in short])
    short_ids = {c.id for c in short}
    kept = cuts.filter(lambda c: c.id not in short_ids).to_eager()
    return kept, [(c.id, (c.supervisions[0].text or "").split(), []) for c in short]


def decode_cuts(
    model: Transducer,
    cuts: CutSet,
    tokenizer: Tokenizer,
    method: str = "greedy_search",
    beam: int = 4,
    max_duration: float = 300.0,
    progress: bool = True,
    blank_penalty: float = 0.0,
) -> List[Result]:
    """Decodes every cut; returns ``(cut_id, reference words, hypothesis words)`` triples.

    Cuts too short for the encoder are reported by id and get an empty hypothesis, so they
    count as errors instead of vanishing from the WER.
    """
    cuts = cuts.to_eager()
    with_features = all(c.has_features for c in cuts)
    if not with_features:
        cuts = cuts.resample(SAMPLING_RATE)
    cuts, results = split_too_short(cuts, model.encoder.min_input_frames)
    strategy = PrecomputedFeatures() if with_features else OnTheFlyFeatures(fbank_extractor())
    dataset = K2SpeechRecognitionDataset(input_strategy=strategy, return_cuts=True)
    loader = DataLoader(dataset, sampler=SimpleCutSampler(cuts, max_duration=max_duration), batch_size=None)
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc=method, disable=not progress, leave=False):
            x = batch["inputs"]
            sup = batch["supervisions"]
            x_lens = torch.zeros(x.size(0), dtype=torch.int64)
            x_lens[sup["sequence_idx"]] = sup["num_frames"].to(torch.int64)
            encoder_out, encoder_lens, _ = model.encoder(x, x_lens)
            hyps = search(model, encoder_out, encoder_lens, method, beam, blank_penalty)
            for seq_idx, cut, text in zip(sup["sequence_idx"].tolist(), sup["cut"], sup["text"]):
                results.append((cut.id, (text or "").split(), tokenizer.decode(hyps[seq_idx]).split()))
    return results
