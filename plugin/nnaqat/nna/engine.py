"""The integer reference engine for a whole transducer: NumPy integer arithmetic only.

It runs an exported :class:`~nnaqat.nna.integer_model.IntegerModel` from normalised features to
token ids: one float step, the quantization of the front-end's output (``reference.quantize``,
as ONNX QuantizeLinear); then the encoder in streaming chunks with its LSTM states carried,
the stateless predictor, the joiner and greedy search, all in integers (the ``fp32_rne``
rounding mode's float32 products excepted, which define that mode). It imports no torch; the
float front-end (``FeatureNorm``) is the caller's, as on a device where it runs on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

from nnaqat.nna import reference as ref
from nnaqat.nna.integer_model import AddOpParams, ConvParams, IntegerModel, load_integer_model
from nnaqat.nna.lut import Lut
from nnaqat.nna.reference_lstm import IntState, initial_state, lstm_sequence
from nnaqat.nna.spec import NnaSpec


def conv_relu(windows: ArrayLike, conv: ConvParams, spec: NnaSpec) -> np.ndarray:
    """The predictor's grouped conv with fused ReLU: input windows ``(..., K, C)`` -> output codes
    ``(..., C)``."""
    acc, requantization = spec.accumulator, spec.requantization
    total = ref.grouped_accumulate(
        windows, conv.weight, conv.groups, acc.bits, acc.overflow, conv.x_zero_point, conv.bias
    )
    out = ref.requantize_output(
        total, conv.multiplier, conv.shift, conv.y_zero_point, spec.activations.bits,
        requantization.rounding, requantization.zero_point,
    )  # fmt: skip
    return np.maximum(out, conv.y_zero_point)  # y_zero_point is the code of 0.0


def add_tanh(
    a: ArrayLike, b: ArrayLike, add: AddOpParams, to_output: ref.FixedPointMultiplier, spec: NnaSpec, tanh: Lut
) -> np.ndarray:
    """The joiner's ``tanh(a + b)`` on projected codes (broadcasting): a saturating add into the gate
    format, the tanh table, a requantization to activation codes with zero point 0."""
    rounding = spec.requantization.rounding
    gate_bits, order = spec.lstm.gate.bits, spec.requantization.zero_point
    total = ref.add(a, add.a_zero_point, b, add.b_zero_point, add.fixed_point, add.out_zero_point, gate_bits, rounding)
    squashed = ref.lut_lookup(total, tanh)
    return ref.requantize_output(squashed, *to_output, 0, spec.activations.bits, rounding, order)


class EncoderStream:
    """One utterance's encoder, fed feature codes in pieces of any size.

    Frame stacking reads ``2f + 1`` frames every ``f``: an encoder frame is computed as soon as
    its last input frame arrives, and the LSTM states carry over, so any split of the input
    gives the whole-utterance output.
    """

    def __init__(self, engine: IntegerTransducer) -> None:
        self.engine = engine
        encoder = engine.model.encoder
        self.factor = encoder.subsampling_factor
        self.window = 2 * self.factor + 1
        self.num_features = encoder.subsampling.weight.shape[1] // self.window
        self.states: List[IntState] = [initial_state(1, layer) for layer in encoder.layers]
        self._pending = np.zeros((0, self.num_features), dtype=np.int64)  # not yet consumed

    def accept(self, codes: ArrayLike) -> np.ndarray:
        """Appends feature codes ``(n, F)``; returns the encoder output codes ``(m, d_model)``
        this completes (``m`` may be 0)."""
        self._pending = np.concatenate([self._pending, np.asarray(codes, dtype=np.int64)])
        frames = max(0, (len(self._pending) - self.window) // self.factor + 1)
        starts = self.factor * np.arange(frames)
        stacked = self._pending[starts[:, None] + np.arange(self.window)]  # (m, window, F), oldest first
        self._pending = self._pending[self.factor * frames :]
        return self.engine.encoder_frames(stacked.reshape(frames, self.window * self.num_features), self.states)


class GreedySearch:
    """Greedy search state of one utterance: at most one symbol per encoder frame.

    ``blank_penalty`` is subtracted from the blank's logit code before the argmax (the search
    runs on the CPU): a penalty of ``p`` in logits is ``p / logit_scale`` codes.
    """

    def __init__(self, engine: IntegerTransducer, blank_penalty: float = 0.0) -> None:
        self.engine = engine
        model = engine.model
        self.blank_penalty = blank_penalty
        self.context = [model.blank_id] * model.predictor.context_size
        self.decoder_out = engine.predict(self.context)  # after the initial blank
        self.tokens: List[int] = []

    def advance(self, encoder_out: np.ndarray) -> None:
        """Consumes encoder output codes ``(m, d_model)``."""
        blank = self.engine.model.blank_id
        for projected in self.engine.project_encoder(encoder_out):
            scores = self.engine.join(projected, self.decoder_out)
            if self.blank_penalty:
                scores = scores.astype(np.float64)
                scores[blank] -= self.blank_penalty
            token = int(np.argmax(scores))  # first maximum on ties
            if token != blank:
                self.tokens.append(token)
                self.context = self.context[1:] + [token]
                self.decoder_out = self.engine.predict(self.context)


class IntegerTransducer:
    """Runs an exported integer model (see the module docstring)."""

    def __init__(self, model: IntegerModel) -> None:
        self.model = model
        spec = model.spec
        self.rounding = spec.requantization.rounding
        self.zero_point_order = spec.requantization.zero_point
        self.bits = spec.activations.bits

    @classmethod
    def load(cls, path: Union[str, Path]) -> IntegerTransducer:
        return cls(load_integer_model(path))

    # ---- operators with the spec's formats ----
    def _linear(self, x: np.ndarray, params: ref.LinearParams) -> np.ndarray:
        acc = self.model.spec.accumulator
        return ref.linear(x, params, acc.bits, acc.overflow, self.bits, self.rounding, self.zero_point_order)

    def _add(self, a: np.ndarray, b: np.ndarray, op: AddOpParams, out_bits: int) -> np.ndarray:
        return ref.add(
            a, op.a_zero_point, b, op.b_zero_point, op.fixed_point, op.out_zero_point, out_bits, self.rounding
        )

    # ---- encoder ----
    def quantize_features(self, features: ArrayLike) -> np.ndarray:
        """Normalised features ``(T, F)`` (the float front-end's output) -> int64 codes."""
        encoder = self.model.encoder
        return ref.quantize(features, encoder.input_scale, encoder.input_zero_point, self.bits)

    def encoder_frames(self, stacked: np.ndarray, states: List[IntState]) -> np.ndarray:
        """Stacked input codes ``(m, (2f + 1) * F)`` -> encoder output codes ``(m, d_model)``,
        updating ``states`` (one ``(h, c)`` per layer, batch 1) in place."""
        encoder, spec = self.model.encoder, self.model.spec
        out = self._linear(stacked, encoder.subsampling)
        for i, (layer, residual) in enumerate(zip(encoder.layers, encoder.residuals)):
            y, states[i] = lstm_sequence(out[None], layer, spec, self.model.luts, states[i])
            out = self._add(out, y[0], residual, self.bits)
        return out

    def encoder_stream(self) -> EncoderStream:
        return EncoderStream(self)

    def encode(self, codes: ArrayLike) -> np.ndarray:
        """A whole utterance's feature codes ``(T, F)`` -> encoder output codes ``(T', d_model)``."""
        return self.encoder_stream().accept(codes)

    # ---- predictor and joiner ----
    def project_encoder(self, encoder_out: np.ndarray) -> np.ndarray:
        """``(..., d_model)`` -> ``(..., joiner_dim)`` codes."""
        return self._linear(encoder_out, self.model.joiner.encoder_proj)

    def predictor_output(self, context: Sequence[int]) -> np.ndarray:
        """The last ``context_size`` token ids -> predictor output codes ``(D,)``."""
        predictor, spec = self.model.predictor, self.model.spec
        if len(context) != predictor.context_size:
            raise ValueError(f"expected {predictor.context_size} context tokens, got {len(context)}")
        codes = ref.embedding_lookup(np.asarray(context), predictor.embedding)  # (context_size, D)
        if predictor.conv is None:
            return np.maximum(codes[-1], 0)  # ReLU; zero point 0
        return conv_relu(codes, predictor.conv, spec)

    def predict(self, context: Sequence[int]) -> np.ndarray:
        """The last ``context_size`` token ids -> projected decoder output codes ``(joiner_dim,)``."""
        return self._linear(self.predictor_output(context), self.model.joiner.decoder_proj)

    def join(self, encoder_proj: np.ndarray, decoder_proj: np.ndarray) -> np.ndarray:
        """Broadcasting joiner over projected codes ``(..., J)`` -> logit codes ``(..., V)``."""
        joiner, model = self.model.joiner, self.model
        activation = add_tanh(encoder_proj, decoder_proj, joiner.add, joiner.tanh_output, model.spec, model.luts.tanh)
        return self._linear(activation, joiner.output_linear)

    # ---- search ----
    def greedy_search(self, encoder_out: np.ndarray, blank_penalty: float = 0.0) -> List[int]:
        """Token ids of encoder output codes ``(T', d_model)`` (``blank_penalty`` in logit codes)."""
        search = GreedySearch(self, blank_penalty)
        search.advance(encoder_out)
        return search.tokens

    def decode(self, features: ArrayLike, chunk_frames: Optional[int] = None, blank_penalty: float = 0.0) -> List[int]:
        """Normalised features ``(T, F)`` -> token ids, streaming: the input arrives in chunks of
        ``chunk_frames`` encoder frames (``f * chunk_frames`` input frames; whole when None) and
        each chunk's encoder frames are searched before the next arrives (``blank_penalty`` in
        logit codes)."""
        codes = self.quantize_features(features)
        stream, search = self.encoder_stream(), GreedySearch(self, blank_penalty)
        step = len(codes) if chunk_frames is None else self.model.encoder.subsampling_factor * chunk_frames
        for start in range(0, len(codes), max(step, 1)):
            search.advance(stream.accept(codes[start : start + step]))
        return search.tokens

