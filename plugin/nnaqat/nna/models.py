"""NNA-emulating versions of the transducer's encoder, stateless predictor and additive joiner.

Each subclasses its float model (same constructor arguments plus the spec, same parameter names
and decoding interface) and replaces the layers that run on the NNA with emulated ones whose
quantization parameters are tied where one feeds another, so that what flows between them is
integer codes (held dequantized in floats). ``nna.convert.nna_`` builds them from a float model.

The encoder's ``FeatureNorm`` (its fixed normalisation of the log-mel features) stays float: it
is the CPU front-end that runs before the first quantization, as the feature extraction does.
The integer engine takes its output. The NNA encoder trains without dropout: with the float encoder's dropout
(each consumer re-quantizing its input) AAT did worse on unseen speakers (egs/fsdd/RESULTS.md).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnaqat.models.encoder import LstmEncoder, LstmState
from nnaqat.models.joiner import AdditiveJoiner
from nnaqat.models.predictor import StatelessPredictor
from nnaqat.nna import ops
from nnaqat.nna.layers import NnaAdd, NnaAddTanh, NnaEmbedding, NnaGroupedConv
from nnaqat.nna.linear import NnaLinear
from nnaqat.nna.lstm import NnaLstm
from nnaqat.nna.ranges import RangeSource, TiedRange
from nnaqat.nna.spec import NnaSpec


class NnaLstmEncoder(LstmEncoder):
    """``LstmEncoder`` with an emulated frame-stacking linear, integer LSTM layers and integer
    saturating residual adds; the float ``FeatureNorm`` front-end. No LSTM projection."""

    def __init__(self, spec: NnaSpec, **encoder_kwargs) -> None:
        super().__init__(**encoder_kwargs)
        if self.d_model != self.hidden_size:
            raise ValueError("the NNA encoder does not emulate LSTM projections (proj_size > 0)")
        self.spec = spec
        bits, hidden_bits = spec.activations.bits, spec.lstm.hidden_bits
        self.subsampling.out = NnaLinear.from_linear(self.subsampling.out, spec)
        self.layers = nn.ModuleList(NnaLstm.from_lstm(layer, spec) for layer in self.layers)
        residuals = []
        source = self.subsampling.out.output_observer
        for layer in self.layers:
            layer.input_observer = TiedRange(source)
            residuals.append(NnaAdd(source, bits, layer.hidden_observer, hidden_bits, spec))
            source = residuals[-1].output_observer
        self.residuals = nn.ModuleList(residuals)

    @property
    def output_range(self) -> RangeSource:
        """Scale and zero point of the encoder output codes."""
        return self.residuals[-1].output_observer

    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, state: Optional[LstmState] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, LstmState]:
        """As ``LstmEncoder.forward``: features ``(N, T, F)`` -> ``(out (N, T', d_model), out_lens,
        new_state)``, the output and state holding dequantized NNA codes."""
        features, lstm_state, front_state = self.front_end(x, x_lens, state)
        out, new_state = self.encode_normalised(features, lstm_state)
        return out, self.output_length(x_lens), self.join_state(new_state, front_state)

    def encode_normalised(
        self, features: torch.Tensor, state: Optional[LstmState] = None
    ) -> Tuple[torch.Tensor, LstmState]:
        """Everything after the float front-end: normalised ``(N, T, F)`` -> ``(out, new_state)``."""
        out = self.subsampling(features)
        new_h, new_c = [], []
        for i, (layer, residual) in enumerate(zip(self.layers, self.residuals)):
            layer_state = None if state is None else (state[0][i : i + 1], state[1][i : i + 1])
            y, (h, c) = layer(out, layer_state)
            out = residual(out, y)
            new_h.append(h)
            new_c.append(c)
        return out, (torch.cat(new_h), torch.cat(new_c))


class NnaStatelessPredictor(StatelessPredictor):
    """``StatelessPredictor`` with an integer embedding lookup and an integer grouped conv with
    fused ReLU (or a ReLU on the embedding codes when ``context_size`` is 1)."""

    def __init__(
        self, spec: NnaSpec, vocab_size: int, embedding_dim: int = 256, context_size: int = 2, blank_id: int = 0
    ) -> None:
        super().__init__(vocab_size, embedding_dim, context_size, blank_id)
        self.spec = spec
        self.embedding = NnaEmbedding.from_embedding(self.embedding, spec)
        if self.conv is not None:
            self.conv = NnaGroupedConv.from_conv(self.conv, self.embedding, spec)

    @property
    def output_range(self) -> RangeSource:
        """Scale and zero point of the predictor output codes."""
        return self.conv if self.conv is not None else self.embedding

    def forward_integers(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """``y (N, U)`` token ids -> output codes ``(N, U, D)`` (one position without ``need_pad``)."""
        codes = self.embedding.forward_integers(y.clamp_min(0))
        if self.conv is None:
            return codes.clamp_min(0)  # ReLU; the embedding's zero point is 0
        if need_pad:  # blanks before the start: code 0 is the zero embedding
            codes = F.pad(codes, (0, 0, self.context_size - 1, 0))
        return self.conv.forward_integers(codes.unfold(1, self.context_size, 1).transpose(2, 3))

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """As ``StatelessPredictor.forward``, holding dequantized NNA codes."""
        codes = self.forward_integers(y, need_pad)
        scale, zero_point = self.output_range.scale_and_zero_point()  # as calibrated by this call
        return ops.dequantize(codes, scale, zero_point)


class NnaAdditiveJoiner(AdditiveJoiner):
    """``AdditiveJoiner`` with emulated projections and output linear, and ``tanh(a + b)`` as an
    integer add into the gate format followed by the tanh table (``layers.NnaAddTanh``).

    Its projections read the encoder and predictor outputs with their own calibrated ranges
    until :meth:`connect` ties them to the producers' (``nna_`` does).
    """

    def __init__(self, spec: NnaSpec, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int) -> None:
        super().__init__(encoder_dim, decoder_dim, joiner_dim, vocab_size)
        self.spec = spec
        self.encoder_proj = NnaLinear.from_linear(self.encoder_proj, spec)
        self.decoder_proj = NnaLinear.from_linear(self.decoder_proj, spec)
        self.output_linear = NnaLinear.from_linear(self.output_linear, spec)
        self.activation = NnaAddTanh(self.encoder_proj.output_observer, self.decoder_proj.output_observer, spec)
        self.output_linear.input_observer = TiedRange(self.activation.output_range)

    def connect(self, encoder_output: RangeSource, predictor_output: RangeSource) -> None:
        """Reads the encoder and predictor outputs with their producers' scales and zero points."""
        self.encoder_proj.input_observer = TiedRange(encoder_output)
        self.decoder_proj.input_observer = TiedRange(predictor_output)

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor, project_input: bool = True) -> torch.Tensor:
        """As ``AdditiveJoiner.forward``: ``(..., E)``, ``(..., D)`` -> logits ``(..., V)``
        holding dequantized NNA codes."""
        if project_input:
            encoder_out = self.encoder_proj(encoder_out)
            decoder_out = self.decoder_proj(decoder_out)
        if self.activation.cpu_fallback is None and self.output_linear.cpu_fallback is None:
            # The table's output codes are the output linear's input codes (its input range is
            # tied to the table's): no dequantize-quantize pass over the joiner's largest tensor.
            return self.output_linear.forward_from_codes(self.activation.forward_codes(encoder_out, decoder_out))
        return self.output_linear(self.activation(encoder_out, decoder_out))
