#!/usr/bin/env python3
"""Trains sentencepiece tokens on the transcripts of a cut manifest; writes bpe.model and tokens.txt."""

import argparse
from pathlib import Path

from lhotse import load_manifest_lazy

from nnaqat.data.tokenizer import train_bpe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cuts", type=Path, required=True)
    parser.add_argument("--lang-dir", type=Path, required=True)
    parser.add_argument("--vocab-size", type=int, default=32)
    parser.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    args = parser.parse_args()
    texts = []
    for cut in load_manifest_lazy(args.cuts):
        for supervision in cut.supervisions:
            if not supervision.text or not supervision.text.strip():
                raise SystemExit(f"{args.cuts}: utterance {cut.id} has an empty transcript")
            texts.append(supervision.text)
    train_bpe(texts, args.lang_dir, args.vocab_size, args.model_type)


if __name__ == "__main__":
    main()
