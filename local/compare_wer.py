#!/usr/bin/env python3
"""Is B better than A? Paired bootstrap of the WER difference on the same utterances.

  local/compare_wer.py --a exp/fp32/greedy_search/recogs-test-*.txt \\
      --b exp/fp32-s8bqat-2bit/greedy_search/recogs-test-*.txt

Several ``--a``/``--b`` files pair up in order (e.g. the five held-out speakers of
leave-one-speaker-out); each pair is one test set, resampled within itself, and the figure
compared is the mean of the sets' WERs, as in the results tables. Prints each set and the mean:
both WERs, the difference B - A with its confidence interval, and how often B (A) came out
strictly better over the resamples.

With ``--trainings N`` each system's files come in consecutive groups of N, the decodings of one
set by N trainings (e.g. seeds) of that system; a system's WER on a set is then the mean over its
trainings, and the resamples draw trainings too, so the interval covers training noise:

  local/compare_wer.py --trainings 3 \\
      --a exp/small{,-seed43,-seed44}-lsq-2bit/greedy_search/recogs-test-*.txt \\
      --b exp/small{,-seed43,-seed44}-s8bqat-2bit/greedy_search/recogs-test-*.txt

Sets trained a different number of times take one count each, in order: ``--trainings 5 4 4``.
"""

import argparse
import re
import sys
from itertools import accumulate
from pathlib import Path
from typing import List

from nnaqat.decode.significance import bootstrap_over_trainings
from nnaqat.decode.wer import read_recogs


def set_name(recogs: Path) -> str:
    """``exp/X/greedy_search/recogs-test-....txt`` -> ``X test``."""
    match = re.match(r"recogs-([^-]+)-", recogs.name)
    return f"{recogs.parent.parent.name} {match.group(1) if match else recogs.name}"


def training_counts(trainings: List[int], files: int) -> List[int]:
    """Each set's number of files per system from ``--trainings``; exits if they do not add up."""
    if any(n < 1 for n in trainings):
        sys.exit(f"error: --trainings {' '.join(map(str, trainings))}: counts must be positive")
    if len(trainings) == 1:
        if files % trainings[0]:
            sys.exit(f"error: {files} files per system do not make sets of --trainings {trainings[0]}")
        return trainings * (files // trainings[0])
    if sum(trainings) != files:
        sys.exit(f"error: --trainings {' '.join(map(str, trainings))} adds up to {sum(trainings)}, "
                 f"not the {files} files per system")
    return list(trainings)


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", nargs="+", type=Path, required=True, help="recogs-*.txt of system A, one per set")
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="recogs-*.txt of system B, in the same order")
    parser.add_argument("--trainings", type=int, nargs="+", default=[1],
                        help="files per set and system: decodings of that set by this many trainings of the "
                        "system; one count for every set, or one per set in order")
    parser.add_argument("--names", nargs="*", default=[],
                        help="names of the sets (default: B's experiment folder and test set)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = get_args()
    if len(args.a) != len(args.b):
        sys.exit(f"error: {len(args.a)} files for A but {len(args.b)} for B: they pair up in order")
    bounds = list(accumulate(training_counts(args.trainings, len(args.b)), initial=0))
    groups_a = [args.a[start:end] for start, end in zip(bounds, bounds[1:])]
    groups_b = [args.b[start:end] for start, end in zip(bounds, bounds[1:])]
    names = args.names or [set_name(group[0]) for group in groups_b]
    if len(names) != len(groups_b):
        sys.exit(f"error: {len(names)} names for {len(groups_b)} sets")
    sets = [([read_recogs(p) for p in a], [read_recogs(p) for p in b]) for a, b in zip(groups_a, groups_b)]
    options = dict(resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    rows = [(name, bootstrap_over_trainings([pair], names=[name], **options)) for name, pair in zip(names, sets)]
    if len(sets) > 1:
        rows.append(("mean", bootstrap_over_trainings(sets, names=names, **options)))
    interval = f"{100 * args.confidence:g} % interval"
    print(f"| set | utterances | WER A | WER B | B - A | {interval} | P(B better) | P(A better) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r.utterances} | {r.wer_a:.2f} | {r.wer_b:.2f} | {r.delta:+.2f} | "
            f"[{r.low:+.2f}, {r.high:+.2f}] | {r.prob_b_better:.3f} | {r.prob_a_better:.3f} |"
        )


if __name__ == "__main__":
    main()
