"""``NnaLinear``: an ``nn.Linear`` that computes what the NNA computes (design §4).

Float in, float out, so it drops into a float model; in between, bit-exact NNA integers:

    x --quantize (int8, EMA-calibrated scale)--> x_q
    weight --symmetric per-channel (or per-tensor) quantization--> w_q, bias --> int32 b_q
    acc = accumulate(x_q, w_q, b_q)              (spec accumulator: width, saturate/wrap)
    y_q = requantize_output(acc, M0[n], shift[n]) (spec rounding; int8, EMA-calibrated scale)
    y = (y_q - y_zero_point) * y_scale

:meth:`NnaLinear.integer_params` exports exactly the integers the forward pass used, which
``reference.linear`` runs independently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnaqat.nna import ops
from nnaqat.nna.reference import LinearParams, int_range, quantize_multipliers
from nnaqat.nna.spec import NnaSpec, WeightFormat
from nnaqat.quant.fake_quant import straight_through

if TYPE_CHECKING:
    from nnaqat.nna.placement import CpuFallback


def asymmetric_scale_and_zero_point(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> Tuple[torch.Tensor, int]:
    """float32 scale ``()`` and integer zero point mapping ``[lo, hi]`` (``lo <= 0 <= hi``) onto
    the signed ``bits``-bit grid."""
    low, high = int_range(bits)
    scale = ((hi - lo) / (high - low)).clamp_min(torch.finfo(torch.float32).tiny)
    zero_point = int(torch.round(low - lo / scale).clamp(low, high))
    return scale, zero_point


def symmetric_weight_scale(weight: torch.Tensor, weights: WeightFormat) -> torch.Tensor:
    """Max-abs scale ``(N,)`` of ``weight (N, ...)``: one per output channel, or the same value N
    times for ``per_tensor``. float32, no gradient."""
    w = weight.detach().abs().flatten(1)
    amax = w.amax(dim=1) if weights.granularity == "per_channel" else w.amax().expand(w.size(0))
    return (amax / (2 ** (weights.bits - 1) - 1)).clamp_min(torch.finfo(torch.float32).tiny)


def quantize_weight(weight: torch.Tensor, w_scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer-valued ``weight (N, ...)`` on the symmetric grid of ``w_scale (N,)`` (clipped STE)."""
    return ops.quantize(weight, w_scale.reshape(-1, *([1] * (weight.dim() - 1))), 0, bits)


def quantize_bias(bias: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, acc_bits: int) -> torch.Tensor:
    """Integer-valued ``bias (N,)`` in accumulator units (scale ``x_scale * w_scale``), float64.

    Rounded half to even in float64, which holds every int32 exactly; clipped STE like the
    other quantizers.
    """
    low, high = int_range(acc_bits)
    scaled = bias.double() / (x_scale.double() * w_scale.double())
    unclamped = torch.round(scaled.detach())
    inside = (unclamped >= low) & (unclamped <= high)
    return straight_through(unclamped.clamp(low, high), scaled * inside)


