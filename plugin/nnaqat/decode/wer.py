"""Word error rates with per-utterance alignments, written in icefall's result-file format."""

from __future__ import annotations

import ast
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

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


def read_recogs(path: Path | str) -> List[Result]:
    """Reads a ``recogs-*.txt`` written by :func:`write_recogs` back into results."""
    refs: Dict[str, List[str]] = {}
    results: List[Result] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        cut_id, sep, field_text = line.partition(":\t")
        kind, _, words = field_text.partition("=")
        if not sep or kind not in ("ref", "hyp"):
            raise ValueError(f"{path}:{number}: expected 'id:\\tref=[...]' or 'id:\\thyp=[...]', got {line!r}")
        try:
            parsed = ast.literal_eval(words)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"{path}:{number}: unreadable word list {words!r} ({error})") from None
        if kind == "ref":
            refs[cut_id] = parsed
        elif cut_id not in refs:
            raise ValueError(f"{path}:{number}: hypothesis of {cut_id} before its reference")
        else:
            results.append((cut_id, refs.pop(cut_id), parsed))
    if refs:
        raise ValueError(f"{path}: no hypothesis for {sorted(refs)[:5]}")
    return results


def paired(results: Sequence[Result], others: Sequence[Result]) -> List[Tuple[Result, Result]]:
    """Two decodings of the same utterances, matched by cut id and sorted by it; raises if the
    cut ids differ or repeat."""
    by_id = {result[0]: result for result in others}
    ids = {result[0] for result in results}
    for decoding, unique in ((results, ids), (others, by_id)):
        if len(unique) != len(decoding):
            twice = sorted(cut_id for cut_id, count in Counter(r[0] for r in decoding).items() if count > 1)
            raise ValueError(f"utterance ids occur twice in one decoding: {twice[:5]}")
    if ids != by_id.keys():
        raise ValueError(f"the two decodings cover different utterances, e.g. {sorted(ids ^ by_id.keys())[:5]}")
    return [(result, by_id[result[0]]) for result in sorted(results)]


def differing_hypotheses(results: Sequence[Result], others: Sequence[Result]) -> List[str]:
    """Ids of the utterances whose hypotheses differ between two decodings of the same cuts
    (e.g. the emulated NNA model and the integer engine); raises if the cut ids differ."""
    return [ours[0] for ours, theirs in paired(results, others) if list(ours[2]) != list(theirs[2])]


def runs(words: Sequence[str]) -> List[Tuple[str, int]]:
    """Maximal runs of one repeated word: ``a a b`` -> ``[(a, 2), (b, 1)]``."""
    return [(word, len(list(group))) for word, group in groupby(words)]


def run_length_confusion(results: Sequence[Result]) -> Dict[int, Counter]:
    """How long each reference run of one repeated word came out in the hypothesis.

    The run sequences (one item per run, lengths ignored) of reference and hypothesis are
    aligned; for every reference run aligned to a run of the same word, ``out[n][m]`` counts
    reference runs of length ``n`` recognised with length ``m``; ``out[n][0]`` counts reference
    runs deleted or substituted as a whole. Digit strings are where this matters: a transducer
    whose predictor sees ``k`` tokens may stop counting at ``k``.
    """
    out: Dict[int, Counter] = defaultdict(Counter)
    for _, ref, hyp in results:
        ref_runs, hyp_runs = runs(ref), runs(hyp)
        # Align on words, then walk both run lists in step to recover their lengths.
        r = h = 0
        for a, b in align([w for w, _ in ref_runs], [w for w, _ in hyp_runs]):
            if a == EPS:
                h += 1
                continue
            length = ref_runs[r][1]
            if b == a:
                out[length][hyp_runs[h][1]] += 1
            else:
                out[length][0] += 1
            r += 1
            h += b != EPS
        assert r == len(ref_runs) and h == len(hyp_runs)
    return dict(out)


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


def search_suffix(method: str, beam_size: int, blank_penalty: float) -> str:
    """What a result file's suffix says of the search: ``-beam-K`` for modified beam search and
    ``-blank-penalty-P`` when a penalty is set (icefall's naming)."""
    suffix = f"-beam-{beam_size}" if method == "modified_beam_search" else ""
    return suffix + (f"-blank-penalty-{blank_penalty:g}" if blank_penalty else "")


def write_results(out_dir: Path, name: str, suffix: str, method: str, results: Sequence[Result]) -> ErrorStats:
    """icefall's ``recogs-``, ``errs-`` and ``wer-summary-{name}-{suffix}.txt`` of one test set."""
    write_recogs(out_dir / f"recogs-{name}-{suffix}.txt", results)
    stats = write_error_stats(out_dir / f"errs-{name}-{suffix}.txt", name, results)
    (out_dir / f"wer-summary-{name}-{suffix}.txt").write_text(f"settings\tWER\n{method}\t{stats.wer:.2f}\n")
    return stats
