"""Training-time emulation of the NNA's integer operators, in torch.

Tensors are floats holding exact integers; every forward result equals the reference engine
(``nnaqat.nna.reference``) bit for bit. The integer arithmetic is formulated independently
here (closed forms in int64, or float64 where that is exact) so that the two implementations
check each other. Gradients are straight-through:

- rounding is the identity (``d round(y) / dy = 1``) and a clamp passes the gradient inside
  its range and nothing outside (clipped STE), judged on the integer before the clamp;
- a requantization has the gradient of its real multiplier;
- a wrapping accumulator has gradient 1 (the wrap's derivative almost everywhere);
- a LUT nonlinearity has the true function's derivative at the dequantized input.

Argument conventions (multiplier, shift, rounding modes) are those of ``reference``.
"""

from __future__ import annotations

import math
import weakref
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from nnaqat import _kernels
from nnaqat.nna.lut import Lut
from nnaqat.nna.reference import INT32_MAX, INT32_MIN, AddParams, int_range
from nnaqat.nna.spec import OVERFLOWS, ROUNDINGS
from nnaqat.quant.fake_quant import straight_through

IntTensor = Union[int, torch.Tensor, np.ndarray]  # integers, scalar or broadcasting
FLOAT32_EXACT = 2**24  # float32 holds every integer up to here
# float64 holds |requantize| <= 2**31 * 2**shift exactly only up to this shift.
MAX_EXACT_FLOAT64_SHIFT = 22


def _long(value: IntTensor) -> torch.Tensor:
    return torch.as_tensor(value).to(torch.int64)


def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    """``2**exponent`` for an int64 tensor, exactly."""
    return torch.ones_like(exponent) << exponent


def _floor_div_pow2(numerator: torch.Tensor, exponent: IntTensor) -> torch.Tensor:
    """``floor(numerator / 2**exponent)`` for int64 tensors and ``exponent >= 0``: an arithmetic
    right shift (several times faster than a floor division)."""
    return torch.bitwise_right_shift(numerator, _long(exponent))


