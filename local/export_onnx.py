#!/usr/bin/env python3
"""Exports a model for sherpa-onnx (streaming LSTM transducer contract): fp32; for a
quantization-aware checkpoint also int8-qat (its codebook weights stored as int8 values and
scales, dequantized by ``DequantizeLinear``); and icefall's post-training int8 (ONNX Runtime
dynamic quantization) as the baseline:

  local/export_onnx.py --exp-dir exp/fp32 --epoch 8 --avg 2 --tokens data/lang_bpe_32/tokens.txt \\
      --out-dir exp/fp32/onnx --chunk-frames 2 --check-cuts data/fbank/fsdd_cuts_dev.jsonl.gz

Writes OUT_DIR/{encoder,decoder,joiner}.onnx, *.int8-qat.onnx, *.int8.onnx and tokens.txt. With --check-cuts, runs
PyTorch and ONNX Runtime side by side on real features, chunk by chunk with carried states,
prints the largest differences and writes them to OUT_DIR/parity.json; fp32 logits that differ
by more than --max-logit-diff make the export fail.
"""

import argparse
import json
from pathlib import Path

from lhotse import load_manifest_lazy

from nnaqat.checkpoint import add_model_arguments, load_model_from_args
from nnaqat.decode.streaming import DEFAULT_CHUNK_FRAMES, features_of
from nnaqat.export.onnx import count_ops, export_onnx, quantize_int8
from nnaqat.export.ort import OrtTransducer, parity


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--tokens", type=Path, required=True, help="the lang dir's tokens.txt")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES,
                        help="encoder frames per sherpa-onnx chunk")
    parser.add_argument("--no-int8", action="store_true", help="skip the post-training int8 files")
    parser.add_argument("--check-cuts", type=Path, help="manifest whose first --check-num cuts test the parity")
    parser.add_argument("--check-num", type=int, default=20)
    parser.add_argument("--max-logit-diff", type=float, default=1e-4)
    return parser.parse_args()


def main() -> None:
    args = get_args()
    model, _ = load_model_from_args(args)
    variants = {"fp32": export_onnx(model, args.tokens, args.out_dir, args.chunk_frames)}
    if getattr(model, "quantizer", None) is not None and model.quantizer.bits:
        variants["int8-qat"] = export_onnx(model, args.tokens, args.out_dir, args.chunk_frames, precision="int8-qat")
    if not args.no_int8:
        variants["int8"] = quantize_int8(variants["fp32"])
    for name, files in variants.items():
        quantized = {op: n for op, n in count_ops(files.encoder).items()
                     if op in ("MatMulInteger", "MatMul", "LSTM", "DequantizeLinear")}
        names = ", ".join(p.name for p in files.models())
        print(f"{name}: {files.total_bytes():,} bytes ({names}); encoder ops {quantized}")
    if args.check_cuts is None:
        return
    cuts = load_manifest_lazy(args.check_cuts).to_eager().subset(first=args.check_num)
    features = [features_of(c) for c in cuts]
    report = {}
    for name, files in variants.items():
        report[name] = parity(model, OrtTransducer(files), features).as_dict()
        r = report[name]
        print(f"{name} vs PyTorch on {len(features)} utterances: max |dlogit| {r['logit']:.3g}, |dencoder_out| "
              f"{r['encoder_out']:.3g}, |dstates| {r['states']:.3g}, |ddecoder_out| {r['decoder_out']:.3g}; "
              f"same argmax on {r['argmax_agree']}/{r['frames']} frames")
    (args.out_dir / "parity.json").write_text(json.dumps(report, indent=1) + "\n")
    if report["fp32"]["logit"] > args.max_logit_diff:
        diff = report["fp32"]["logit"]
        raise SystemExit(f"fp32 ONNX logits differ from PyTorch by {diff:.3g} > {args.max_logit_diff}")


if __name__ == "__main__":
    main()
