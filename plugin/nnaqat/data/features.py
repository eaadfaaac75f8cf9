"""80-bin log-mel filterbanks at 16 kHz, as sherpa-onnx / kaldi-native-fbank compute them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter
from lhotse.cut import Cut
from lhotse.utils import compute_num_frames

SAMPLING_RATE = 16000
FRAME_SHIFT = 0.01  # seconds per feature frame
FRAME_LENGTH = 0.025  # analysis window of one frame
NUM_MEL_BINS = 80
LOW_FREQ = 20.0
HIGH_FREQ = -400.0  # relative to Nyquist
# Fbank clamps mel energies at float32 epsilon before the log: the value of digital silence.
LOG_ENERGY_FLOOR = math.log(1.1920928955078125e-07)


def fbank_extractor() -> Fbank:
    """The recipe's feature extractor (dither 0, no edge snipping, high_freq -400)."""
    return Fbank(
        FbankConfig(
            num_mel_bins=NUM_MEL_BINS, frame_shift=FRAME_SHIFT, frame_length=FRAME_LENGTH, dither=0.0,
            snip_edges=False, low_freq=LOW_FREQ, high_freq=HIGH_FREQ,
        )
    )


def num_frames(cut: Cut) -> int:
    """Feature frames of a cut: its stored features', or those :func:`fbank_extractor` will compute."""
    return cut.num_frames if cut.has_features else compute_num_frames(cut.duration, FRAME_SHIFT, SAMPLING_RATE)


def mel_bin_centers_hz(num_bins: int = NUM_MEL_BINS) -> torch.Tensor:
    """Centre frequencies ``(num_bins,)`` of the extractor's triangular mel filters (Kaldi's mel scale)."""
    high = SAMPLING_RATE / 2 + HIGH_FREQ if HIGH_FREQ <= 0 else HIGH_FREQ
    mel = lambda hz: 1127.0 * math.log1p(hz / 700.0)
    centers = torch.linspace(mel(LOW_FREQ), mel(high), num_bins + 2)[1:-1].double()
    return 700.0 * torch.expm1(centers / 1127.0)


def compute_fbank(
    cuts: CutSet,
    storage_path: Path | str,
    speed_factors: Sequence[float] = (),
    num_jobs: int = 1,
) -> CutSet:
    """Resamples to 16 kHz, adds speed-perturbed copies, extracts and stores features.

    Args:
      cuts: cuts with audio (mono or lazily mixed).
      storage_path: LilcomChunkyWriter archive to create (overwritten).
      speed_factors: extra copies at these speeds (1.0 is ignored); ids get ``_sp{factor}``.
      num_jobs: extraction processes (small sets use one: a worker pool costs ~10 s to start).
    Returns:
      Cuts with features attached, in input order followed by each perturbed copy.
    """
    cuts = cuts.resample(SAMPLING_RATE)
    copies = [cuts] + [cuts.perturb_speed(f) for f in speed_factors if f != 1.0]
    cuts = CutSet.from_cuts(c for copy in copies for c in copy)
    return cuts.compute_and_store_features(
        extractor=fbank_extractor(),
        storage_path=str(storage_path),
        storage_type=LilcomChunkyWriter,
        num_jobs=num_jobs if len(cuts) >= 5000 else 1,
    )