def fixed_point_multipliers(reals: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``reference.quantize_multipliers`` of real multipliers (any shape): ``(M0, shift)`` int64."""
    multiplier, shift = quantize_multipliers(reals.detach().double().numpy())
    return torch.from_numpy(multiplier), torch.from_numpy(shift)


@torch.no_grad()
def observe_products(observer: RangeObserver, acc: torch.Tensor, scale: torch.Tensor) -> None:
    """``observer.observe(acc * scale)`` for ``acc (..., N)`` and a positive ``scale`` (one, or
    ``(N,)``), without forming the product: rounding is monotonic, so the extremes of the
    product are the scaled extremes of each channel."""
    if not observer.observing:
        return
    low, high = acc.detach().reshape(-1, acc.size(-1)).aminmax(dim=0)
    observer.observe(torch.cat([low * scale, high * scale]))


class RangeObserver(nn.Module):
    """Exponential moving average of a tensor's [min, max] (always containing 0), updated in
    training mode until frozen, and the asymmetric ``bits``-bit scale and zero point it gives."""

    def __init__(self, bits: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("min_max", torch.zeros(2))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("frozen", torch.tensor(False))

    @property
    def observing(self) -> bool:
        """Whether :meth:`observe` updates the range (training mode, not frozen)."""
        return self.training and not bool(self.frozen)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        if not self.observing:
            return
        batch = torch.stack([x.min().clamp_max(0), x.max().clamp_min(0)]).float()
        if self.calibrated:
            self.min_max.mul_(self.momentum).add_((1 - self.momentum) * batch)
        else:
            self.min_max.copy_(batch)
            self.calibrated.fill_(True)

    def freeze(self) -> None:
        if not self.calibrated:
            raise RuntimeError("cannot freeze an observer that has seen no data")
        self.frozen.fill_(True)

    def scale_and_zero_point(self) -> Tuple[torch.Tensor, int]:
        """float32 scale ``()`` and the integer zero point that maps the range onto the grid."""
        if not self.calibrated:
            raise RuntimeError("observer has seen no data: run training-mode batches first")
        return asymmetric_scale_and_zero_point(self.min_max[0], self.min_max[1], self.bits)


class NnaLinear(nn.Module):
    """Emulated NNA linear layer with ``nn.Linear``'s parameters and call signature.

    Activation scales (input and output) come from EMA calibration in training mode; call
    :meth:`freeze_calibration` to fix them (before deployment, and typically after a few hundred
    steps of training). The weight scale follows the weights (max-abs, per output channel
    unless the spec says ``per_tensor``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, spec: NnaSpec = NnaSpec()) -> None:
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation
        self.input_observer = RangeObserver(spec.activations.bits)
        self.output_observer = RangeObserver(spec.activations.bits)
        self.cpu_fallback: Optional[CpuFallback] = None  # set by placement.place_

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: NnaSpec = NnaSpec()) -> NnaLinear:
        """A copy of ``linear``'s parameters in an emulated layer (uncalibrated)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, spec)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def freeze_calibration(self) -> None:
        self.input_observer.freeze()
        self.output_observer.freeze()

    def weight_scale(self) -> torch.Tensor:
        """Symmetric scale ``(N,)`` (the same value N times for ``per_tensor``), float32."""
        return symmetric_weight_scale(self.weight, self.spec.weights)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., K)`` float -> integer-valued float32, observing its range in training."""
        self.input_observer.observe(x)
        scale, zero_point = self.input_observer.scale_and_zero_point()
        return ops.quantize(x, scale, zero_point, self.spec.activations.bits)

    def _integer_weight_and_bias(
        self, x_scale: torch.Tensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """Integer-valued ``(w_q (N, K), b_q (N,) or None, w_scale (N,))`` with STE gradients."""
        w_scale = self.weight_scale()
        w_q = quantize_weight(self.weight, w_scale, self.spec.weights.bits)
        if self.bias is None:
            return w_q, None, w_scale
        return w_q, quantize_bias(self.bias, x_scale, w_scale, self.spec.accumulator.bits), w_scale

    def _requantization(
        self, x_scale: torch.Tensor, w_scale: torch.Tensor, y_scale: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(M0, shift)`` int64 ``(N,)`` of the real multiplier ``s_x * s_w / s_y``."""
        return fixed_point_multipliers(x_scale.double() * w_scale.double() / y_scale.double())

    def forward_integers(self, x_q: torch.Tensor) -> torch.Tensor:
        """The NNA's integers: ``x_q (..., K)`` input codes (activation bits) -> ``(..., N)``
        output codes (integer-valued float32), observing the output range in training."""
        spec, acc = self.spec, self.spec.accumulator
        rounding, order = spec.requantization.rounding, spec.requantization.zero_point
        x_scale, x_zero_point = self.input_observer.scale_and_zero_point()
        w_q, b_q, w_scale = self._integer_weight_and_bias(x_scale)
        x_max_abs = 2.0 ** (spec.activations.bits - 1)  # activation codes
        if self.output_observer.observing:  # the accumulator's range first, then its requantization
            total = ops.accumulate(x_q, w_q, acc.bits, acc.overflow, x_zero_point, b_q, x_max_abs)
            observe_products(self.output_observer, total, x_scale.double() * w_scale.double())
        y_scale, y_zero_point = self.output_observer.scale_and_zero_point()
        multiplier, shift = self._requantization(x_scale, w_scale, y_scale)
        if self.output_observer.observing:
            return ops.requantize_output(total, multiplier, shift, y_zero_point, spec.activations.bits, rounding, order)
        return ops.linear_codes(
            x_q, w_q, b_q, x_zero_point, acc.bits, acc.overflow, multiplier, shift, y_zero_point,
            spec.activations.bits, rounding, order, x_max_abs,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., K)`` float -> ``(..., N)`` float: the dequantized NNA output (or the float
        output of the CPU, if placed there)."""
        if self.cpu_fallback is not None:
            self.input_observer.observe(x)
            return self.cpu_fallback.output(F.linear(x, self.weight, self.bias), self.output_observer,
                                            self.spec.activations.bits)  # fmt: skip
        return self.forward_from_codes(self.quantize_input(x))

    def forward_from_codes(self, x_q: torch.Tensor) -> torch.Tensor:
        """``x_q (..., K)`` input codes (a producer's output codes on this layer's input range)
        -> ``(..., N)`` float: the dequantized NNA output, without a dequantize-quantize round trip."""
        y_q = self.forward_integers(x_q)
        y_scale, y_zero_point = self.output_observer.scale_and_zero_point()
        return ops.dequantize(y_q, y_scale, y_zero_point)

    @torch.no_grad()
    def integer_params(self) -> LinearParams:
        """The integers :meth:`forward_integers` uses, for ``reference.linear``."""
        x_scale, x_zero_point = self.input_observer.scale_and_zero_point()
        w_q, b_q, w_scale = self._integer_weight_and_bias(x_scale)
        y_scale, y_zero_point = self.output_observer.scale_and_zero_point()
        multiplier, shift = self._requantization(x_scale, w_scale, y_scale)
        bias = b_q.long().numpy() if b_q is not None else torch.zeros(w_q.size(0), dtype=torch.long).numpy()
        return LinearParams(w_q.long().numpy(), bias, x_zero_point, multiplier.numpy(), shift.numpy(), y_zero_point)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.size(1)}, out_features={self.weight.size(0)}, bias={self.bias is not None}"
