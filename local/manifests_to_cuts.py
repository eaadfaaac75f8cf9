#!/usr/bin/env python3
"""Turns any lhotse recordings/supervisions manifests into the recipe's raw cut manifests.

Reads ``{prefix}_{recordings,supervisions}_{part}.jsonl.gz`` and writes
``{prefix}_cuts_{part}_raw.jsonl.gz`` with one cut per supervision (the recipe trains on
segments with a single transcript each).
"""

import argparse
from pathlib import Path

from lhotse import CutSet, load_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest-dir", type=Path, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--parts", nargs="+", required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        recordings = load_manifest(args.manifest_dir / f"{args.prefix}_recordings_{part}.jsonl.gz")
        supervisions = load_manifest(args.manifest_dir / f"{args.prefix}_supervisions_{part}.jsonl.gz")
        for s in supervisions:
            if not s.text or not s.text.strip():
                raise SystemExit(f"{args.manifest_dir}: supervision {s.id} has an empty transcript")
        cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions).trim_to_supervisions(
            keep_overlapping=False
        )
        cuts.to_file(args.output_dir / f"{args.prefix}_cuts_{part}_raw.jsonl.gz")


if __name__ == "__main__":
    main()
