"""Streams one audio file through a PyTorch model as if it arrived live, with partial results.

The audio (any sample rate) is resampled to 16 kHz as the training data was (lhotse), then fed in
pieces to kaldi-native-fbank's online fbank (the extractor sherpa-onnx uses, configured as
:func:`nnaqat.data.features.fbank_extractor`), whose frames feed a :class:`Stream` chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import kaldi_native_fbank as knf
import numpy as np
import torch
from lhotse import Recording

from nnaqat.data.features import HIGH_FREQ, LOW_FREQ, NUM_MEL_BINS, SAMPLING_RATE
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.streaming import DEFAULT_CHUNK_FRAMES, StreamingDecoder
from nnaqat.models.transducer import Transducer


def online_fbank() -> knf.OnlineFbank:
    """kaldi-native-fbank with the recipe's feature settings."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLING_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = NUM_MEL_BINS
    opts.mel_opts.low_freq = LOW_FREQ
    opts.mel_opts.high_freq = HIGH_FREQ
    return knf.OnlineFbank(opts)


def load_audio_16k(path: Path | str) -> np.ndarray:
    """First channel of an audio file, resampled to 16 kHz: ``(samples,)`` float32 in [-1, 1]."""
    try:
        recording = Recording.from_file(path)
        return recording.resample(SAMPLING_RATE).load_audio()[0].astype(np.float32)
    except Exception as error:
        raise ValueError(f"{path}: unreadable audio ({error})") from error


@dataclass
class Partial:
    """A result while streaming: the text so far at an audio position."""

    seconds: float  # audio consumed so far
    text: str
    final: bool


def stream_wav(
    model: Transducer,
    tokenizer: Tokenizer,
    path: Path | str,
    method: str = "greedy_search",
    beam: int = 4,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    piece_seconds: float = 0.1,
    blank_penalty: float = 0.0,
) -> Iterator[Partial]:
    """Yields a :class:`Partial` whenever the text changes, then the final result."""
    samples = load_audio_16k(path)
    decoder = StreamingDecoder(model, method, beam, chunk_frames, blank_penalty)
    stream = decoder.create_stream(Path(path).stem)
    fbank = online_fbank()
    piece = max(1, int(piece_seconds * SAMPLING_RATE))
    taken, text = 0, ""
    for start in range(0, len(samples) + piece, piece):  # one extra round flushes the last frames
        if start < len(samples):
            fbank.accept_waveform(SAMPLING_RATE, samples[start : start + piece].tolist())
        else:
            fbank.input_finished()
        ready = fbank.num_frames_ready
        if ready > taken:
            stream.accept_features(torch.from_numpy(np.stack([fbank.get_frame(i) for i in range(taken, ready)])))
            taken = ready
        if start >= len(samples):
            stream.input_finished()
        while stream.ready():
            decoder.decode_chunk([stream])
        new_text = tokenizer.decode(decoder.result(stream)[0])
        if new_text != text:
            text = new_text
            yield Partial(min(start + piece, len(samples)) / SAMPLING_RATE, text, final=False)
    yield Partial(len(samples) / SAMPLING_RATE, text, final=True)
