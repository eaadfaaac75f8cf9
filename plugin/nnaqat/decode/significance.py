"""Is system B's WER really lower than system A's? Paired bootstrap over utterances.

Bisani and Ney, "Bootstrap estimates for confidence intervals in ASR performance evaluation"
(ICASSP 2004): resample the test utterances with replacement, score both systems on each
resample, and read the spread of the WER difference. On sets of a few hundred utterances, where
one utterance moves the WER by 0.1-0.4 points, this is what tells a gain from noise.

Several test sets (e.g. the held-out speakers of leave-one-speaker-out) are resampled each within
itself and scored by the mean of their WERs, the figure the results tables report.

One training per system measures the test set's noise only: two trainings of the same recipe
(seeds, data order) can differ by more than that interval. With several trainings per system,
``bootstrap_over_trainings`` also resamples the trainings, so its interval covers both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import kaldialign
import numpy as np

from nnaqat.decode.wer import Result, paired

Decoding = Sequence[Result]  # one system's results on one test set


@dataclass(frozen=True)
class PairedBootstrap:
    """WERs in percent; ``delta = wer_b - wer_a`` (negative: B has fewer errors)."""

    wer_a: float
    wer_b: float
    delta: float
    low: float  # the delta's confidence interval, percentile bootstrap
    high: float
    prob_b_better: float  # fraction of resamples in which B's WER is strictly lower
    prob_a_better: float  # ... A's (ties count for neither)
    utterances: int
    resamples: int


def utterance_errors(a: Sequence[Result], b: Sequence[Result], name: str = "") -> np.ndarray:
    """Per-utterance ``(errors of A, errors of B, reference words)``, ``(U, 3)`` int64, for two
    decodings of the same utterances (same references); raises naming ``name`` if they differ."""
    where = f"{name}: " if name else ""
    try:
        pairs = paired(a, b)
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None
    rows = []
    for (cut_id, ref, hyp), (_, ref_b, hyp_b) in pairs:
        if list(ref) != list(ref_b):
            raise ValueError(f"{where}{cut_id}: the references differ ({list(ref)} against {list(ref_b)})")
        errors_a = kaldialign.edit_distance(list(ref), list(hyp))["total"]
        errors_b = kaldialign.edit_distance(list(ref_b), list(hyp_b))["total"]
        rows.append((errors_a, errors_b, len(ref)))
    if not rows:
        raise ValueError(f"{where}no utterances")
    return np.asarray(rows, dtype=np.int64)


def training_errors(
    a: Sequence[Decoding], b: Sequence[Decoding], name: str = ""
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-utterance errors of every training's decoding of one test set, utterances sorted by cut id:
    A's ``(R_a, U)``, B's ``(R_b, U)`` and the reference words ``(U,)``, int64; raises naming ``name``
    unless every decoding covers the same utterances with the same references."""
    if not a or not b:
        raise ValueError(f"{name or 'a test set'}: no decodings for {'A' if not a else 'B'}")
    reference = a[0]
    counts = [[utterance_errors(reference, run, name) for run in runs] for runs in (a, b)]
    errors_a, errors_b = (np.stack([c[:, 1] for c in per_run]) for per_run in counts)
    return errors_a, errors_b, counts[0][0][:, 2]


def bootstrap_over_trainings(
    sets: Sequence[Tuple[Sequence[Decoding], Sequence[Decoding]]],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    names: Sequence[str] = (),
) -> PairedBootstrap:
    """Bootstrap of ``mean over sets of WER(B) - WER(A)`` when each system was trained several times.

    A system's WER on a set is the mean over its trainings' WERs. Each resample draws every set's
    utterances with replacement (one draw for all decodings of the set, so the comparison stays
    paired) and each system's trainings with replacement, so the interval covers the spread
    between trainings as well as the test set's noise. With one training per system it is
    :func:`paired_bootstrap`. With a handful of trainings the interval is rough: it can only show
    the spread those few trainings happened to have. Sets draw their trainings independently, as
    leave-one-speaker-out's sets (each speaker its own models) need; do not pool sets decoded by
    the same trainings (e.g. one model's dev and test), whose draws would have to be shared.

    Args:
      sets: one ``(A's decodings, B's decodings)`` pair per test set, one decoding per training
        (e.g. seed), each a sequence of ``(cut_id, reference words, hypothesis words)`` over the
        same utterances; the two systems may have different numbers of trainings.
      resamples: bootstrap resamples.
      confidence: of the two-sided percentile interval ``[low, high]`` of the delta.
      names: of the sets, for error messages.
    """
    if not sets:
        raise ValueError("no test sets to compare")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    per_set = [
        training_errors(a, b, names[i] if i < len(names) else f"set {i + 1}") for i, (a, b) in enumerate(sets)
    ]
    sampled = np.zeros((2, resamples))  # A's and B's mean WER over the sets, per resample
    point = np.zeros(2)
    for errors_a, errors_b, words in per_set:
        utterances = len(words)
        # Each row is one resample's draw counts per utterance, so sums are matrix products.
        draws = rng.multinomial(utterances, np.full(utterances, 1.0 / utterances), size=resamples)
        drawn_words = np.maximum(draws @ words, 1)
        for system, errors in enumerate((errors_a, errors_b)):
            wers = 100.0 * (draws @ errors.T) / drawn_words[:, None]  # (resamples, trainings)
            trainings = len(errors)
            if trainings > 1:
                picks = rng.multinomial(trainings, np.full(trainings, 1.0 / trainings), size=resamples)
                wers = (wers * picks).sum(axis=1, keepdims=True) / trainings
            sampled[system] += wers[:, 0]
            point[system] += np.mean(100.0 * errors.sum(axis=1) / max(words.sum(), 1))
    sampled /= len(per_set)
    wer_a, wer_b = point / len(per_set)
    deltas = sampled[1] - sampled[0]
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return PairedBootstrap(
        wer_a=float(wer_a),
        wer_b=float(wer_b),
        delta=float(wer_b - wer_a),
        low=float(low),
        high=float(high),
        prob_b_better=float(np.mean(deltas < 0)),
        prob_a_better=float(np.mean(deltas > 0)),
        utterances=sum(len(words) for _, _, words in per_set),
        resamples=resamples,
    )


def paired_bootstrap(
    sets: Sequence[Tuple[Decoding, Decoding]],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    names: Sequence[str] = (),
) -> PairedBootstrap:
    """Paired bootstrap of ``mean over sets of WER(B) - WER(A)``, one training per system.

    Args:
      sets: one ``(results of A, results of B)`` pair per test set, each a sequence of
        ``(cut_id, reference words, hypothesis words)`` over the same utterances.
      resamples: bootstrap resamples; each draws every set's utterances with replacement, as
        many as the set has.
      confidence: of the two-sided percentile interval ``[low, high]`` of the delta.
      names: of the sets, for error messages.
    """
    return bootstrap_over_trainings(
        [([a], [b]) for a, b in sets], resamples=resamples, confidence=confidence, seed=seed, names=names
    )
