"""Lhotse data loading for transducer training and decoding."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, K2SpeechRecognitionDataset, SimpleCutSampler, SpecAugment
from torch.utils.data import DataLoader

from nnaqat.data.features import LOG_ENERGY_FLOOR, mel_bin_centers_hz
from nnaqat.data.tokenizer import Tokenizer


@dataclass
class AugmentConfig:
    """Feature-domain augmentation applied to training batches."""

    spec_augment: bool = True
    time_warp: int = 20  # SpecAugment's time-warp factor (frames; 0: off)
    time_mask_frames: int = 20  # longest SpecAugment time mask (0: no time masks)
    gain_db: float = 0.0  # random gain in +-gain_db, applied exactly in the log-mel domain
    eq_db: float = 0.0  # random smooth equaliser curve of at most +-eq_db across the mel bins
    mel_warp: float = 0.0  # vocal-tract-length perturbation: frequency scale in 1 +- mel_warp


def add_log_energy(features: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """Adds ``db`` decibels (broadcast to ``features``) to log-mel energies, exactly as scaling
    the audio would: un-floored entries move and clamp at the floor, digital silence stays."""
    offset = db * (math.log(10.0) / 10.0)  # 10^(dB/10) energy ratio, in nats
    floored = features <= LOG_ENERGY_FLOOR + 1e-4
    return torch.where(floored, features, (features + offset).clamp_min(LOG_ENERGY_FLOOR))


class RandomGain:
    """Volume perturbation computed on log-mel features instead of audio.

    Fbank returns ``log(max(E, eps))``; scaling audio by ``a`` gives ``log(max(a^2 E, eps))``,
    i.e. ``max(x + 2 log a, floor)`` for every un-floored entry, while digital silence stays at
    the floor. That is exactly lhotse's ``perturb_volume`` without re-extracting features.
    """

    def __init__(self, max_db: float) -> None:
        self.max_db = max_db

    def __call__(self, features: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``features (N, T, F)`` -> same shape; one gain per utterance."""
        db = (torch.rand(features.size(0), 1, 1) * 2 - 1) * self.max_db
        return add_log_energy(features, db)


