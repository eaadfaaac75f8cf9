"""The integer reference engine's operators: NumPy int64 arithmetic, written from each
operator's published definition, used as ground truth for the training-time emulation (``ops``).

Every operator takes and returns int64 arrays. Nothing in a forward computation is a float,
except :func:`quantize` (the engine's float input) and the ``fp32_rne`` requantization, both
float32 by definition. Otherwise floats appear only when deriving constants offline
(:func:`quantize_multiplier`, :func:`add_params`, the tables in ``lut``).

Conventions (TFLite's): a real multiplier is ``M0 * 2**(shift - 31)`` with ``M0`` in Q0.31,
``2**30 <= M0 < 2**31`` (or ``M0 = 0`` for a zero multiplier) and ``-31 <= shift <= 30``.
Accumulators handed to :func:`requantize` are int32 values. Multipliers, shifts and zero
points are ints or arrays broadcasting against the data (per-channel: shape ``(N,)`` against
``(..., N)``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from nnaqat.nna.lut import Lut
from nnaqat.nna.spec import OVERFLOWS, ROUNDINGS

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
MIN_SHIFT, MAX_SHIFT = -31, 30


class FixedPointMultiplier(NamedTuple):
    """``multiplier * 2**(shift - 31)``: ``multiplier`` (M0) in Q0.31, TFLite's ``shift``."""

    multiplier: int
    shift: int


def int_range(bits: int) -> tuple[int, int]:
    """Smallest and largest value of a signed ``bits``-bit integer."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _int64(x: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(x)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)  # no copy of weights already in int64


def _check_within(x: np.ndarray, low: int, high: int, what: str) -> None:
    if x.size and (x.min() < low or x.max() > high):
        raise ValueError(f"{what} must lie in [{low}, {high}], got [{x.min()}, {x.max()}]")


def saturate(x: ArrayLike, bits: int) -> np.ndarray:
    """Clamps to the signed ``bits``-bit range. Same shape, int64."""
    return np.clip(_int64(x, "x"), *int_range(bits))


def wrap(x: ArrayLike, bits: int) -> np.ndarray:
    """Two's-complement wrap-around to ``bits`` bits (keeps the low bits). Same shape, int64."""
    low, _ = int_range(bits)
    return (_int64(x, "x") - low) % (2**bits) + low


def quantize(x: ArrayLike, scale: float, zero_point: int, bits: int) -> np.ndarray:
    """The engine's float input to ``bits``-bit integers, as ONNX QuantizeLinear:
    ``saturate(round(float32(x) / float32(scale)) + zero_point)``, a float32 division (not a
    multiplication by the reciprocal), rounded half to even. The one float step of the engine,
    at its input. Returns int64, same shape."""
    scaled = np.asarray(x, dtype=np.float32) / np.float32(scale)
    return saturate(np.rint(scaled).astype(np.int64) + zero_point, bits)


def quantize_multiplier(real: float) -> FixedPointMultiplier:
    """``(M0, shift)`` with ``real ~= M0 * 2**(shift - 31)`` (TFLite's QuantizeMultiplier).

    M0 is ``real``'s frexp mantissa times 2**31, rounded half away from zero; a mantissa that
    rounds up to 2**31 becomes 2**30 with the shift one higher. Zero gives ``(0, 0)``, as do
    reals below 2**-32 (every product would shift out); reals of 2**30 and more saturate to
    ``(2**31 - 1, 30)``.
    """
    multiplier, shift = quantize_multipliers(real)
    return FixedPointMultiplier(int(multiplier), int(shift))