def needs_grad(*tensors) -> bool:
    """Whether a gradient will flow back through these inputs: if not, the ops skip building
    their straight-through surrogates (inference, calibration, the LSTM's integer pass)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def _check_output_requantization(out_bits: int, rounding: str, zero_point_order: str) -> None:
    _check_rounding(rounding)
    if out_bits > 24:
        raise ValueError(f"out_bits must be <= 24 for exact float32 outputs, got {out_bits}")
    if zero_point_order not in ("after_rounding", "before_rounding") or (
        zero_point_order == "before_rounding" and rounding != "fp32_rne"
    ):
        raise ValueError(f"zero_point_order {zero_point_order!r} is not defined for rounding {rounding!r}")


def real_multiplier(multiplier: IntTensor, shift: IntTensor) -> torch.Tensor:
    """``M0 * 2**(shift - 31)`` in float64 (exact)."""
    return torch.ldexp(_long(multiplier).double(), _long(shift) - 31)


def channel_layout(param: torch.Tensor, shape: torch.Size) -> Tuple[torch.Tensor, int]:
    """``param``, which broadcasts against ``shape``, as the compiled kernels read a per-channel
    parameter: a flat ``(C,)`` vector read at channel ``(i // inner) % C`` of the flat element
    index ``i``. One value: ``C = 1``; a vector along the last axis: ``inner = 1``; ``(C, 1, ...)``
    along the first: ``inner`` = the row size; anything else is expanded to ``shape``."""
    if param.numel() == 1:
        return param.reshape(1), 1
    if param.dim() == 1 and len(shape) and param.numel() == shape[-1]:
        return param, 1
    if param.dim() == len(shape) and param.shape[0] == shape[0] and all(d == 1 for d in param.shape[1:]):
        return param.flatten(), math.prod(shape[1:])
    return torch.broadcast_to(param, shape).flatten(), 1


class _Quantize(torch.autograd.Function):
    """:func:`quantize` in one compiled pass; gradient ``1 / scale`` where the clamp is inactive."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, bits):  # type: ignore[override]
        scales, inner = channel_layout(scale, x.shape)
        codes, inside = _kernels.quantize_codes(x, scales, inner, zero_point, bits)
        ctx.save_for_backward(scales, inside)
        ctx.inner = inner
        return codes

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        scales, inside = ctx.saved_tensors
        return _kernels.masked_divide(grad, scales, ctx.inner, inside), None, None, None


def quantize(x: torch.Tensor, scale: float | torch.Tensor, zero_point: int, bits: int) -> torch.Tensor:
    """``reference.quantize``: ``clamp(round(x / scale) + zero_point)`` to signed ``bits`` bits,
    computed in float32 as ONNX QuantizeLinear (a division, ties to even). ``scale`` broadcasts
    against ``x`` and is a constant (no gradient).

    float32, same shape as ``x``. Gradient ``1 / scale`` where the clamp is inactive, else 0.
    """
    scale = torch.as_tensor(scale, dtype=torch.float32).detach()
    if x.shape != torch.broadcast_shapes(x.shape, scale.shape):
        x = x.expand(torch.broadcast_shapes(x.shape, scale.shape))
    if needs_grad(x):
        return _Quantize.apply(x.float(), scale, int(zero_point), bits)
    scales, inner = channel_layout(scale, x.shape)
    return _kernels.quantize_codes(x.detach(), scales, inner, int(zero_point), bits)[0]


def dequantize(q: torch.Tensor, scale: float | torch.Tensor, zero_point: int) -> torch.Tensor:
    """``(q - zero_point) * scale``."""
    return (q - zero_point) * scale


def fake_quantize(x: torch.Tensor, scale: float | torch.Tensor, zero_point: int, bits: int) -> torch.Tensor:
    """``x`` quantized and dequantized (:func:`quantize`'s clipped STE gradient)."""
    return dequantize(quantize(x, scale, zero_point, bits), scale, zero_point)


def exact_linear(x: torch.Tensor, weight: torch.Tensor, x_max_abs: Optional[float] = None) -> torch.Tensor:
    """``x (..., K) @ weight (N, K).T`` for integer-valued tensors, exact, ``(..., N)``: float32
    when that is exact, else float64.

    float32 sums are exact only up to 2**24, which an int8 dot product passes once
    ``K * max|x| * max|w| > 2**24`` (K > 1032 at full range). The K axis is then cut into
    chunks whose partial sums stay below 2**24, each multiplied in float32 (fast, exact) and
    summed in float64 (exact up to 2**53). ``x_max_abs``: a bound of ``|x|`` if known (codes of
    ``b`` bits are at most ``2**(b-1)``), else measured.
    """
    x32, w32 = x.float(), weight.float()
    weight_max_abs = float(w32.detach().abs().amax())
    if x_max_abs is None:
        x_max_abs = float(x32.detach().abs().amax()) if x.numel() else 0.0
    largest_term = x_max_abs * weight_max_abs
    k = x.size(-1)
    chunk = k if largest_term == 0 else max(1, min(k, int(FLOAT32_EXACT // largest_term)))
    total = x32[..., :chunk] @ w32[:, :chunk].T
    if chunk == k:
        return total
    total = total.double()
    for start in range(chunk, k, chunk):
        total = total + (x32[..., start : start + chunk] @ w32[:, start : start + chunk].T).double()
    return total


@torch.no_grad()
def product_and_offset(
    x: torch.Tensor, weight: torch.Tensor, x_zero_point: int, bias: Optional[torch.Tensor], x_max_abs: Optional[float]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """An integer linear layer's accumulator in two parts, no gradient: the exact matmul of the
    raw codes ``x (..., K) @ weight (N, K).T`` (:func:`exact_linear`) and what the accumulator
    adds per output, ``bias - x_zero_point * sum(weight)`` ``(N,)`` (float64, exact)."""
    offset = -float(x_zero_point) * weight.double().sum(1)
    if bias is not None:
        offset = offset + bias.double()
    return exact_linear(x, weight, x_max_abs=x_max_abs), offset


def _matmul_grads_of(ctx, grad32: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    """:func:`matmul_grads` of a function that saved ``(x, weight, ...)`` and ``ctx.x_zero_point``."""
    x, weight = ctx.saved_tensors[:2]
    return matmul_grads(grad32, x, weight, ctx.x_zero_point, ctx.needs_input_grad[:3])


def matmul_grads(
    grad32: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, x_zero_point: int, needs: Sequence[bool]
) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of ``x (..., K)``, ``weight (N, K)`` and the bias (those ``needs`` asks for) of an
    integer linear layer from its accumulator's float32 gradient ``grad32 (..., N)``."""
    grad_x = grad32 @ weight.float() if needs[0] else None
    grad_w = None
    if needs[1]:
        rows = grad32.reshape(-1, grad32.size(-1))
        grad_w = rows.T @ (x.float() - x_zero_point).reshape(rows.size(0), -1)
    grad_bias = None
    if needs[2]:
        # Summed in float32: a float64 copy of the whole gradient would cost more than the sum.
        grad_bias = grad32.reshape(-1, grad32.size(-1)).sum(0).double()
    return grad_x, grad_w, grad_bias


class _Accumulate(torch.autograd.Function):
    """:func:`accumulate`: the exact matmul, then one compiled pass that adds the offset and
    saturates (or wraps); the gradients of the matmul and of the clipped STE."""

    @staticmethod
    def forward(ctx, x, weight, bias, x_zero_point, acc_bits, saturate, x_max_abs):  # type: ignore[override]
        acc, inside = _kernels.accumulate_epilogue(
            *product_and_offset(x, weight, x_zero_point, bias, x_max_abs), acc_bits, saturate
        )
        ctx.save_for_backward(x, weight, inside)
        ctx.x_zero_point = x_zero_point
        return acc

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        inside = ctx.saved_tensors[2]  # all True when wrapping
        return *_matmul_grads_of(ctx, grad.masked_fill(~inside, 0.0).float()), None, None, None, None


def accumulate(
    x: torch.Tensor,
    weight: torch.Tensor,
    acc_bits: int,
    overflow: str,
    x_zero_point: int = 0,
    bias: Optional[torch.Tensor] = None,
    x_max_abs: Optional[float] = None,
) -> torch.Tensor:
    """Integer linear layer into an ``acc_bits`` accumulator (``reference.accumulate``).

    ``x (..., K)``, ``weight (N, K)``, ``bias (N,)`` in accumulator units: integer-valued
    float tensors; ``x_max_abs`` a bound of ``|x|`` if known (:func:`exact_linear`). Returns
    float64 ``(..., N)``. Saturation has the clipped STE gradient, wrapping the identity; the
    matmul has its ordinary gradient.
    """
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {OVERFLOWS}, got {overflow!r}")
    args = (bias, int(x_zero_point), acc_bits, overflow == "saturate", x_max_abs)
    if needs_grad(x, weight, bias):
        return _Accumulate.apply(x, weight, *args)
    product, offset = product_and_offset(x, weight, int(x_zero_point), bias, x_max_abs)
    return _kernels.accumulate_epilogue(product, offset, acc_bits, overflow == "saturate")[0]


class _LinearCodes(torch.autograd.Function):
    """:func:`linear_codes`: the exact matmul, then one compiled pass from the product to the
    output codes; gradients the real multiplier where neither clamp was active, then the matmul's."""

    @staticmethod
    def forward(ctx, x, weight, bias, x_zero_point, x_max_abs, acc_args, out_args):  # type: ignore[override]
        product, offset = product_and_offset(x, weight, x_zero_point, bias, x_max_abs)
        codes, inside = _kernels.linear_codes(product, offset, *acc_args, *out_args)
        multiplier, shift = out_args[:2]
        ctx.save_for_backward(x, weight, inside, real_multiplier(multiplier, shift))
        ctx.x_zero_point = x_zero_point
        return codes

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        inside, reals = ctx.saved_tensors[2:]
        return *_matmul_grads_of(ctx, _kernels.linear_codes_backward(grad, inside, reals)), None, None, None, None


def linear_codes(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    x_zero_point: int,
    acc_bits: int,
    overflow: str,
    multiplier: IntTensor,
    shift: IntTensor,
    zero_point: int,
    out_bits: int,
    rounding: str,
    zero_point_order: str = "after_rounding",
    x_max_abs: Optional[float] = None,
) -> torch.Tensor:
    """An integer linear layer from input codes to output codes: ``requantize_output(accumulate(x,
    weight, acc_bits, overflow, x_zero_point, bias), multiplier, shift, zero_point, out_bits,
    rounding, zero_point_order)`` with the same integers and gradients, in one pass over the
    output instead of a float64 accumulator in between.

    ``x (..., K)``, ``weight (N, K)``, ``bias (N,)``; ``multiplier``, ``shift`` one or ``(N,)``.
    Returns float32 ``(..., N)``.
    """
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {OVERFLOWS}, got {overflow!r}")
    _check_output_requantization(out_bits, rounding, zero_point_order)
    outputs = weight.size(0)
    multiplier = torch.broadcast_to(_long(multiplier), (outputs,))
    shift = torch.broadcast_to(_long(shift), (outputs,))
    acc_args = (acc_bits, overflow == "saturate")
    out_args = (multiplier, shift, int(zero_point), out_bits, ROUNDINGS.index(rounding), zero_point_order == "before_rounding")
    if needs_grad(x, weight, bias):
        return _LinearCodes.apply(x, weight, bias, int(x_zero_point), x_max_abs, acc_args, out_args)
    product, offset = product_and_offset(x, weight, int(x_zero_point), bias, x_max_abs)
    return _kernels.linear_codes(product, offset, *acc_args, *out_args)[0]


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """gemmlowp's SRDHM on int32 values (int64 tensors in and out): ``floor((a*b + 2**30) / 2**31)``,
    with INT32_MIN * INT32_MIN saturated to INT32_MAX."""
    a, b = _long(a), _long(b)
    high = _floor_div_pow2(a * b + 2**30, 31)
    return torch.where((a == INT32_MIN) & (b == INT32_MIN), torch.tensor(INT32_MAX), high)


def _requantize_long(acc: torch.Tensor, multiplier: IntTensor, shift: IntTensor, rounding: str) -> torch.Tensor:
    """The integers of ``reference.requantize`` (int64), from closed forms."""
    _check_rounding(rounding)
    acc, m, s = _long(acc), _long(multiplier), _long(shift)
    if rounding == "single":
        total_shift = 31 - s
        return _floor_div_pow2(acc * m + _pow2(total_shift - 1), total_shift)
    if rounding == "double":
        shifted = (acc * _pow2(s.clamp_min(0))).clamp(INT32_MIN, INT32_MAX)
        high = saturating_rounding_doubling_high_mul(shifted, m)
        right = (-s).clamp_min(0)
        # Round half away from zero: the magnitude rounds half up, the sign comes back after.
        half = _floor_div_pow2(_pow2(right), 1)
        return torch.sign(high) * _floor_div_pow2(high.abs() + half, right)
    if rounding == "tosa":
        tosa_shift = 31 - s
        correction = torch.where(acc >= 0, 2**30, -(2**30)) * (tosa_shift > 31)
        return _floor_div_pow2(acc * m + _pow2(tosa_shift - 1) + correction, tosa_shift)
    product = acc.float() * real_multiplier(m, s).float()
    return torch.round(product).long()


def requantize(acc: torch.Tensor, multiplier: IntTensor, shift: IntTensor, rounding: str) -> torch.Tensor:
    """``reference.requantize`` on an integer-valued float tensor of int32 accumulators.

    Returns float64, the broadcast shape, before zero point and saturation; gradient the real
    multiplier. ``shift <= 22`` so that the result is exact in float64.
    """
    if int(_long(shift).max()) > MAX_EXACT_FLOAT64_SHIFT:
        raise ValueError(f"shift must be <= {MAX_EXACT_FLOAT64_SHIFT} for an exact float64 result")
    value = _requantize_long(acc.detach(), multiplier, shift, rounding).double()
    if not needs_grad(acc):
        return value
    return straight_through(value, acc.double() * real_multiplier(multiplier, shift))


def saturate(value: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``value`` clamped to the signed ``bits``-bit range, and where it was inside it (bool):
    the clipped straight-through estimator passes gradients there."""
    low, high = int_range(bits)
    return value.clamp(low, high), (value >= low) & (value <= high)


class _RequantizeOutput(torch.autograd.Function):
    """:func:`requantize_output` in one compiled pass; gradient the real multiplier where the
    clamp is inactive."""

    @staticmethod
    def forward(ctx, acc, multiplier, shift, inner, zero_point, out_bits, rounding, before):  # type: ignore[override]
        codes, inside = _kernels.requantize_codes(acc, multiplier, shift, inner, zero_point, out_bits, rounding, before)
        ctx.save_for_backward(real_multiplier(multiplier, shift), inside)
        ctx.inner, ctx.acc_dtype = inner, acc.dtype
        return codes

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        reals, inside = ctx.saved_tensors
        grad_acc = _kernels.masked_scale(grad, reals, ctx.inner, inside).to(ctx.acc_dtype)
        return grad_acc, None, None, None, None, None, None, None


def requantize_output(
    acc: torch.Tensor,
    multiplier: IntTensor,
    shift: IntTensor,
    zero_point: int,
    out_bits: int,
    rounding: str,
    zero_point_order: str = "after_rounding",
) -> torch.Tensor:
    """``reference.requantize_output``: round, add the zero point, clamp to ``out_bits`` (<= 24).

    ``acc`` holds int32 accumulators (any float dtype); ``multiplier`` and ``shift`` broadcast
    against it; one zero point. Returns float32, the broadcast shape. Gradient: the real
    multiplier where the clamp is inactive, else 0.
    """
    _check_output_requantization(out_bits, rounding, zero_point_order)
    multiplier, shift = torch.broadcast_tensors(_long(multiplier), _long(shift))
    shape = torch.broadcast_shapes(acc.shape, multiplier.shape)
    if acc.shape != shape:
        acc = acc.expand(shape)
    multipliers, inner = channel_layout(multiplier, shape)
    shifts, _ = channel_layout(shift, shape)
    args = (inner, int(zero_point), out_bits, ROUNDINGS.index(rounding), zero_point_order == "before_rounding")
    if needs_grad(acc):
        return _RequantizeOutput.apply(acc, multipliers, shifts, *args)
    return _kernels.requantize_codes(acc.detach(), multipliers, shifts, *args)[0]


def _add_codes(a, b, a_zero_point, b_zero_point, params: AddParams, out_zero_point, out_bits, rounding):
    """:func:`add` in one compiled pass: ``(codes float32, inside bool)``."""
    multipliers = [int(v) for fixed_point in (params.a, params.b, params.out) for v in fixed_point]
    return _kernels.add_codes(
        a, b, a_zero_point, b_zero_point, params.left_shift, multipliers, out_zero_point, out_bits,
        ROUNDINGS.index(rounding),
    )  # fmt: skip


class _Add(torch.autograd.Function):
    """:func:`add`'s gradients: ``2**left_shift * r_a * r_out`` (and ``r_b``) where the output
    clamp is inactive."""

    @staticmethod
    def forward(ctx, a, b, a_zero_point, b_zero_point, params, out_zero_point, out_bits, rounding):  # type: ignore[override]
        codes, inside = _add_codes(a, b, a_zero_point, b_zero_point, params, out_zero_point, out_bits, rounding)
        ctx.save_for_backward(inside)
        through = 2.0**params.left_shift * float(real_multiplier(*params.out))
        ctx.factors = [through * float(real_multiplier(*fixed_point)) for fixed_point in (params.a, params.b)]
        return codes

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        grad_a, grad_b = (
            _kernels.masked_scale(grad, torch.tensor([factor], dtype=torch.float64), 1, inside).float()
            for factor in ctx.factors
        )
        return grad_a, grad_b, None, None, None, None, None, None


def add(
    a: torch.Tensor,
    a_zero_point: int,
    b: torch.Tensor,
    b_zero_point: int,
    params: AddParams,
    out_zero_point: int,
    out_bits: int,
    rounding: str,
) -> torch.Tensor:
    """``reference.add``: saturating add with rescale (TFLite's ADD). float32, broadcast shape.
    Gradients: each input's real multiplier (through the headroom shift and the output's)
    where the output is not saturated."""
    _check_rounding(rounding)
    a, b = torch.broadcast_tensors(a, b)
    args = (int(a_zero_point), int(b_zero_point), params, int(out_zero_point), out_bits, rounding)
    if needs_grad(a, b):
        return _Add.apply(a, b, *args)
    return _add_codes(a.detach(), b.detach(), *args)[0]


def mul_rounded(a: torch.Tensor, b: torch.Tensor, shift: int, rounding: str) -> torch.Tensor:
    """``reference.mul`` before saturation: ``a * b`` (integer-valued, 16-bit) shifted right by
    ``shift`` with the spec's rounding. float64 (the product, < 2**30, and its division by
    ``2**shift`` are exact there); no gradient."""
    _check_rounding(rounding)
    scaled = a.detach().double() * b.detach().double() * 2.0**-shift
    if rounding == "fp32_rne":
        return torch.round(scaled)  # half to even
    if rounding == "double":
        return torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
    return torch.floor(scaled + 0.5)


def mul(a: torch.Tensor, b: torch.Tensor, shift: int, out_bits: int, rounding: str) -> torch.Tensor:
    """``reference.mul``: 16-bit × 16-bit, rounding right shift, saturation. float32.

    Gradient: the product's, times 2**-shift, where not saturated.
    """
    rounded = mul_rounded(a, b, shift, rounding)
    if not needs_grad(a, b):
        return rounded.clamp(*int_range(out_bits)).float()
    value, inside = saturate(rounded, out_bits)
    surrogate = a.double() * b.double() * 2.0**-shift * inside
    return straight_through(value.float(), surrogate.float())


_TRUE_FUNCTIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}
# Per-table tensors built once: the entries, and expanded to every input code the values and derivatives.
_entries: "weakref.WeakKeyDictionary[Lut, torch.Tensor]" = weakref.WeakKeyDictionary()
_expanded: "weakref.WeakKeyDictionary[Lut, torch.Tensor]" = weakref.WeakKeyDictionary()
_expanded_derivatives: "weakref.WeakKeyDictionary[Lut, torch.Tensor]" = weakref.WeakKeyDictionary()
_expanded_codes: "weakref.WeakKeyDictionary[Lut, torch.Tensor]" = weakref.WeakKeyDictionary()


def _built_once(cache: "weakref.WeakKeyDictionary[Lut, torch.Tensor]", lut: Lut, build) -> torch.Tensor:
    if lut not in cache:
        cache[lut] = build()
    return cache[lut]


def lut_entries(lut: Lut) -> torch.Tensor:
    """The table's entries as an int64 tensor ``(2**n + 1,)`` (built once per table)."""
    return _built_once(_entries, lut, lambda: torch.from_numpy(lut.table.copy()))


def _table_values(position: torch.Tensor, lut: Lut) -> torch.Tensor:
    """The table's output codes (int64) at ``position = code - lowest code``."""
    table = lut_entries(lut)
    bits = lut.segment_bits
    segment = 2**bits
    if not lut.interpolate:
        return table[_floor_div_pow2(position + segment // 2, bits)]
    index = _floor_div_pow2(position, bits)
    offset = position - index * segment
    right = table[(index + 1).clamp_max(table.numel() - 1)]
    slope = right - table[index]
    return table[index] + _floor_div_pow2(slope * offset + segment // 2, bits)


_MAX_EXPANDED_INPUT_BITS = 16


def expanded_table(lut: Lut) -> torch.Tensor:
    """The lookup of every input code, float32 ``(2**input_bits,)``: one gather per lookup instead
    of three and the interpolation arithmetic (built once per table)."""
    return _built_once(_expanded, lut, lambda: _table_values(torch.arange(2**lut.input.bits), lut).float())


def expanded_codes(lut: Lut) -> torch.Tensor:
    """:func:`expanded_table` as int16 ``(2**input_bits,)``, for the compiled integer LSTM (built
    once per table; its outputs have at most 16 bits, as the spec's nonlinearity format)."""

    def build() -> torch.Tensor:
        values = expanded_table(lut)
        codes = values.to(torch.int16)
        if not torch.equal(codes.float(), values):
            raise ValueError(f"{lut.function} table outputs do not fit int16 (output {lut.output})")
        return codes

    return _built_once(_expanded_codes, lut, build)


def lut_lookup(x: torch.Tensor, lut: Lut) -> torch.Tensor:
    """``reference.lut_lookup`` on integer-valued ``x`` (``lut.input`` codes). float32, same shape.

    Gradient: ``f'(x * 2**-in_frac) * 2**(out_frac - in_frac)``, the true function's
    derivative in integer units.
    """
    low, _ = int_range(lut.input.bits)
    position = x.detach().long() - low
    if lut.input.bits <= _MAX_EXPANDED_INPUT_BITS:
        value = expanded_table(lut)[position]
    else:
        value = _table_values(position, lut).float()
    if not needs_grad(x):
        return value
    true_function = _TRUE_FUNCTIONS[lut.function]
    # float64: in float32, sigmoid's 1 - y near saturation cancels to a few significant bits.
    surrogate = true_function(x.double() * 2.0**-lut.input.frac_bits) * 2.0**lut.output.frac_bits
    return straight_through(value, surrogate.float())


def lut_derivative(x: torch.Tensor, lut: Lut) -> torch.Tensor:
    """The gradient :func:`lut_lookup` passes, in closed form: ``f'(x * 2**-in_frac) *
    2**(out_frac - in_frac)`` at table input codes ``x`` (sigmoid' = s(u) s(-u), tanh' =
    4 s(2u) s(-2u): no cancellation near saturation). For hand-written backward passes."""
    scale = 2.0 ** (lut.output.frac_bits - lut.input.frac_bits)
    u = x * 2.0**-lut.input.frac_bits
    if lut.function == "tanh":
        return torch.sigmoid(2 * u) * torch.sigmoid(-2 * u) * (4 * scale)
    return torch.sigmoid(u) * torch.sigmoid(-u) * scale


def expanded_derivative(lut: Lut) -> torch.Tensor:
    """:func:`lut_derivative` at every input code, float32 ``(2**input_bits,)``, for the
    compiled backward passes (built once per table)."""
    low, high = int_range(lut.input.bits)
    return _built_once(
        _expanded_derivatives, lut, lambda: lut_derivative(torch.arange(low, high + 1, dtype=torch.float32), lut)
    )


def embedding_lookup(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rows of an integer-valued embedding ``table (V, D)`` for int64 ``ids (...)``:
    ``(..., D)``; the gradient reaches the selected rows."""
    return F.embedding(ids, table)


__all__ = [
    "accumulate",
    "add",
    "channel_layout",
    "dequantize",
    "embedding_lookup",
    "exact_linear",
    "expanded_codes",
    "expanded_derivative",
    "expanded_table",
    "lut_entries",
    "matmul_grads",
    "fake_quantize",
    "lut_derivative",
    "linear_codes",
    "lut_lookup",
    "product_and_offset",
    "mul",
    "mul_rounded",
    "quantize",
    "real_multiplier",
    "requantize",
    "requantize_output",
    "saturate",
    "saturating_rounding_doubling_high_mul",
]
