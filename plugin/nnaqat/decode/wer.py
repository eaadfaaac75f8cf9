"""Word error rates with per-utterance alignments, written in icefall's result-file format."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import kaldialign

EPS = "*"

# (cut_id, reference words, hypothesis words)
Result = Tuple[str, Sequence[str], Sequence[str]]


@dataclass
class ErrorStats:
    """Error counts over a set of utterances."""

    words: int = 0
    insertions: int = 0
    deletions: int = 0
    substitutions: int = 0
    utterance_errors: int = 0
    substitution_pairs: Counter = field(default_factory=Counter)
    deleted: Counter = field(default_factory=Counter)
    inserted: Counter = field(default_factory=Counter)

    @property
    def errors(self) -> int:
        return self.insertions + self.deletions + self.substitutions

    @property
    def wer(self) -> float:
        """Word error rate in percent."""
        return 100.0 * self.errors / max(self.words, 1)


def align(ref: Sequence[str], hyp: Sequence[str]) -> List[Tuple[str, str]]:
    """Minimum-edit-distance alignment; ``EPS`` marks insertions and deletions."""
    return kaldialign.align(list(ref), list(hyp), EPS)


def error_stats(results: Sequence[Result]) -> Tuple[ErrorStats, List[str]]:
    """Counts errors; returns the stats and one ``id:\\tcorr (ref->hyp) ...`` line per utterance."""
    stats = ErrorStats()
    lines = []
    for cut_id, ref, hyp in results:
        stats.words += len(ref)
        pieces = []
        errors_before = stats.errors
        for r, h in align(ref, hyp):
            if r == h:
                pieces.append(r)
                continue
            pieces.append(f"({r}->{h})")
            if r == EPS:
                stats.insertions += 1
                stats.inserted[h] += 1
            elif h == EPS:
                stats.deletions += 1
                stats.deleted[r] += 1
            else:
                stats.substitutions += 1
                stats.substitution_pairs[(r, h)] += 1
        stats.utterance_errors += stats.errors > errors_before
        lines.append(f"{cut_id}:\t{' '.join(pieces)}")
    return stats, lines


def write_recogs(path: Path | str, results: Sequence[Result]) -> None:
    """icefall's ``recogs-*.txt``: ``id:\\tref=[...]`` and ``id:\\thyp=[...]`` lines, sorted by id."""
    with open(path, "w") as f:
        for cut_id, ref, hyp in sorted(results):
            f.write(f"{cut_id}:\tref={list(ref)}\n{cut_id}:\thyp={list(hyp)}\n")


def write_error_stats(path: Path | str, test_set_name: str, results: Sequence[Result]) -> ErrorStats:
    """icefall's ``errs-*.txt``: starts with ``%WER``, then per-utterance alignments and error lists."""
    stats, lines = error_stats(sorted(results))
    with open(path, "w") as f:
        f.write(f"%WER = {stats.wer:.2f}\n")
        f.write(
            f"Errors: {stats.insertions} insertions, {stats.deletions} deletions, {stats.substitutions} "
            f"substitutions, over {stats.words} reference words "
            f"({stats.words - stats.deletions - stats.substitutions} correct)\n"
        )
        f.write(f"Utterances with errors: {stats.utterance_errors} of {len(results)} ({test_set_name})\n\n")
        f.write("PER-UTT DETAILS: corr or (ref->hyp)\n")
        f.writelines(f"{line}\n" for line in lines)
        f.write("\nSUBSTITUTIONS: count ref -> hyp\n")
        f.writelines(f"{c}   {r} -> {h}\n" for (r, h), c in stats.substitution_pairs.most_common())
        f.write("\nDELETIONS: count ref\n")
        f.writelines(f"{c}   {w}\n" for w, c in stats.deleted.most_common())
        f.write("\nINSERTIONS: count hyp\n")
        f.writelines(f"{c}   {w}\n" for w, c in stats.inserted.most_common())
    return stats
