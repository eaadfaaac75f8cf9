"""Decoding with sherpa-onnx's ``OnlineRecognizer``, safely.

sherpa-onnx ends the process (exit code 255) instead of raising when a model lacks what it
expects, so the models are checked here first (errors name the file), and the recognizer runs in
a child process (:mod:`nnaqat.export.sherpa_worker`) whose failure becomes a Python exception.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
from lhotse import CutSet, Recording

from nnaqat.decode.wav_stream import Partial
from nnaqat.export.onnx import OnnxFiles, read_metadata

WORKER = Path(__file__).with_name("sherpa_worker.py")  # run as a script: it needs none of nnaqat
REQUIRED_METADATA = {
    "encoder": ("model_type", "T", "decode_chunk_len", "num_encoder_layers", "d_model", "rnn_hidden_size"),
    "decoder": ("context_size", "vocab_size"),
}


def check_model_files(files: OnnxFiles) -> Dict[str, str]:
    """Checks the files sherpa-onnx will load; returns the encoder's metadata.

    Raises:
      FileNotFoundError / ValueError naming the offending file.
    """
    for path in (*files.models(), files.tokens):
        if not path.is_file():
            raise FileNotFoundError(f"sherpa-onnx model file not found: {path}")
    metadata = {}
    for part, path in (("encoder", files.encoder), ("decoder", files.decoder)):
        try:
            metadata[part] = read_metadata(path)
        except Exception as error:
            raise ValueError(f"{path}: not a readable ONNX model ({error})") from error
        missing = [k for k in REQUIRED_METADATA[part] if k not in metadata[part]]
        if missing:
            raise ValueError(f"{path}: metadata lacks {missing}, which sherpa-onnx's LSTM transducer needs")
    if metadata["encoder"]["model_type"] != "lstm":
        raise ValueError(f"{files.encoder}: model_type is {metadata['encoder']['model_type']!r}, expected 'lstm'")
    return metadata["encoder"]


def _worker_command(
    files: OnnxFiles, encoder_meta: Dict[str, str], method: str, beam: int, num_threads: int, sample_rate: int,
    blank_penalty: float,
) -> List[str]:
    return [
        sys.executable, str(WORKER),
        "--encoder", str(files.encoder), "--decoder", str(files.decoder), "--joiner", str(files.joiner),
        "--tokens", str(files.tokens),
        "--chunk-size", encoder_meta["T"], "--chunk-shift", encoder_meta["decode_chunk_len"],
        "--method", method, "--beam-size", str(beam), "--blank-penalty", str(blank_penalty),
        "--num-threads", str(num_threads), "--sample-rate", str(sample_rate),
    ]


def _failure(returncode: int, stderr: str, what: str, files: OnnxFiles) -> RuntimeError:
    tail = "\n".join(stderr.strip().splitlines()[-5:])
    return RuntimeError(
        f"sherpa-onnx exited with code {returncode} decoding {what} with {files.encoder.parent}:\n{tail}"
    )


@dataclass
class SherpaUtterance:
    """One utterance decoded by sherpa-onnx."""

    id: str
    tokens: List[int]  # token ids (sherpa-onnx drops <unk> from its results)
    text: str
    num_chunks: int
    chunk_features: Optional[np.ndarray] = None  # (num_chunks, T, F) the encoder received, if dumped


@dataclass
class SherpaRun:
    utterances: List[SherpaUtterance]
    decode_seconds: float  # time spent in the recognizer's decode calls
    audio_seconds: float  # audio decoded, without the appended silence
    tail_seconds: float  # silence appended to every utterance

    @property
    def rtf(self) -> float:
        return self.decode_seconds / max(self.audio_seconds, 1e-9)


def decode_with_sherpa(
    files: OnnxFiles,
    cuts: CutSet | Path | str,
    method: str = "greedy_search",
    beam: int = 4,
    num_threads: int = 1,
    max_streams: int = 32,
    sample_rate: int = 0,
    dump_features: bool = False,
    timeout: Optional[float] = None,
    blank_penalty: float = 0.0,
) -> SherpaRun:
    """Decodes every cut (audio, at its own sample rate unless ``sample_rate`` is given) with sherpa-onnx.

    Args:
      files: the exported model (see :func:`nnaqat.export.onnx.export_onnx`).
      cuts: cuts with audio, or the path of their manifest.
      max_streams: streams decoded together (sherpa-onnx's ``decode_streams``).
      sample_rate: resample the audio to this rate before sherpa-onnx sees it (0: sherpa-onnx resamples).
      dump_features: also return the feature frames of every chunk the encoder received.
      timeout: seconds before the child process is killed (None: no limit).
      blank_penalty: subtracted from the blank logit (sherpa-onnx's own option).
    Returns:
      The hypotheses and the time spent in the recognizer's decode calls (feature extraction
      happens as audio is accepted and is not counted, as in our PyTorch streaming RTF).
    Raises:
      RuntimeError: the sherpa-onnx process failed (its exit code and last error lines included).
    """
    encoder_meta = check_model_files(files)
    with tempfile.TemporaryDirectory(prefix="sherpa-") as tmp:
        if isinstance(cuts, CutSet):
            manifest = Path(tmp) / "cuts.jsonl.gz"
            cuts.to_file(manifest)
        else:
            manifest = Path(cuts)
        out = Path(tmp) / "results.jsonl"
        cmd = _worker_command(files, encoder_meta, method, beam, num_threads, sample_rate, blank_penalty) + [
            "--cuts", str(manifest), "--out", str(out), "--max-streams", str(max_streams),
        ] + (["--dump-features"] if dump_features else [])
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise _failure(done.returncode, done.stderr, str(manifest), files)
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        dumped = {}
        if dump_features:
            with np.load(f"{out}.npz") as arrays:
                dumped = dict(arrays)
    summary = records.pop()["summary"]
    utterances = [
        SherpaUtterance(r["id"], r["tokens"], r["text"], r["num_chunks"], dumped.get(r["id"])) for r in records
    ]
    return SherpaRun(utterances, summary["decode_seconds"], summary["audio_seconds"], summary["tail_seconds"])


def transcribe_with_sherpa(
    files: OnnxFiles,
    wav: Path | str,
    method: str = "greedy_search",
    beam: int = 4,
    sample_rate: int = 16000,
    blank_penalty: float = 0.0,
) -> Iterator[Partial]:
    """Streams one audio file through sherpa-onnx; yields each changed partial text, then the final one.

    ``sample_rate``: resample with lhotse to this rate first, as the training data was (0: let
    sherpa-onnx resample).
    """
    encoder_meta = check_model_files(files)
    try:
        Recording.from_file(wav)  # reads the header: unreadable audio is reported here, not by the child
    except Exception as error:
        raise ValueError(f"{wav}: unreadable audio ({error})") from error
    cmd = _worker_command(files, encoder_meta, method, beam, 1, sample_rate, blank_penalty) + ["--wav", str(wav)]
    # stderr to a file, not a pipe: a full pipe would block the child while we read stdout.
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True) as child:
            for line in child.stdout:
                if line.startswith("{"):
                    record = json.loads(line)
                    yield Partial(record["seconds"], record["text"], record["final"])
        if child.returncode != 0:
            errors.seek(0)
            raise _failure(child.returncode, errors.read(), str(wav), files)