class RandomEqualizer:
    """Random microphone/room colouring: a smooth per-utterance curve added across mel bins.

    The curve is a random mix of the first three cosines over the mel axis, scaled so its peak
    is a random fraction of ``max_db``; :func:`add_log_energy` applies it, so it is the log-mel
    image of filtering the audio with that response.
    """

    def __init__(self, max_db: float, num_terms: int = 3) -> None:
        self.max_db = max_db
        self.num_terms = num_terms

    def __call__(self, features: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``features (N, T, F)`` -> same shape; one curve per utterance."""
        n, _, f = features.shape
        bins = torch.linspace(0, math.pi, f)
        basis = torch.stack([torch.cos(k * bins) for k in range(1, self.num_terms + 1)])  # (K, F)
        curves = (torch.rand(n, self.num_terms) * 2 - 1) @ basis  # (N, F)
        peak = curves.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
        db = curves / peak * torch.rand(n, 1) * self.max_db
        return add_log_energy(features, db[:, None, :])


class RandomMelWarp:
    """Vocal-tract-length perturbation (VTLP) on log-mel features.

    Each utterance gets a frequency scale ``alpha`` in ``1 +- max_warp``; output bin ``i`` takes
    the input's log energy at ``f_i / alpha`` (linear interpolation between bin centres, clamped
    at the band edges), so formants move by ``alpha`` as for a shorter or longer vocal tract.
    Unlike speed perturbation, duration and the number of frames are unchanged.
    """

    def __init__(self, max_warp: float, centers_hz: torch.Tensor) -> None:
        self.max_warp = max_warp
        self.centers_hz = centers_hz.double()
        self.mel = 1127.0 * torch.log1p(self.centers_hz / 700.0)

    def __call__(self, features: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``features (N, T, F)`` -> same shape; one warp factor per utterance."""
        alpha = 1.0 + (torch.rand(features.size(0), dtype=torch.float64) * 2 - 1) * self.max_warp
        return self.warp(features, alpha)

    def warp(self, features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``features (N, T, F)`` with utterance ``n`` scaled in frequency by ``alpha[n]``."""
        f = features.size(2)
        source_mel = 1127.0 * torch.log1p(self.centers_hz / alpha[:, None].double() / 700.0)  # (N, F)
        # Fractional input-bin index of each source frequency (mel centres are equally spaced).
        step = self.mel[1] - self.mel[0]
        pos = ((source_mel - self.mel[0]) / step).clamp(0, f - 1)
        low = pos.floor().long().clamp(max=f - 2)
        frac = (pos - low).to(features.dtype)[:, None, :]
        index = lambda i: i[:, None, :].expand(-1, features.size(1), -1)
        return features.gather(2, index(low)) * (1 - frac) + features.gather(2, index(low + 1)) * frac


def filter_trainable(
    cuts: CutSet, tokenizer: Tokenizer, output_length: Callable[[int], int]
) -> Tuple[CutSet, List[str]]:
    """Drops cuts too short for their transcript; returns the kept cuts and the dropped ids.

    The pruned loss needs at least one encoder frame per token; ``output_length`` maps input
    frames to encoder frames.

    Empty or unencodable transcripts raise ValueError naming the utterance: they are data
    errors to fix, not utterances to skip silently.
    """
    kept, dropped = [], []
    for cut in cuts:
        num_tokens = sum(len(tokenizer.encode(s.text, cut.id)) for s in cut.supervisions)
        (kept if output_length(cut.num_frames) >= max(num_tokens, 1) else dropped).append(cut)
    if dropped:
        logging.warning("dropped %d cut(s) too short for their transcript: %s", len(dropped), [c.id for c in dropped[:10]])
    return CutSet.from_cuts(kept), [c.id for c in dropped]


def train_dataloader(
    cuts: CutSet,
    max_duration: float,
    augment: AugmentConfig,
    seed: int,
    world_size: int = 1,
    rank: int = 0,
    num_buckets: int = 10,
) -> DataLoader:
    """Shuffled, duration-bucketed batches; augmentation runs in the main process so that a
    per-batch seed makes resumed runs see the same augmentation."""
    transforms: List[Callable] = []
    if augment.gain_db > 0:
        transforms.append(RandomGain(augment.gain_db))
    if augment.eq_db > 0:
        transforms.append(RandomEqualizer(augment.eq_db))
    if augment.mel_warp > 0:
        transforms.append(RandomMelWarp(augment.mel_warp, mel_bin_centers_hz()))
    if augment.spec_augment:
        # lhotse divides by num_frame_masks; masks of size 1 have length randint(0, 1) = 0, i.e. none.
        transforms.append(
            SpecAugment(
                time_warp_factor=augment.time_warp,
                num_frame_masks=2 if augment.time_mask_frames > 0 else 1,
                frames_mask_size=max(augment.time_mask_frames, 1),
                features_mask_size=15,
                num_feature_masks=2,
            )
        )
    dataset = K2SpeechRecognitionDataset(input_transforms=transforms, return_cuts=True)
    sampler = DynamicBucketingSampler(
        cuts,
        max_duration=max_duration,
        shuffle=True,
        num_buckets=num_buckets,
        seed=seed,
        world_size=world_size,
        rank=rank,
        # DDP ranks must see equally many batches; a single process keeps every cut.
        drop_last=world_size > 1,
    )
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)


def eval_dataloader(cuts: CutSet, max_duration: float) -> DataLoader:
    """Batches in manifest order, no augmentation."""
    dataset = K2SpeechRecognitionDataset(return_cuts=True)
    sampler = SimpleCutSampler(cuts, max_duration=max_duration, shuffle=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)


class FeatureStatistics(NamedTuple):
    """Per-bin statistics ``(F,)`` of a training set's features."""

    mean: torch.Tensor
    std: torch.Tensor
    speech_mean: Optional[torch.Tensor]  # mean over the frames ``is_speech`` keeps (None without it)


def feature_statistics(
    cuts: CutSet,
    max_cuts: Optional[int] = 2000,
    is_speech: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> FeatureStatistics:
    """Per-bin mean and standard deviation over the frames of (up to ``max_cuts``) cuts, and with
    ``is_speech`` (``(T, F) -> (T,)`` bool) the mean over the frames it keeps, in the same pass."""
    total, total_sq, count = 0.0, 0.0, 0
    speech_total, speech_count = 0.0, 0
    for i, cut in enumerate(cuts):
        if max_cuts is not None and i >= max_cuts:
            break
        feats = torch.from_numpy(cut.load_features()).double()
        total = total + feats.sum(0)
        total_sq = total_sq + (feats**2).sum(0)
        count += feats.size(0)
        if is_speech is not None:
            speech = feats[is_speech(feats)]
            speech_total = speech_total + speech.sum(0)
            speech_count += speech.size(0)
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-10).sqrt()
    speech_mean = None
    if is_speech is not None:
        if speech_count == 0:
            raise ValueError("no speech frames in the cuts")
        speech_mean = (speech_total / speech_count).float()
    return FeatureStatistics(mean.float(), std.float(), speech_mean)


def batch_to_tensors(
    batch: dict, tokenizer: Tokenizer
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, List[str], List[str]]:
    """Unpacks a K2SpeechRecognitionDataset batch (one supervision per cut).

    Returns ``(x (N, T, F), x_lens (N,), y (N, U) blank-padded, y_lens (N,), cut_ids, texts)``.
    """
    x = batch["inputs"]
    supervisions = batch["supervisions"]
    order = supervisions["sequence_idx"]
    if len(order) != x.size(0) or sorted(order.tolist()) != list(range(x.size(0))):
        ids = sorted({cut.id for cut in supervisions["cut"]})
        raise ValueError(f"expected exactly one supervision per cut in the batch of {ids[:5]}")
    x_lens = torch.zeros(x.size(0), dtype=torch.int64)
    x_lens[order] = supervisions["num_frames"].to(torch.int64)
    cut_ids, texts = [""] * x.size(0), [""] * x.size(0)
    for i, (cut, text) in zip(order.tolist(), zip(supervisions["cut"], supervisions["text"])):
        cut_ids[i], texts[i] = cut.id, text
    tokens = [tokenizer.encode(t, cut_id) for t, cut_id in zip(texts, cut_ids)]
    y_lens = torch.tensor([len(t) for t in tokens], dtype=torch.int64)
    y = torch.full((x.size(0), int(y_lens.max())), tokenizer.blank_id, dtype=torch.int64)
    for i, t in enumerate(tokens):
        y[i, : len(t)] = torch.tensor(t)
    return x, x_lens, y, y_lens, cut_ids, texts
