#!/usr/bin/env python3
"""FSDD data preparation: corpus, lhotse manifests, connected-digit cuts (recipe stages 0-2)."""

import argparse
import dataclasses
import logging
from pathlib import Path

from lhotse import CutSet, load_manifest

from nnaqat.data.fsdd import ConnectedDigitsConfig, TakeSplit, compose_connected_digits, download_fsdd, prepare_fsdd, speakers_of

SPLITS = ("train", "dev", "test")


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("step", choices=["download", "manifests", "cuts"])
    parser.add_argument("--dl-dir", type=Path, default=Path("download"))
    parser.add_argument("--local-tarball", type=Path, default=None, help="use this FSDD archive instead of downloading")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--output-dir", type=Path, default=Path("data/manifests"), help="where cuts are written")
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-dev", type=int, default=500)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--holdout-speaker", default="", help="train/dev without this speaker; test on all its takes")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--train-repeat-prob", type=float, default=0.0,
                        help="training utterances: chance that a word repeats the previous digit")
    parser.add_argument("--train-min-edge", type=float, default=ConnectedDigitsConfig.min_edge,
                        help="training utterances: shortest silence (s) before the first and after the last "
                             "word; dev and test keep the default")
    return parser.parse_args()


def main() -> None:
    args = get_args()
    if args.step == "download":
        corpus = download_fsdd(args.dl_dir, args.local_tarball)
        logging.info("FSDD at %s", corpus)
        return
    if args.step == "manifests":
        prepare_fsdd(args.dl_dir / "free-spoken-digit-dataset", TakeSplit(), output_dir=args.manifest_dir)
        return

    words = {
        split: CutSet.from_manifests(
            recordings=load_manifest(args.manifest_dir / f"fsdd_recordings_{split}.jsonl.gz"),
            supervisions=load_manifest(args.manifest_dir / f"fsdd_supervisions_{split}.jsonl.gz"),
        )
        for split in SPLITS
    }
    speakers = speakers_of(words["train"])
    counts = {"train": args.num_train, "dev": args.num_dev, "test": args.num_test}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for index, split in enumerate(SPLITS):
        pool, chosen = words[split], speakers
        if args.holdout_speaker:
            if args.holdout_speaker not in speakers:
                raise SystemExit(f"--holdout-speaker {args.holdout_speaker!r} is not one of {speakers}")
            if split == "test":
                pool = words["train"] + words["dev"] + words["test"]
                chosen = [args.holdout_speaker]
            else:
                chosen = [s for s in speakers if s != args.holdout_speaker]
        config = ConnectedDigitsConfig()
        if split == "train":
            config = dataclasses.replace(config, repeat_prob=args.train_repeat_prob, min_edge=args.train_min_edge)
        cuts = compose_connected_digits(
            pool, counts[split], seed=args.seed * 10 + index, prefix=split, config=config, speakers=chosen
        )
        cuts.to_file(args.output_dir / f"fsdd_cuts_{split}_raw.jsonl.gz")
        logging.info("%s: %d utterances from %s", split, len(cuts), chosen)
        if split == "test":  # the same speakers' single words as recorded, trimmed to the speech
            isolated = pool.filter(lambda cut: cut.supervisions[0].speaker in chosen).to_eager()
            isolated.to_file(args.output_dir / "fsdd_cuts_isolated_raw.jsonl.gz")
            logging.info("isolated: %d single-word recordings from %s", len(isolated), chosen)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
