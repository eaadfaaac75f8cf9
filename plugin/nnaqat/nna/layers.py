"""Emulated NNA ops between the linear and LSTM layers of a transducer: the residual add, the
integer embedding, the predictor's grouped convolution and the joiner's add + tanh.

Each takes float inputs that hold dequantized codes of a producer (read back exactly through a
``TiedRange``) and returns floats that hold its own dequantized output codes; ``integer_params``
exports what the reference engine needs (``integer_model``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnaqat import _kernels
from nnaqat.nna import ops
from nnaqat.nna import reference as ref
from nnaqat.nna.integer_model import AddOpParams, ConvParams
from nnaqat.nna.linear import (
    RangeObserver,
    fixed_point_multipliers,
    quantize_bias,
    quantize_weight,
    symmetric_weight_scale,
)
from nnaqat.nna.lut import spec_lut
from nnaqat.nna.ranges import FixedRange, RangeSource, TiedRange
from nnaqat.nna.spec import NnaSpec, WeightFormat

if TYPE_CHECKING:
    from nnaqat.nna.placement import CpuFallback

# Fractional bits each input keeps before the rescale of an add: (a - z_a) << shift stays
# below 2**28 for inputs of up to 28 - shift bits (TFLite keeps 20 for int8).
ADD_HEADROOM_BITS = 28


# Two-input ops on inputs of up to this many bits are evaluated through a table of every input pair.
MAX_PAIR_TABLE_BITS = 8


def add_left_shift(input_bits: int) -> int:
    return ADD_HEADROOM_BITS - input_bits


def _quantize_with(source: nn.Module, x: torch.Tensor, bits: int) -> Tuple[torch.Tensor, int]:
    """Codes of ``x`` under ``source``'s parameters, and the zero point."""
    scale, zero_point = source.scale_and_zero_point()
    return ops.quantize(x, scale, zero_point, bits), zero_point


