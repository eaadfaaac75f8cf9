#!/usr/bin/env python3
"""Transcribes your own audio file (any sample rate), streaming: partial results as the audio
"arrives", then the final one.

  local/transcribe.py my.wav --checkpoint exp/fp32/epoch-8.pt --bpe-model data/lang_bpe_32/bpe.model
  local/transcribe.py my.wav --onnx-dir exp/fp32/onnx [--precision int8]     # sherpa-onnx

With --checkpoint the PyTorch model decodes (fbank by kaldi-native-fbank, chunked encoder); with
--onnx-dir sherpa-onnx does, in a child process. Either way the audio is first resampled to
16 kHz with lhotse, as the training data was.
"""

import argparse
import sys
from pathlib import Path

from nnaqat.checkpoint import load_model_from_args
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.streaming import DEFAULT_CHUNK_FRAMES
from nnaqat.decode.wav_stream import stream_wav
from nnaqat.decode.search import add_search_arguments
from nnaqat.export.onnx import PRECISIONS, OnnxFiles
from nnaqat.export.sherpa import transcribe_with_sherpa


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wav", type=Path)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="a PyTorch checkpoint (.pt, or a .pack side-car)")
    model.add_argument("--onnx-dir", type=Path, help="a sherpa-onnx export (local/export_onnx.py)")
    parser.add_argument("--bpe-model", type=Path, help="with --checkpoint")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="with --onnx-dir")
    add_search_arguments(parser)
    parser.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES,
                        help="with --checkpoint (an export has its own)")
    return parser.parse_args()


def main() -> None:
    args = get_args()
    if not args.wav.is_file():
        raise SystemExit(f"{args.wav}: no such file")
    if args.checkpoint:
        if args.bpe_model is None:
            raise SystemExit("--checkpoint needs --bpe-model")
        model, _ = load_model_from_args(args)
        tokenizer = Tokenizer(args.bpe_model)
        partials = stream_wav(model, tokenizer, args.wav, args.method, args.beam_size, args.chunk_frames,
                              blank_penalty=args.blank_penalty)
    else:
        partials = transcribe_with_sherpa(OnnxFiles.in_dir(args.onnx_dir, args.precision), args.wav, args.method,
                                          args.beam_size, blank_penalty=args.blank_penalty)
    try:
        for p in partials:
            print(f"{args.wav.stem}: {p.text}" if p.final else f"{p.seconds:7.2f} s  {p.text}", flush=True)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
