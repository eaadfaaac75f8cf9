"""Streaming decoding: the encoder chunk by chunk with its LSTM states carried, many streams batched.

A chunk is ``chunk_frames`` (k) encoder frames. Frame-stacking subsampling by ``f`` builds encoder
frame j from input frames ``f*j .. f*j + 2f``, so a chunk reads ``T = f*k + f + 1`` input frames
and the next one starts ``f*k`` frames later (consecutive chunks share ``f + 1`` frames). These are
sherpa-onnx's ``T`` and ``decode_chunk_len`` for the exported encoder. The encoder is causal, so
the streamed encoder output, and with it every hypothesis, equals the whole-utterance one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch

from nnaqat.data.features import FRAME_LENGTH, FRAME_SHIFT, SAMPLING_RATE, fbank_extractor
from nnaqat.decode.search import make_search
from nnaqat.models.encoder import LstmState
from nnaqat.models.transducer import Transducer

DEFAULT_CHUNK_FRAMES = 2  # encoder frames per chunk: 80 ms of audio with 4x frame stacking


@dataclass(frozen=True)
class ChunkGeometry:
    """Input frames read (``size``) and advanced (``shift``) per chunk of ``chunk_frames`` encoder frames."""

    factor: int  # subsampling factor f
    chunk_frames: int  # encoder frames per chunk k

    def __post_init__(self) -> None:
        if self.factor < 1 or self.chunk_frames < 1:
            raise ValueError(f"need factor >= 1 and chunk_frames >= 1, got {self.factor} and {self.chunk_frames}")

    @classmethod
    def of(cls, model: Transducer, chunk_frames: int) -> "ChunkGeometry":
        return cls(model.encoder.subsampling.factor, chunk_frames)

    @property
    def size(self) -> int:
        """``T = f*k + f + 1``."""
        return self.factor * (self.chunk_frames + 1) + 1

    @property
    def shift(self) -> int:
        """``decode_chunk_len = f*k``."""
        return self.factor * self.chunk_frames

    def output_frames(self, available: int) -> int:
        """Encoder frames a chunk makes from ``available`` input frames (at most ``chunk_frames``)."""
        return max(0, min(self.chunk_frames, (available - 2 * self.factor - 1) // self.factor + 1))


class Chunk(NamedTuple):
    """One chunk taken from a stream."""

    features: torch.Tensor  # (T, F), zero-padded when the input ends inside the chunk
    valid: int  # encoder frames it makes (chunk_frames, or fewer at the end)
    input_end: int  # input frames read up to the end of this chunk


@dataclass
class ChunkRecord:
    """When one chunk of a stream was decoded."""

    input_end: int  # input frames read up to the end of this chunk
    compute_seconds: float  # wall time of the (batched) encoder + search call


class Stream:
    """One utterance being decoded: its unread features, encoder state, search state and history."""

    def __init__(self, stream_id: str, geometry: ChunkGeometry, encoder_state: LstmState, search_state: Any) -> None:
        self.id = stream_id
        self.geometry = geometry
        self.encoder_state = encoder_state  # ((L, 1, d_model), (L, 1, hidden))
        self.search_state = search_state
        self.encoder_frames = 0  # encoder frames decoded so far
        self.chunks: List[ChunkRecord] = []
        self._pending: List[torch.Tensor] = []  # features not yet read by a chunk, in order
        self._start = 0  # input frame index of the first pending frame
        self._input_done = False

    def accept_features(self, frames: torch.Tensor) -> None:
        """Appends feature frames ``(n, F)``."""
        if self._input_done:
            raise RuntimeError(f"stream {self.id}: features after input_finished()")
        if frames.dim() != 2:
            raise ValueError(f"stream {self.id}: expected features (n, F), got shape {tuple(frames.shape)}")
        self._pending.append(frames)

    def input_finished(self) -> None:
        """No more features: the last, shorter chunk may now be decoded."""
        self._input_done = True

    @property
    def num_pending(self) -> int:
        return sum(f.size(0) for f in self._pending)

    def ready(self) -> bool:
        """A full chunk is available, or the input is finished and its rest makes encoder frames."""
        available = self.num_pending
        return available >= self.geometry.size or (self._input_done and self.geometry.output_frames(available) > 0)

    @property
    def done(self) -> bool:
        return self._input_done and not self.ready()

    def pop_chunk(self) -> Chunk:
        """Takes the next chunk and drops the frames no later chunk reads."""
        g = self.geometry
        pending = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
        features = pending[: g.size]
        chunk = Chunk(
            torch.nn.functional.pad(features, (0, 0, 0, g.size - features.size(0))),
            g.output_frames(features.size(0)),
            self._start + features.size(0),
        )
        rest = pending[g.shift :]
        self._pending = [rest] if rest.size(0) else []
        self._start += g.shift
        return chunk


class StreamingDecoder:
    """Creates streams and decodes one chunk of many ready streams in one batch."""

    def __init__(
        self,
        model: Transducer,
        method: str = "greedy_search",
        beam: int = 4,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        blank_penalty: float = 0.0,
    ) -> None:
        self.model = model.eval()
        self.geometry = ChunkGeometry.of(model, chunk_frames)
        self.search = make_search(model, method, beam, blank_penalty)

    def create_stream(self, stream_id: str) -> Stream:
        """A new utterance's stream: zero encoder state and an empty hypothesis."""
        h, c = self.model.encoder.initial_state(1)
        device = next(self.model.parameters()).device
        return Stream(stream_id, self.geometry, (h.to(device), c.to(device)), self.search.initial())

    @torch.no_grad()
    def decode_chunk(self, streams: Sequence[Stream]) -> float:
        """Decodes the next chunk of every stream (each must be ready); returns the compute seconds."""
        not_ready = [s.id for s in streams if not s.ready()]
        if not_ready:
            raise ValueError(f"streams not ready for a chunk: {not_ready}")
        if not streams:
            return 0.0
        start = time.perf_counter()
        device = next(self.model.parameters()).device
        chunks = [s.pop_chunk() for s in streams]
        x = torch.stack([c.features for c in chunks]).to(device)
        valid = torch.tensor([c.valid for c in chunks], device=device)
        state = (
            torch.cat([s.encoder_state[0] for s in streams], dim=1),
            torch.cat([s.encoder_state[1] for s in streams], dim=1),
        )
        x_lens = torch.full((len(streams),), x.size(1), dtype=torch.int64, device=device)
        out, _, (h, c) = self.model.encoder(x, x_lens, state)
        encoder_out = self.model.joiner.encoder_proj(out)
        self.search.advance([s.search_state for s in streams], encoder_out, valid, [s.encoder_frames for s in streams])
        for i, s in enumerate(streams):
            # A stream's state after a padded last chunk is never used again.
            s.encoder_state = (h[:, i : i + 1], c[:, i : i + 1])
            s.encoder_frames += int(valid[i])
        elapsed = time.perf_counter() - start
        for s, c in zip(streams, chunks):
            s.chunks.append(ChunkRecord(c.input_end, elapsed))
        return elapsed

    def result(self, stream: Stream) -> Tuple[List[int], List[int]]:
        """Best ``(tokens, emission encoder frames)`` so far (partial until the stream is done)."""
        return self.search.best(stream.search_state)

    def emission_times(self, stream: Stream, frames: Sequence[int], duration: float) -> List[float]:
        """Wall-clock emission time of tokens emitted on encoder ``frames``, in seconds from the audio start.

        A token is out once its chunk's audio has arrived — the end of the analysis window of the
        chunk's last input frame (at most the utterance's end) — and the chunk has been computed.
        """
        k = self.geometry.chunk_frames
        times = []
        for frame in frames:
            chunk = stream.chunks[frame // k]
            audio_end = min((chunk.input_end - 1) * FRAME_SHIFT + (FRAME_SHIFT + FRAME_LENGTH) / 2, duration)
            times.append(audio_end + chunk.compute_seconds)
        return times


@dataclass
class DecodedStream:
    """A finished stream: its hypothesis and when each token came out."""

    id: str
    tokens: List[int]
    emission_times: List[float]  # seconds from the audio start, per token
    num_chunks: int


@dataclass
class StreamingRun:
    """Everything a streaming decode of a set of utterances measured."""

    streams: List[DecodedStream] = field(default_factory=list)
    chunk_seconds: List[float] = field(default_factory=list)  # per batched chunk call
    batch_sizes: List[int] = field(default_factory=list)  # streams per batched chunk call
    audio_seconds: float = 0.0

    @property
    def compute_seconds(self) -> float:
        return float(sum(self.chunk_seconds))

    @property
    def rtf(self) -> float:
        """Real-time factor: encoder + search compute time over audio time (features excluded)."""
        return self.compute_seconds / max(self.audio_seconds, 1e-9)

    def chunk_time_stats(self) -> Tuple[float, float]:
        """Mean and 95th percentile of the per-chunk compute seconds."""
        if not self.chunk_seconds:
            return float("nan"), float("nan")
        times = np.asarray(self.chunk_seconds)
        return float(times.mean()), float(np.percentile(times, 95))


def decode_streams(
    decoder: StreamingDecoder,
    utterances: Iterable[Tuple[str, torch.Tensor, float]],
    max_streams: int = 32,
) -> StreamingRun:
    """Decodes ``(id, features (T, F), duration seconds)`` utterances, up to ``max_streams`` at a time.

    Streams join as others finish, so one batch holds streams at different positions of
    utterances of different lengths, as on a server. Each utterance's features are all
    available at once: the latencies are computed from the audio time at which each chunk
    would have arrived (see :meth:`StreamingDecoder.emission_times`).
    """
    run = StreamingRun()
    pending = iter(utterances)
    active: List[Tuple[Stream, float]] = []
    exhausted = False
    while active or not exhausted:
        while not exhausted and len(active) < max_streams:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            stream_id, features, duration = item
            stream = decoder.create_stream(stream_id)
            stream.accept_features(features)
            stream.input_finished()
            if stream.done:
                logging.warning("%s: %d frames, too short for one encoder frame", stream_id, features.size(0))
            active.append((stream, duration))
            run.audio_seconds += duration
        ready = [s for s, _ in active if s.ready()]
        if ready:
            run.chunk_seconds.append(decoder.decode_chunk(ready))
            run.batch_sizes.append(len(ready))
        still_active = []
        for stream, duration in active:
            if not stream.done:
                still_active.append((stream, duration))
                continue
            tokens, frames = decoder.result(stream)
            times = decoder.emission_times(stream, frames, duration)
            run.streams.append(DecodedStream(stream.id, tokens, times, len(stream.chunks)))
        active = still_active
    return run


def features_of(cut: Any) -> torch.Tensor:
    """A cut's stored features, or fbank computed from its audio (resampled to 16 kHz): ``(T, F)``."""
    try:
        if cut.has_features:
            return torch.from_numpy(cut.load_features())
        return torch.from_numpy(cut.resample(SAMPLING_RATE).compute_features(fbank_extractor()))
    except Exception as error:
        raise ValueError(f"cut {cut.id}: cannot load or compute features ({error})") from error


def decode_cuts_streaming(
    model: Transducer,
    cuts: Iterable[Any],
    method: str = "greedy_search",
    beam: int = 4,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    max_streams: int = 32,
    blank_penalty: float = 0.0,
) -> StreamingRun:
    """Streams every cut (stored features, or audio featurised per utterance) through the model."""
    decoder = StreamingDecoder(model, method, beam, chunk_frames, blank_penalty)
    return decode_streams(decoder, ((c.id, features_of(c), c.duration) for c in cuts), max_streams)
