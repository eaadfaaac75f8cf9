#!/usr/bin/env python3
"""How long runs of one repeated digit come out in decoding results.

    python local/run_lengths.py exp/fp32/greedy_search/recogs-test-epoch-8-avg-2-blank-penalty-1.txt

prints, per reference run length, how often it was recognised with each length (0: the run was
deleted or replaced as a whole). A model that says "two two" for "two two two" shows up as
mass off the diagonal.
"""

import argparse
from pathlib import Path

from nnaqat.decode.wer import read_recogs, run_length_confusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recogs", type=Path, nargs="+", help="recogs-*.txt files (their results are pooled)")
    args = parser.parse_args()
    results = [r for path in args.recogs for r in read_recogs(path)]
    table = run_length_confusion(results)
    if not table:
        parser.error(f"no reference words in {', '.join(map(str, args.recogs))}")
    longest = max(max(table), max(m for row in table.values() for m in row))
    print("| reference run | runs | " + " | ".join(f"said {m}x" for m in range(longest + 1)) + " | exact |")
    print("|---" * (longest + 4) + "|")
    for n in sorted(table):
        row = table[n]
        total = sum(row.values())
        cells = " | ".join(str(row.get(m, "")) for m in range(longest + 1))
        print(f"| {n} | {total} | {cells} | {100 * row.get(n, 0) / total:.0f} % |")


if __name__ == "__main__":
    main()
