#!/usr/bin/env python3
"""Extracts 80-bin fbank for ``{prefix}_cuts_{part}_raw.jsonl.gz`` -> ``{prefix}_cuts_{part}.jsonl.gz``.

With ``--speed-perturb``, the training part also gets ``{prefix}_cuts_{part}_sp.jsonl.gz``: the
same cuts plus their speed-perturbed copies (sharing the features of the originals).
"""

import argparse
import logging
from pathlib import Path

import torch
from lhotse import load_manifest_lazy

from nnaqat.data.features import compute_fbank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--parts", nargs="+", required=True)
    parser.add_argument("--speed-perturb", type=float, nargs="*", default=[], help="extra speeds for the train part")
    parser.add_argument("--train-part", default="train")
    parser.add_argument("--num-jobs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        speeds = sorted(set(args.speed_perturb) - {1.0}) if part == args.train_part else []
        name = f"{args.prefix}_cuts_{part}"
        out = args.output_dir / f"{name}{'_sp' if speeds else ''}.jsonl.gz"
        if out.is_file():
            logging.info("%s exists, skipping", out)
            continue
        cuts = load_manifest_lazy(args.src_dir / f"{name}_raw.jsonl.gz").to_eager()
        logging.info("%s: %d cuts, speeds %s", part, len(cuts), [1.0] + speeds)
        storage = args.output_dir / f"{args.prefix}_feats_{part}{'_sp' if speeds else ''}"
        with_feats = compute_fbank(cuts, storage, speeds, args.num_jobs)
        originals = {c.id for c in cuts}
        write_atomically(with_feats.filter(lambda c: c.id in originals), args.output_dir / f"{name}.jsonl.gz")
        if speeds:
            write_atomically(with_feats, out)


def write_atomically(cuts, path: Path) -> None:
    tmp = path.with_name(f".{path.name}")
    cuts.to_file(tmp)
    tmp.replace(path)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
