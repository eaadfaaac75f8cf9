#!/usr/bin/env python3
"""Streaming decoding: the encoder chunk by chunk with its states carried, many streams batched.

  local/streaming_decode.py --exp-dir exp/fp32 --epoch 8 --avg 2 --bpe-model data/lang_bpe_32/bpe.model \\
      --method greedy_search --chunk-frames 2 --cuts test=data/fbank/fsdd_cuts_test.jsonl.gz \\
      --word-times test=data/manifests/fsdd_cuts_test_raw.jsonl.gz

Writes icefall's result files to EXP_DIR/streaming/METHOD/ (suffix ``...-chunk-K``) and prints the
real-time factor, the per-chunk compute time and the emission latency (word end -> word emitted;
definition in nnaqat/decode/latency.py). Word end times come from connected-digit MixedCuts: the
decoded cuts themselves when they are such, else the ``--word-times`` manifest of the same ids.
"""

import argparse
import json
import logging
from pathlib import Path

import torch
from lhotse import load_manifest_lazy

from nnaqat.checkpoint import add_model_arguments, load_model_from_args
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.latency import LatencyStats, stream_latencies, word_end_times
from nnaqat.decode.streaming import DEFAULT_CHUNK_FRAMES, decode_cuts_streaming
from nnaqat.decode.dataset import named_manifests
from nnaqat.decode.search import add_search_arguments
from nnaqat.decode.wer import search_suffix, write_results


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, exp_dir_required=True)
    parser.add_argument("--bpe-model", type=Path, required=True)
    add_search_arguments(parser)
    parser.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES, help="encoder frames per chunk")
    parser.add_argument("--max-streams", type=int, default=32, help="streams decoded together")
    parser.add_argument("--cuts", nargs="+", required=True, help="NAME=manifest.jsonl.gz (features or audio)")
    parser.add_argument("--word-times", nargs="*", default=[], help="NAME=manifest of MixedCuts giving word ends")
    parser.add_argument("--num-threads", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = get_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model, suffix = load_model_from_args(args)
    suffix += f"-chunk-{args.chunk_frames}" + search_suffix(args.method, args.beam_size, args.blank_penalty)
    tokenizer = Tokenizer(args.bpe_model)
    out_dir = args.exp_dir / "streaming" / args.method
    out_dir.mkdir(parents=True, exist_ok=True)
    word_times = named_manifests(args.word_times)

    for name, manifest in named_manifests(args.cuts).items():
        cuts = load_manifest_lazy(manifest).to_eager()
        run = decode_cuts_streaming(model, cuts, args.method, args.beam_size, args.chunk_frames, args.max_streams,
                                    args.blank_penalty)
        references = {c.id: c.supervisions[0].text.split() for c in cuts}
        results = [(s.id, references[s.id], tokenizer.decode(s.tokens).split()) for s in run.streams]
        stats = write_results(out_dir, name, suffix, args.method, results)

        timing_cuts = load_manifest_lazy(word_times[name]).to_eager() if name in word_times else cuts
        ends = {c.id: e for c in timing_cuts if c.id in references and (e := word_end_times(c)) is not None}
        latency = LatencyStats.of(stream_latencies(run.streams, tokenizer, references, ends))
        chunk_mean, chunk_p95 = run.chunk_time_stats()
        figures = {
            "wer": stats.wer, "rtf": run.rtf, "audio_seconds": run.audio_seconds,
            "chunk_ms_mean": 1e3 * chunk_mean, "chunk_ms_p95": 1e3 * chunk_p95,
            "streams_per_chunk_mean": sum(run.batch_sizes) / max(len(run.batch_sizes), 1),
            "latency_ms_mean": 1e3 * latency.mean, "latency_ms_p50": 1e3 * latency.p50,
            "latency_ms_p95": 1e3 * latency.p95, "latency_words": latency.count,
        }
        (out_dir / f"stats-{name}-{suffix}.json").write_text(json.dumps(figures, indent=1) + "\n")
        print(
            f"{name} {args.method} {suffix}: WER {stats.wer:.2f}% ({stats.errors}/{stats.words}), "
            f"RTF {run.rtf:.4f}, chunk compute {figures['chunk_ms_mean']:.2f} ms mean / "
            f"{figures['chunk_ms_p95']:.2f} ms p95 ({figures['streams_per_chunk_mean']:.1f} streams per chunk), "
            f"emission latency {figures['latency_ms_mean']:.0f} ms mean / {figures['latency_ms_p50']:.0f} ms median / "
            f"{figures['latency_ms_p95']:.0f} ms p95 over {latency.count} words"
        )
        if not ends:
            logging.warning("%s: no word end times (no MixedCuts; give --word-times %s=RAW_MANIFEST)", name, name)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
