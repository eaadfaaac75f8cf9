#!/usr/bin/env python3
"""Decodes cut manifests (with audio) with sherpa-onnx's OnlineRecognizer, as a deployed client would:

  local/sherpa_decode.py --onnx-dir exp/fp32/onnx --precision int8 --exp-dir exp/fp32 \\
      --cuts test=data/manifests/fsdd_cuts_test_raw.jsonl.gz

sherpa-onnx runs in a child process (it exits instead of raising on a bad model). Writes icefall's
result files to EXP_DIR/sherpa-onnx/METHOD/ (suffix PRECISION-chunk-K) and prints WER, RTF and the
model's size. Audio is resampled to 16 kHz with lhotse first, as the training features were; with
``--resample sherpa`` sherpa-onnx resamples it instead (its resampler leaves different energy
above the original Nyquist frequency, so an 8 kHz corpus gets features the model never saw).
"""

import argparse
import json
import logging
from pathlib import Path

from lhotse import load_manifest_lazy

from nnaqat.data.features import SAMPLING_RATE
from nnaqat.decode.wer import search_suffix, write_results
from nnaqat.decode.dataset import named_manifests
from nnaqat.decode.search import add_search_arguments
from nnaqat.export.onnx import PRECISIONS, OnnxFiles, read_metadata
from nnaqat.export.sherpa import decode_with_sherpa


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx-dir", type=Path, required=True)
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--exp-dir", type=Path, required=True)
    parser.add_argument("--cuts", nargs="+", required=True, help="NAME=manifest.jsonl.gz of cuts with audio")
    add_search_arguments(parser)
    parser.add_argument("--resample", default="lhotse", choices=["lhotse", "sherpa"])
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--max-streams", type=int, default=32)
    return parser.parse_args()


def main() -> None:
    args = get_args()
    files = OnnxFiles.in_dir(args.onnx_dir, args.precision)
    meta = read_metadata(files.encoder) if files.encoder.is_file() else {}
    suffix = f"{args.precision}-chunk-{meta.get('chunk_frames', meta.get('T', '?'))}"
    suffix += search_suffix(args.method, args.beam_size, args.blank_penalty)
    if args.resample == "sherpa":
        suffix += "-sherpa-resample"
    out_dir = args.exp_dir / "sherpa-onnx" / args.method
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, manifest in named_manifests(args.cuts).items():
        run = decode_with_sherpa(
            files, manifest, args.method, args.beam_size, args.num_threads, args.max_streams,
            sample_rate=SAMPLING_RATE if args.resample == "lhotse" else 0, blank_penalty=args.blank_penalty,
        )
        references = {c.id: c.supervisions[0].text.split() for c in load_manifest_lazy(manifest)}
        results = [(u.id, references[u.id], u.text.split()) for u in run.utterances]
        stats = write_results(out_dir, name, suffix, args.method, results)
        figures = {
            "wer": stats.wer, "rtf": run.rtf, "audio_seconds": run.audio_seconds, "model_bytes": files.total_bytes()
        }
        (out_dir / f"stats-{name}-{suffix}.json").write_text(json.dumps(figures, indent=1) + "\n")
        print(f"{name} sherpa-onnx {args.precision} {args.method} {suffix}: WER {stats.wer:.2f}% "
              f"({stats.errors}/{stats.words}), RTF {run.rtf:.4f}, model {files.total_bytes():,} bytes")


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