class NnaAdd(nn.Module):
    """Saturating add of two quantized tensors with different scales (``reference.add``), into a
    calibrated output range: the encoder's residual connections."""

    def __init__(self, a: RangeSource, a_bits: int, b: RangeSource, b_bits: int, spec: NnaSpec = NnaSpec()) -> None:
        super().__init__()
        self.spec = spec
        self.a_bits, self.b_bits = a_bits, b_bits
        self.a_range, self.b_range = TiedRange(a), TiedRange(b)
        self.output_observer = RangeObserver(spec.activations.bits)
        self.cpu_fallback: Optional[CpuFallback] = None  # set by placement.place_

    def _constants(self) -> AddOpParams:
        a_scale, a_zero_point = self.a_range.scale_and_zero_point()
        b_scale, b_zero_point = self.b_range.scale_and_zero_point()
        out_scale, out_zero_point = self.output_observer.scale_and_zero_point()
        fixed_point = ref.add_params(
            float(a_scale), float(b_scale), float(out_scale), add_left_shift(max(self.a_bits, self.b_bits))
        )
        return AddOpParams(fixed_point, a_zero_point, b_zero_point, out_zero_point)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Broadcasting ``a + b`` of dequantized codes, as the dequantized NNA output (or the
        float sum, if placed on the CPU)."""
        if self.cpu_fallback is not None:
            return self.cpu_fallback.output(a + b, self.output_observer, self.spec.activations.bits)
        a_q, _ = _quantize_with(self.a_range, a, self.a_bits)
        b_q, _ = _quantize_with(self.b_range, b, self.b_bits)
        if self.output_observer.observing:
            self.output_observer.observe(a + b)
        k = self._constants()
        out_q = ops.add(
            a_q, k.a_zero_point, b_q, k.b_zero_point, k.fixed_point, k.out_zero_point,
            self.spec.activations.bits, self.spec.requantization.rounding,
        )  # fmt: skip
        out_scale, _ = self.output_observer.scale_and_zero_point()
        return ops.dequantize(out_q, out_scale, k.out_zero_point)

    def freeze_calibration(self) -> None:
        self.output_observer.freeze()

    @torch.no_grad()
    def integer_params(self) -> AddOpParams:
        return self._constants()


class NnaEmbedding(nn.Module):
    """Integer embedding lookup: a symmetric per-tensor table (one scale, so that every lookup
    has the same output scale), zero point 0; ``nn.Embedding``'s parameter and padding row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int], spec: NnaSpec) -> None:
        super().__init__()
        self.spec = spec
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim))
        self.table_format = WeightFormat(spec.weights.bits, "per_tensor")

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, spec: NnaSpec) -> NnaEmbedding:
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, spec)
        with torch.no_grad():
            layer.weight.copy_(embedding.weight)
        return layer

    def scale_and_zero_point(self) -> Tuple[torch.Tensor, int]:
        """Of the looked-up codes: the table's scale and zero point 0."""
        return symmetric_weight_scale(self.weight, self.table_format)[0], 0

    def table(self) -> torch.Tensor:
        """Integer-valued ``(V, D)`` table (clipped STE to the weights)."""
        scale = symmetric_weight_scale(self.weight, self.table_format)
        return quantize_weight(self.weight, scale, self.table_format.bits)

    def forward_integers(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids (...)`` int64 -> codes ``(..., D)``; the padding row gets no gradient."""
        return F.embedding(ids, self.table(), padding_idx=self.padding_idx)

    @torch.no_grad()
    def integer_params(self) -> np.ndarray:
        """The table's codes ``(V, D)`` int64, for the integer engine."""
        return self.table().long().numpy()


class NnaGroupedConv(nn.Module):
    """A causal grouped ``Conv1d`` over integer codes (no padding: the caller pads) with ReLU fused
    into the output clamp; per-output-channel int8 weights, ``nn.Conv1d``'s parameters.

    The emulation runs it as one exact integer matmul with the block-diagonal expansion of the
    kernel; the reference engine as a grouped sum (``reference.grouped_accumulate``).
    """

    def __init__(
        self, channels: int, kernel_size: int, groups: int, bias: bool, source: RangeSource, spec: NnaSpec
    ) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        self.spec = spec
        self.channels, self.kernel_size, self.groups = channels, kernel_size, groups
        self.weight = nn.Parameter(torch.randn(channels, channels // groups, kernel_size) * 0.1)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.input_range = TiedRange(source)
        self.output_observer = RangeObserver(spec.activations.bits)

    @classmethod
    def from_conv(cls, conv: nn.Conv1d, source: RangeSource, spec: NnaSpec) -> NnaGroupedConv:
        square = conv.in_channels == conv.out_channels
        if not square or conv.stride != (1,) or conv.dilation != (1,) or conv.padding != (0,):
            raise ValueError(f"only square, stride-1, undilated, unpadded convolutions: {conv}")
        layer = cls(conv.out_channels, conv.kernel_size[0], conv.groups, conv.bias is not None, source, spec)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def _block_diagonal(self, w_q: torch.Tensor) -> torch.Tensor:
        """``(C, C/G, K)`` kernel -> dense ``(C, K * C)`` matrix over flattened ``(K, C)`` windows,
        zero outside each output channel's group."""
        c, c_group, k = w_q.shape
        columns = (torch.arange(c) // (c // self.groups) * c_group)[:, None, None] + torch.arange(c_group)
        dense = w_q.new_zeros(c, k, c)
        return dense.scatter(2, columns.expand(c, k, c_group), w_q.transpose(1, 2)).reshape(c, k * c)

    def _integers(self):
        x_scale, x_zero_point = self.input_range.scale_and_zero_point()
        w_scale = symmetric_weight_scale(self.weight, self.spec.weights)
        w_q = quantize_weight(self.weight, w_scale, self.spec.weights.bits)
        bias = None if self.bias is None else quantize_bias(self.bias, x_scale, w_scale, self.spec.accumulator.bits)
        return x_scale, x_zero_point, w_scale, w_q, bias

    def forward_integers(self, windows: torch.Tensor) -> torch.Tensor:
        """``windows (..., K, C)`` input codes -> ReLU'd output codes ``(..., C)``, observing the
        (ReLU'd) output range in training."""
        spec = self.spec
        x_scale, x_zero_point, w_scale, w_q, bias = self._integers()
        acc = ops.accumulate(
            windows.flatten(-2), self._block_diagonal(w_q), spec.accumulator.bits, spec.accumulator.overflow,
            x_zero_point, bias,
        )  # fmt: skip
        self.output_observer.observe((acc.detach() * (x_scale.double() * w_scale.double())).clamp_min(0))
        y_scale, y_zero_point = self.output_observer.scale_and_zero_point()
        multiplier, shift = fixed_point_multipliers(x_scale.double() * w_scale.double() / y_scale.double())
        y_q = ops.requantize_output(
            acc, multiplier, shift, y_zero_point, spec.activations.bits,
            spec.requantization.rounding, spec.requantization.zero_point,
        )  # fmt: skip
        return y_q.clamp_min(y_zero_point)  # ReLU: y_zero_point is the code of 0.0

    def scale_and_zero_point(self) -> Tuple[torch.Tensor, int]:
        return self.output_observer.scale_and_zero_point()

    def freeze_calibration(self) -> None:
        self.output_observer.freeze()

    @torch.no_grad()
    def integer_params(self) -> ConvParams:
        _, x_zero_point, w_scale, w_q, bias = self._integers()
        x_scale, _ = self.input_range.scale_and_zero_point()
        y_scale, y_zero_point = self.output_observer.scale_and_zero_point()
        multiplier, shift = fixed_point_multipliers(x_scale.double() * w_scale.double() / y_scale.double())
        bias = torch.zeros(self.channels) if bias is None else bias
        return ConvParams(
            w_q.long().numpy(), bias.long().numpy(), self.groups, x_zero_point,
            multiplier.numpy(), shift.numpy(), y_zero_point,
        )  # fmt: skip


class NnaAddTanh(nn.Module):
    """The joiner's ``tanh(a + b)``: a saturating add of the two projections straight into the
    gate format (``Q3.12`` by default, zero point 0), the LSTM's tanh table, and a requantization
    of its ``Q0.n`` output to activation codes with the fixed symmetric scale ``1 / (2**(bits - 1) - 1)``
    (tanh's whole range [-1, 1] fits: the output never clamps, and its gradient is tanh's)."""

    def __init__(self, a: RangeSource, b: RangeSource, spec: NnaSpec) -> None:
        super().__init__()
        self.spec = spec
        self.a_range, self.b_range = TiedRange(a), TiedRange(b)
        self.tanh = spec_lut(spec, "tanh")
        self.output_range = FixedRange(1.0 / ref.int_range(spec.activations.bits)[1])
        self._pair_cache: Optional[Tuple[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None
        self.cpu_fallback: Optional[CpuFallback] = None  # set by placement.place_

    def _constants(self) -> Tuple[AddOpParams, ref.FixedPointMultiplier]:
        gate = self.spec.lstm.gate
        a_scale, a_zero_point = self.a_range.scale_and_zero_point()
        b_scale, b_zero_point = self.b_range.scale_and_zero_point()
        bits = self.spec.activations.bits
        fixed_point = ref.add_params(float(a_scale), float(b_scale), 2.0**-gate.frac_bits, add_left_shift(bits))
        out_scale = float(self.output_range.scale)
        to_output = ref.quantize_multiplier(2.0**-self.spec.lstm.nonlinearity.frac_bits / out_scale)
        return AddOpParams(fixed_point, a_zero_point, b_zero_point, 0), to_output

    def integer_op(self, a_q: torch.Tensor, b_q: torch.Tensor) -> torch.Tensor:
        """Output codes of the integer op for input codes ``a_q``, ``b_q`` (broadcasting), with
        the ops' straight-through gradients."""
        spec = self.spec
        rounding = spec.requantization.rounding
        add, to_output = self._constants()
        total = ops.add(
            a_q, add.a_zero_point, b_q, add.b_zero_point, add.fixed_point, add.out_zero_point,
            spec.lstm.gate.bits, rounding,
        )  # fmt: skip
        squashed = ops.lut_lookup(total, self.tanh)
        return ops.requantize_output(squashed, *to_output, 0, spec.activations.bits, rounding, spec.requantization.zero_point)

    def _pair_tables(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The op and its two partial derivatives at every pair of input codes, float32
        ``(2**bits, 2**bits)`` each, indexed by ``(a_q - low, b_q - low)``: with int8 inputs the
        joiner's whole lattice is then three gathers (it is the step's largest tensor). Built
        again only when the op's integer constants change (calibration), not per call: greedy
        search calls the joiner once per frame."""
        constants = self._constants()
        if self._pair_cache is not None and self._pair_cache[0] == constants:
            return self._pair_cache[1]
        low, high = ref.int_range(self.spec.activations.bits)
        codes = torch.arange(low, high + 1, dtype=torch.float32)
        a = codes[:, None].expand(codes.numel(), codes.numel()).clone().requires_grad_()
        b = codes[None, :].expand(codes.numel(), codes.numel()).clone().requires_grad_()
        with torch.enable_grad():
            out = self.integer_op(a, b)
            grad_a, grad_b = torch.autograd.grad(out.sum(), (a, b))  # each output depends on its own pair only
        self._pair_cache = (constants, (out.detach(), grad_a, grad_b))
        return self._pair_cache[1]

    def forward_codes(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Broadcasting ``tanh(a + b)`` of dequantized projection codes as the NNA's output codes
        (integer-valued float32, scale :attr:`output_range`, zero point 0), with the ops'
        straight-through gradients."""
        bits = self.spec.activations.bits
        if bits > MAX_PAIR_TABLE_BITS:
            a_q, _ = _quantize_with(self.a_range, a, bits)
            b_q, _ = _quantize_with(self.b_range, b, bits)
            return self.integer_op(a_q, b_q)
        a_scale, a_zero_point = self.a_range.scale_and_zero_point()
        b_scale, b_zero_point = self.b_range.scale_and_zero_point()
        a, b = torch.broadcast_tensors(a, b)
        quantization = (float(a_scale), a_zero_point, float(b_scale), b_zero_point, bits)
        return _PairLookup.apply(a, b, quantization, self._pair_tables())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Broadcasting ``tanh(a + b)`` of dequantized projection codes, dequantized (in float
        if placed on the CPU)."""
        if self.cpu_fallback is not None:
            return self.cpu_fallback.output(torch.tanh(a + b), self.output_range, self.spec.activations.bits)
        return ops.dequantize(self.forward_codes(a, b), self.output_range.scale, 0)

    @torch.no_grad()
    def integer_params(self) -> Tuple[AddOpParams, ref.FixedPointMultiplier]:
        return self._constants()


class _PairLookup(torch.autograd.Function):
    """``NnaAddTanh`` through its pair tables in one compiled pass (``csrc/elementwise.cpp``):
    both inputs quantized and the output code read from the table of every input pair.
    Gradients: the table's partial derivatives times each quantization's clipped
    straight-through ``1 / scale``."""

    @staticmethod
    def forward(ctx, a, b, quantization, tables):  # type: ignore[override]
        a_scale, a_zero_point, b_scale, b_zero_point, bits = quantization
        value, grad_a, grad_b = tables
        codes, pair, inside = _kernels.pair_lookup(a, b, a_scale, a_zero_point, b_scale, b_zero_point, bits, value)
        ctx.save_for_backward(pair, inside, grad_a, grad_b)
        ctx.factors = (1.0 / a_scale, 1.0 / b_scale)
        return codes

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        pair, inside, grad_a, grad_b = ctx.saved_tensors
        d_a, d_b = _kernels.pair_lookup_backward(grad, pair, inside, grad_a, grad_b, *ctx.factors)
        return d_a, d_b, None, None
