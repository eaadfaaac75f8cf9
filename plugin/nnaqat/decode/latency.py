"""Emission latency: from the end of a spoken word to the moment the decoder has emitted it.

Definition. A word's end is where its recording ends inside the connected-digit utterance (the
lhotse ``MixedCut`` track offset plus the track's duration; FSDD recordings are trimmed to the
word, so this is the end of speech to within the recordings' own trimming). A word is emitted
with its last token; a token is out when the chunk that emitted it has been computed (see
:meth:`nnaqat.decode.streaming.StreamingDecoder.emission_times`). Only correctly recognised words
(matches in the minimum-edit-distance alignment) get a latency; beam search uses the emission
times of the finally best hypothesis. A negative latency is a word out before its recording
ended: a digit is often recognisable before its last sounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np
from lhotse.cut import MixedCut, PaddingCut

from nnaqat.data.tokenizer import WORD_BOUNDARY
from nnaqat.decode.wer import EPS, align


def word_end_times(cut: Any) -> Optional[List[float]]:
    """End (seconds) of each word of a connected-digit ``MixedCut``, in order; None for other cuts."""
    if not isinstance(cut, MixedCut):
        return None
    tracks = sorted((t for t in cut.tracks if not isinstance(t.cut, PaddingCut)), key=lambda t: t.offset)
    return [t.offset + t.cut.duration for t in tracks]


def word_emission_times(pieces: Sequence[str], times: Sequence[float]) -> List[float]:
    """Emission time of each word of a token sequence: that of the word's last piece.

    A piece starting with ``▁`` starts a word; words left without characters (a lone ``▁``) are
    dropped, as sentencepiece's decoding drops them.
    """
    words: List[List] = []  # [text, time]
    for piece, t in zip(pieces, times):
        if piece.startswith(WORD_BOUNDARY) or not words:
            words.append(["", t])
        words[-1][0] += piece.replace(WORD_BOUNDARY, "")
        words[-1][1] = t
    return [t for text, t in words if text]


def matched_latencies(
    ref_words: Sequence[str], ref_ends: Sequence[float], hyp_words: Sequence[str], hyp_times: Sequence[float]
) -> List[float]:
    """``emission − word end`` (seconds) of every reference word the hypothesis got right."""
    if len(ref_words) != len(ref_ends) or len(hyp_words) != len(hyp_times):
        raise ValueError(
            f"{len(ref_words)} reference words with {len(ref_ends)} end times, "
            f"{len(hyp_words)} hypothesis words with {len(hyp_times)} emission times"
        )
    latencies, i, j = [], 0, 0
    for r, h in align(ref_words, hyp_words):
        if r != EPS and r == h:
            latencies.append(hyp_times[j] - ref_ends[i])
        i += r != EPS
        j += h != EPS
    return latencies


@dataclass
class LatencyStats:
    """Summary of per-word latencies in seconds."""

    count: int
    mean: float
    p50: float
    p95: float

    @classmethod
    def of(cls, latencies: Sequence[float]) -> "LatencyStats":
        if not latencies:
            return cls(0, float("nan"), float("nan"), float("nan"))
        values = np.asarray(latencies, dtype=np.float64)
        return cls(len(values), float(values.mean()), float(np.median(values)), float(np.percentile(values, 95)))


def stream_latencies(
    streams: Sequence[Any],
    tokenizer: Any,
    references: Mapping[str, Sequence[str]],
    word_ends: Mapping[str, Sequence[float]],
) -> List[float]:
    """Latencies of the correctly recognised words of decoded streams.

    Args:
      streams: :class:`nnaqat.decode.streaming.DecodedStream` objects (id, tokens, emission_times).
      tokenizer: :class:`nnaqat.data.tokenizer.Tokenizer` of the model.
      references: reference words per stream id.
      word_ends: end time of each reference word per stream id (streams without one are skipped).
    """
    latencies: List[float] = []
    for stream in streams:
        ends = word_ends.get(stream.id)
        if ends is None:
            continue
        ref = references[stream.id]
        if len(ends) != len(ref):
            raise ValueError(f"{stream.id}: {len(ref)} reference words but {len(ends)} word tracks")
        hyp = tokenizer.decode(stream.tokens).split()
        times = word_emission_times([tokenizer.id_to_piece(t) for t in stream.tokens], stream.emission_times)
        if len(times) != len(hyp):  # e.g. an emitted <unk>, which decodes to a word of its own
            logging.warning("%s: cannot map the hypothesis tokens to words; no latency taken", stream.id)
            continue
        latencies.extend(matched_latencies(ref, ends, hyp, times))
    return latencies