def quantize_multipliers(reals: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` of every element (e.g. one real multiplier per output
    channel): ``(M0, shift)`` int64 arrays of the same shape."""
    reals = np.asarray(reals, dtype=np.float64)
    if not np.all(np.isfinite(reals) & (reals >= 0)):
        raise ValueError("real multipliers must be finite and >= 0")
    mantissa, shift = np.frexp(reals)
    multiplier = np.floor(mantissa * 2.0**31 + 0.5).astype(np.int64)
    carry = multiplier == 2**31
    multiplier, shift = np.where(carry, 2**30, multiplier), np.where(carry, shift + 1, shift).astype(np.int64)
    vanishing = (reals == 0) | (shift < MIN_SHIFT)
    multiplier, shift = np.where(vanishing, 0, multiplier), np.where(vanishing, 0, shift)
    saturated = shift > MAX_SHIFT
    return np.where(saturated, INT32_MAX, multiplier), np.where(saturated, MAX_SHIFT, shift)


def multiplier_as_float32(multiplier: ArrayLike, shift: ArrayLike) -> np.ndarray:
    """``float32(M0 * 2**(shift - 31))``: exact in float64 first, then one rounding to float32."""
    m, s = _int64(multiplier, "multiplier"), _int64(shift, "shift")
    return np.ldexp(m.astype(np.float64), s - 31).astype(np.float32)


def saturating_rounding_doubling_high_mul(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values: ``a * b / 2**31``
    rounded to nearest, ties toward +inf (the ARM SQRDMULH instruction); the one product that
    overflows, INT32_MIN * INT32_MIN, saturates to INT32_MAX."""
    a, b = _int64(a, "a"), _int64(b, "b")
    _check_within(a, INT32_MIN, INT32_MAX, "a")
    _check_within(b, INT32_MIN, INT32_MAX, "b")
    product = a * b
    nudge = np.where(product >= 0, 2**30, 1 - 2**30)
    nudged = product + nudge
    # C's integer division truncates toward zero.
    high = np.sign(nudged) * (np.abs(nudged) // 2**31)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x: ArrayLike, exponent: ArrayLike) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: ``x / 2**exponent`` rounded to nearest, ties away from
    zero, ``0 <= exponent <= 31``."""
    x, exponent = _int64(x, "x"), _int64(exponent, "exponent")
    _check_within(exponent, 0, 31, "exponent")
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def _single(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # TFLite's single-rounding MultiplyByQuantizedMultiplier: add half, shift right by 31 - shift.
    total_shift = 31 - shift
    return (acc * m + (np.int64(1) << (total_shift - 1))) >> total_shift


def _double(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # TFLite's gemmlowp-based MultiplyByQuantizedMultiplier. C's int32 left shift would overflow
    # (undefined); we saturate, as ARM's SQSHL does.
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    shifted = np.clip(acc << left, INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, m), right)


def _tosa(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # TOSA apply_scale_32(value, multiplier, shift = 31 - our shift, double_round = true).
    tosa_shift = 31 - shift
    round_ = np.int64(1) << (tosa_shift - 1)
    round_ = round_ + np.where(tosa_shift > 31, np.where(acc >= 0, 2**30, -(2**30)), 0)
    return (acc * m + round_) >> tosa_shift


def _fp32_rne(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # ONNX Runtime's MlasRequantizeOutput: float32(acc) * float32 scale, round half to even.
    product = acc.astype(np.float32) * multiplier_as_float32(m, shift)
    return np.rint(product).astype(np.int64)


_REQUANTIZERS = {"single": _single, "double": _double, "tosa": _tosa, "fp32_rne": _fp32_rne}


def _fixed_point_arguments(
    acc: ArrayLike, multiplier: ArrayLike, shift: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 arrays of the arguments, checked against the conventions above."""
    acc, m, s = _int64(acc, "acc"), _int64(multiplier, "multiplier"), _int64(shift, "shift")
    _check_within(acc, INT32_MIN, INT32_MAX, "acc")
    if np.any((m != 0) & ((m < 2**30) | (m > INT32_MAX))):
        raise ValueError("multiplier (M0, Q0.31) must be 0 or in [2**30, 2**31)")
    _check_within(s, MIN_SHIFT, MAX_SHIFT, "shift")
    return acc, m, s


def requantize(acc: ArrayLike, multiplier: ArrayLike, shift: ArrayLike, rounding: str) -> np.ndarray:
    """``acc * M0 * 2**(shift - 31)`` rounded by ``rounding``, before zero point and saturation.

    Args:
      acc: int32 accumulators, any shape.
      multiplier, shift: the fixed-point multiplier, broadcasting against ``acc``.
      rounding: ``single`` (TFLite/ruy, one rounding, ties toward +inf); ``double`` (gemmlowp:
        SRDHM, ties toward +inf, then RoundingDivideByPOT, ties away from zero; a positive
        shift is a saturating left shift before SRDHM); ``tosa`` (apply_scale_32 with
        double_round); ``fp32_rne`` (float32 product with the float32 multiplier, rounded half
        to even).
    Returns:
      int64, the broadcast shape. Not saturated: with ``shift > 0`` it can exceed int32.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return _REQUANTIZERS[rounding](*_fixed_point_arguments(acc, multiplier, shift))


def requantize_output(
    acc: ArrayLike,
    multiplier: ArrayLike,
    shift: ArrayLike,
    zero_point: ArrayLike,
    out_bits: int,
    rounding: str,
    zero_point_order: str = "after_rounding",
) -> np.ndarray:
    """Requantizes accumulators to ``out_bits``-bit outputs: round, add the zero point, clamp.

    With ``zero_point_order="before_rounding"`` (``fp32_rne`` only) the zero point is added to
    the float32 product and the sum is rounded half to even. Returns int64, the broadcast shape.
    """
    zero_point = _int64(zero_point, "zero_point")
    if zero_point_order == "after_rounding":
        return saturate(requantize(acc, multiplier, shift, rounding) + zero_point, out_bits)
    if zero_point_order != "before_rounding" or rounding != "fp32_rne":
        raise ValueError(f"zero_point_order {zero_point_order!r} is not defined for rounding {rounding!r}")
    acc, m, s = _fixed_point_arguments(acc, multiplier, shift)
    product = acc.astype(np.float32) * multiplier_as_float32(m, s)
    return saturate(np.rint(product + zero_point.astype(np.float32)).astype(np.int64), out_bits)


def _check_overflow(overflow: str) -> None:
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {OVERFLOWS}, got {overflow!r}")


def _into_accumulator(total: np.ndarray, bias: ArrayLike | None, acc_bits: int, overflow: str) -> np.ndarray:
    """Exact int64 sums plus ``bias``, saturated or wrapped to the ``acc_bits`` accumulator."""
    if bias is not None:
        total = total + _int64(bias, "bias")
    return saturate(total, acc_bits) if overflow == "saturate" else wrap(total, acc_bits)


def accumulate(
    x: ArrayLike,
    weight: ArrayLike,
    acc_bits: int,
    overflow: str,
    x_zero_point: ArrayLike = 0,
    bias: ArrayLike | None = None,
) -> np.ndarray:
    """Integer linear layer into an ``acc_bits`` accumulator.

    ``sum_k (x[..., k] - x_zero_point) * weight[n, k] + bias[n]``, computed exactly in int64,
    then saturated or wrapped (two's complement) to ``acc_bits``. Saturation applies to the
    finished sum: an accumulator that saturated after every MAC would depend on the order.

    Args:
      x: ``(..., K)`` integer activations (at most 16 bits).
      weight: ``(N, K)`` integer weights (``nn.Linear`` layout).
      overflow: ``saturate`` or ``wrap``.
      bias: ``(N,)`` integers in accumulator units, or None.
    Returns:
      int64 ``(..., N)``.
    """
    _check_overflow(overflow)
    x, weight = _int64(x, "x"), _int64(weight, "weight")
    # einsum: about 2x faster than numpy's integer matmul, which has no BLAS; same exact int64 sums
    total = np.einsum("...k,nk->...n", x - _int64(x_zero_point, "x_zero_point"), weight)
    return _into_accumulator(total, bias, acc_bits, overflow)


def grouped_accumulate(
    windows: ArrayLike,
    weight: ArrayLike,
    groups: int,
    acc_bits: int,
    overflow: str,
    x_zero_point: ArrayLike = 0,
    bias: ArrayLike | None = None,
) -> np.ndarray:
    """Integer grouped 1-D convolution at given input windows, into an ``acc_bits`` accumulator.

    Output channel ``n`` of group ``g`` sums ``(windows[..., k, g*C + c] - x_zero_point) *
    weight[n, c, k]`` over its group's ``C = C_in / groups`` input channels and the ``K`` taps,
    exactly in int64, plus ``bias[n]``; then saturated or wrapped as in :func:`accumulate`.

    Args:
      windows: ``(..., K, C_in)`` integer inputs, tap ``k`` of ``nn.Conv1d``'s kernel first.
      weight: ``(C_out, C_in / groups, K)`` integer weights (``nn.Conv1d`` layout).
      bias: ``(C_out,)`` integers in accumulator units, or None.
    Returns:
      int64 ``(..., C_out)``.
    """
    _check_overflow(overflow)
    windows, weight = _int64(windows, "windows"), _int64(weight, "weight")
    c_out, c_group, taps = weight.shape
    if windows.shape[-2:] != (taps, c_group * groups) or c_out % groups:
        raise ValueError(f"windows {windows.shape} do not fit weight {weight.shape} with {groups} groups")
    x = (windows - _int64(x_zero_point, "x_zero_point")).reshape(*windows.shape[:-1], groups, c_group)
    w = weight.reshape(groups, c_out // groups, c_group, taps)
    total = np.einsum("...kgc,gock->...go", x, w).reshape(*windows.shape[:-2], c_out)
    return _into_accumulator(total, bias, acc_bits, overflow)


class AddParams(NamedTuple):
    """Fixed-point constants of :func:`add` (TFLite's quantized ADD)."""

    left_shift: int
    a: FixedPointMultiplier
    b: FixedPointMultiplier
    out: FixedPointMultiplier


def add_params(a_scale: float, b_scale: float, out_scale: float, left_shift: int = 20) -> AddParams:
    """Offline constants for adding tensors of scales ``a_scale`` and ``b_scale`` into
    ``out_scale``: each input is scaled to ``s_i / (2 * max(s_a, s_b))`` (at most 1/2, so the
    sum cannot overflow) after a left shift that keeps ``left_shift`` fractional bits
    (TFLite: 20 for int8 inputs, 15 for int16)."""
    twice_max = 2.0 * max(a_scale, b_scale)
    return AddParams(
        left_shift,
        quantize_multiplier(a_scale / twice_max),
        quantize_multiplier(b_scale / twice_max),
        quantize_multiplier(twice_max / (2.0**left_shift * out_scale)),
    )


def add(
    a: ArrayLike,
    a_zero_point: int,
    b: ArrayLike,
    b_zero_point: int,
    params: AddParams,
    out_zero_point: int,
    out_bits: int,
    rounding: str,
) -> np.ndarray:
    """Saturating add of two quantized tensors with different scales (TFLite's ADD).

    Each input loses its zero point, is shifted left by ``params.left_shift`` and requantized
    to the common scale; the sum is requantized to the output, given its zero point and
    clamped to ``out_bits``. ``(a - a_zero_point) << left_shift`` must fit int32.
    Returns int64, the broadcast shape.
    """
    a_scaled = requantize((_int64(a, "a") - a_zero_point) << params.left_shift, *params.a, rounding)
    b_scaled = requantize((_int64(b, "b") - b_zero_point) << params.left_shift, *params.b, rounding)
    return requantize_output(a_scaled + b_scaled, *params.out, out_zero_point, out_bits, rounding)


def rounding_shift_right(x: ArrayLike, shift: int, rounding: str) -> np.ndarray:
    """``x / 2**shift`` rounded to an integer with the tie rule of ``rounding``: ties toward
    +inf for ``single`` and ``tosa`` (TOSA's MUL), away from zero for ``double`` (gemmlowp's
    RoundingDivideByPOT, as TFLite's int16 LSTM), to even for ``fp32_rne`` (exact, in
    integers). ``0 <= shift <= 31``. Returns int64, same shape."""
    x = _int64(x, "x")
    if not 0 <= shift <= 31:
        raise ValueError(f"shift must be in 0..31, got {shift}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if shift == 0:
        return x
    if rounding == "double":
        return rounding_divide_by_pot(x, shift)
    half = np.int64(1) << (shift - 1)
    rounded_up = (x + half) >> shift
    if rounding == "fp32_rne":
        is_tie = (x & ((np.int64(1) << shift) - 1)) == half
        return np.where(is_tie & (rounded_up % 2 == 1), rounded_up - 1, rounded_up)
    return rounded_up


def mul(a: ArrayLike, b: ArrayLike, shift: int, out_bits: int, rounding: str) -> np.ndarray:
    """Element-wise multiply of 16-bit integers: int32 product, rounding right shift by
    ``shift`` (:func:`rounding_shift_right`), saturation to ``out_bits``. Broadcast shape, int64."""
    a, b = _int64(a, "a"), _int64(b, "b")
    _check_within(a, -(2**15), 2**15 - 1, "a")
    _check_within(b, -(2**15), 2**15 - 1, "b")
    return saturate(rounding_shift_right(a * b, shift, rounding), out_bits)


def lut_lookup(x: ArrayLike, lut: Lut) -> np.ndarray:
    """``lut.function`` of ``lut.input``-format codes, as ``lut.output``-format codes.

    With interpolation: the segment's left entry plus the slope to the next entry times the
    offset within the segment, rounded (ties toward +inf) back to output units — TFLite's
    ``lut_lookup_with_interpolation`` generalized to any segment width. Without: the nearest
    entry (a tie, exactly mid-segment, takes the right one). Returns int64, same shape.
    """
    x = _int64(x, "x")
    low, high = int_range(lut.input.bits)
    _check_within(x, low, high, f"{lut.input} input")
    table, segment_bits = lut.table, lut.segment_bits
    position = x - low  # 0 .. 2**bits - 1
    if segment_bits == 0:
        return table[position]
    if not lut.interpolate:
        return table[(position + (1 << (segment_bits - 1))) >> segment_bits]
    index = position >> segment_bits
    offset = position & ((1 << segment_bits) - 1)
    base = table[index]
    slope = table[index + 1] - base
    return base + ((slope * offset + (1 << (segment_bits - 1))) >> segment_bits)


def embedding_lookup(ids: ArrayLike, table: ArrayLike) -> np.ndarray:
    """Rows of an integer embedding ``table (V, D)`` for ``ids (...)``: int64 ``(..., D)``."""
    ids, table = _int64(ids, "ids"), _int64(table, "table")
    _check_within(ids, 0, table.shape[0] - 1, "ids")
    return table[ids]


class LinearParams(NamedTuple):
    """An exported integer linear layer: int64 arrays, per output channel ``(N,)`` where shaped."""

    weight: np.ndarray  # (N, K)
    bias: np.ndarray  # (N,), accumulator units
    x_zero_point: int
    multiplier: np.ndarray  # (N,) M0
    shift: np.ndarray  # (N,)
    y_zero_point: int


def linear(
    x: ArrayLike,
    params: LinearParams,
    acc_bits: int,
    overflow: str,
    out_bits: int,
    rounding: str,
    zero_point_order: str = "after_rounding",
) -> np.ndarray:
    """Integer linear layer: :func:`accumulate` then :func:`requantize_output` per channel.
    ``x (..., K)`` -> int64 ``(..., N)``."""
    acc = accumulate(x, params.weight, acc_bits, overflow, params.x_zero_point, params.bias)
    return requantize_output(
        acc, params.multiplier, params.shift, params.y_zero_point, out_bits, rounding, zero_point_order
    )
