"""Child process that runs sherpa-onnx (``python sherpa_worker.py ...``).

Run only through :mod:`nnaqat.export.sherpa`: sherpa-onnx ends the whole process (exit code 255)
on a model it cannot use, so it must never run in the caller's process. Two modes:

``--cuts MANIFEST --out FILE``: decodes every cut, up to ``--max-streams`` streams together; writes
one JSON line per utterance (``id, tokens, symbols, text, num_chunks``), then one summary line
(``{"summary": {...}}``); with ``--dump-features``, also ``FILE.npz`` with the feature frames of
every chunk the encoder received (``(num_chunks, T, F)`` per utterance).

``--wav FILE``: streams one audio file in 0.1 s pieces and prints a JSON line to stdout whenever
the text changes (``{"seconds", "text", "final"}``), then the final result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import sherpa_onnx
from lhotse import Recording, load_manifest_lazy

FRAME_SHIFT = 0.01


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("encoder", "decoder", "joiner", "tokens"):
        parser.add_argument(f"--{name}", required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cuts", help="decode this cut manifest (needs --out)")
    mode.add_argument("--wav", help="stream this audio file, printing partial results")
    parser.add_argument("--out")
    parser.add_argument("--chunk-size", type=int, required=True, help="the encoder's T (frames per chunk)")
    parser.add_argument("--chunk-shift", type=int, required=True, help="the encoder's decode_chunk_len")
    parser.add_argument("--method", default="greedy_search")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--blank-penalty", type=float, default=0.0)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--max-streams", type=int, default=32)
    parser.add_argument("--sample-rate", type=int, default=0, help="resample the audio to this rate first (0: as is)")
    parser.add_argument("--dump-features", action="store_true")
    return parser.parse_args()


def make_recognizer(args: argparse.Namespace) -> sherpa_onnx.OnlineRecognizer:
    return sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=args.tokens, encoder=args.encoder, decoder=args.decoder, joiner=args.joiner,
        num_threads=args.num_threads, decoding_method=args.method, max_active_paths=args.beam_size,
        blank_penalty=args.blank_penalty,
    )


def tail_padding(args: argparse.Namespace, sample_rate: int) -> np.ndarray:
    """Silence to append: the last chunk is decoded only once T frames follow its start, so
    without it the end of the audio is never decoded (sherpa-onnx's examples do the same)."""
    return np.zeros(int(args.chunk_size * FRAME_SHIFT * sample_rate), np.float32)


def _result_text(recognizer: sherpa_onnx.OnlineRecognizer, stream: sherpa_onnx.OnlineStream) -> str:
    """The stream's text with single spaces (a repeat marker, a bare "▁", decodes to an extra one)."""
    return " ".join(recognizer.get_result(stream).split())


def decode_manifest(args: argparse.Namespace, recognizer: sherpa_onnx.OnlineRecognizer) -> None:
    symbol_ids = {}  # as sherpa-onnx reports tokens: sentencepiece's word mark shown as a space
    for line in Path(args.tokens).read_text(encoding="utf-8").splitlines():
        symbol, index = line.rsplit(" ", 1)
        symbol_ids[symbol.replace("\u2581", " ")] = int(index)
    cuts = iter(load_manifest_lazy(args.cuts))
    active: List[dict] = []
    features: Dict[str, np.ndarray] = {}
    decode_seconds, audio_seconds, exhausted = 0.0, 0.0, False
    with open(args.out, "w", encoding="utf-8") as out:
        while active or not exhausted:
            while not exhausted and len(active) < args.max_streams:
                cut = next(cuts, None)
                if cut is None:
                    exhausted = True
                    break
                if args.sample_rate:
                    cut = cut.resample(args.sample_rate)
                stream = recognizer.create_stream()
                stream.accept_waveform(cut.sampling_rate, cut.load_audio()[0].astype(np.float32))
                stream.accept_waveform(cut.sampling_rate, tail_padding(args, cut.sampling_rate))
                stream.input_finished()
                active.append({"id": cut.id, "stream": stream, "chunks": []})
                audio_seconds += cut.duration
            ready = [a for a in active if recognizer.is_ready(a["stream"])]
            for a in ready:
                # Frames are read before decoding: sherpa-onnx may drop them once consumed.
                frames = None
                if args.dump_features:
                    start = len(a["chunks"]) * args.chunk_shift
                    frames = np.asarray(a["stream"].get_frames(start, args.chunk_size), np.float32)
                a["chunks"].append(frames)
            if ready:
                start = time.perf_counter()
                recognizer.decode_streams([a["stream"] for a in ready])
                decode_seconds += time.perf_counter() - start
            for a in [a for a in active if not recognizer.is_ready(a["stream"])]:
                active.remove(a)
                symbols = recognizer.tokens(a["stream"])
                record = {
                    "id": a["id"], "tokens": [symbol_ids[s] for s in symbols], "symbols": symbols,
                    "text": _result_text(recognizer, a["stream"]), "num_chunks": len(a["chunks"]),
                }
                out.write(json.dumps(record) + "\n")
                if args.dump_features:
                    features[a["id"]] = np.stack(a["chunks"]).reshape(len(a["chunks"]), args.chunk_size, -1)
        summary = {"decode_seconds": decode_seconds, "audio_seconds": audio_seconds,
                   "tail_seconds": args.chunk_size * FRAME_SHIFT}
        out.write(json.dumps({"summary": summary}) + "\n")
    if args.dump_features:
        np.savez(f"{args.out}.npz", **features)


def transcribe_wav(args: argparse.Namespace, recognizer: sherpa_onnx.OnlineRecognizer) -> None:
    recording = Recording.from_file(args.wav)
    if args.sample_rate:
        recording = recording.resample(args.sample_rate)
    samples = recording.load_audio()[0].astype(np.float32)
    rate = recording.sampling_rate
    stream = recognizer.create_stream()
    piece = max(1, rate // 10)
    text = ""
    for start in range(0, len(samples) + piece, piece):
        if start < len(samples):
            stream.accept_waveform(rate, samples[start : start + piece])
        else:
            stream.accept_waveform(rate, tail_padding(args, rate))
            stream.input_finished()
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
        new_text = _result_text(recognizer, stream)
        if new_text != text:
            text = new_text
            seconds = min(start + piece, len(samples)) / rate
            print(json.dumps({"seconds": seconds, "text": text, "final": False}), flush=True)
    print(json.dumps({"seconds": len(samples) / rate, "text": text, "final": True}), flush=True)


def main() -> None:
    args = get_args()
    recognizer = make_recognizer(args)
    if args.wav:
        transcribe_wav(args, recognizer)
    else:
        decode_manifest(args, recognizer)


if __name__ == "__main__":
    main()
