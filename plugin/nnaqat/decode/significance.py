"""Is system B's WER really lower than system A's? Paired bootstrap over utterances.

Bisani and Ney, "Bootstrap estimates for confidence intervals in ASR performance evaluation"
(ICASSP 2004): resample the test utterances with replacement, score both systems on each
resample, and read the spread of the WER difference. On sets of a few hundred utterances, where
one utterance moves the WER by 0.1-0.4 points, this is what tells a gain from noise.

Several test sets (e.g. the held-out speakers of leave-one-speaker-out) are resampled each within
itself and scored by the mean of their WERs, the figure the results tables report.

What it does not measure: the spread between trainings (seeds, data order). Two runs of the same
recipe differ by more than this interval when training noise dominates; only repeated trainings
show that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import kaldialign
import numpy as np

from nnaqat.decode.wer import Result, paired


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


def paired_bootstrap(
    sets: Sequence[Tuple[Sequence[Result], Sequence[Result]]],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    names: Sequence[str] = (),
) -> PairedBootstrap:
    """Paired bootstrap of ``mean over sets of WER(B) - WER(A)``.

    Args:
      sets: one ``(results of A, results of B)`` pair per test set, each a sequence of
        ``(cut_id, reference words, hypothesis words)`` over the same utterances.
      resamples: bootstrap resamples; each draws every set's utterances with replacement, as
        many as the set has.
      confidence: of the two-sided percentile interval ``[low, high]`` of the delta.
      names: of the sets, for error messages.
    """
    if not sets:
        raise ValueError("no test sets to compare")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    per_set: List[np.ndarray] = [
        utterance_errors(a, b, names[i] if i < len(names) else f"set {i + 1}") for i, (a, b) in enumerate(sets)
    ]
    sampled_a = np.zeros(resamples)
    sampled_b = np.zeros(resamples)
    for counts in per_set:
        # Each row is one resample's draw counts per utterance, so sums are matrix products.
        draws = rng.multinomial(len(counts), np.full(len(counts), 1.0 / len(counts)), size=resamples)
        errors_a, errors_b, words = (draws @ counts).T
        words = np.maximum(words, 1)
        sampled_a += 100.0 * errors_a / words
        sampled_b += 100.0 * errors_b / words
    sampled_a /= len(per_set)
    sampled_b /= len(per_set)
    wer_a = float(np.mean([100.0 * c[:, 0].sum() / max(c[:, 2].sum(), 1) for c in per_set]))
    wer_b = float(np.mean([100.0 * c[:, 1].sum() / max(c[:, 2].sum(), 1) for c in per_set]))
    deltas = sampled_b - sampled_a
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return PairedBootstrap(
        wer_a=wer_a,
        wer_b=wer_b,
        delta=wer_b - wer_a,
        low=float(low),
        high=float(high),
        prob_b_better=float(np.mean(deltas < 0)),
        prob_a_better=float(np.mean(deltas > 0)),
        utterances=sum(len(c) for c in per_set),
        resamples=resamples,
    )
