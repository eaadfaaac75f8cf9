"""The integer reference LSTM layer (NumPy only): a TFLite-style fully integer LSTM built from
the reference operators, ground truth for the emulated layer (``nna.lstm.NnaLstm``).

One step, with PyTorch's gate order (input, forget, cell, output) and the spec's formats
(``Q3.12`` gates, ``Q0.15`` nonlinearities, int16 cell, int8 hidden by default):

    gates = sat_gate(sat_gate(requant(W_x (x - z_x) + b)) + requant(W_h (h - z_h)))   gate format
    i, f, o = sigmoid_lut(gates), g = tanh_lut(gates)                               Q0.n
    c' = sat_cell(mul(f, c) >> n  +  mul(i, g) >> (2n - c_frac))                     2**-c_frac
    h' = requant_out(o * tanh_lut(c' rescaled to the gate format))                   hidden scale

The two matmuls are requantized separately into the gate format and added with saturation, as
TFLite's integer LSTM accumulates its input and recurrent contributions into one int16 gate
buffer. The cell state has a power-of-two scale ``2**-cell_frac_bits`` chosen from its
calibrated range (:func:`cell_frac_bits`), so every cell product is a rounding shift.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from nnaqat.nna import reference as ref
from nnaqat.nna.lut import Lut, spec_lut
from nnaqat.nna.spec import NnaSpec

IntState = Tuple[np.ndarray, np.ndarray]  # (h (N, H), c (N, H)) int64 codes


class GateLuts(NamedTuple):
    """The sigmoid and tanh tables of the gate nonlinearities (gate format in, Q0.n out)."""

    sigmoid: Lut
    tanh: Lut


class LstmParams(NamedTuple):
    """An exported integer LSTM layer (int64 arrays; ``H`` hidden units, ``K`` inputs)."""

    input: ref.LinearParams  # (4H, K) weights, bias b_ih + b_hh; to the gate format, y_zero_point 0
    recurrent: ref.LinearParams  # (4H, H) weights, zero bias; x_zero_point is the hidden zero point
    cell_frac_bits: int  # the cell state's scale is 2**-cell_frac_bits
    hidden_multiplier: int  # o * tanh(c) (scale 2**-2n) to the hidden scale: M0 ...
    hidden_shift: int  # ... and shift


def gate_luts(spec: NnaSpec) -> GateLuts:
    """The spec's gate tables (built offline, in float64)."""
    return GateLuts(spec_lut(spec, "sigmoid"), spec_lut(spec, "tanh"))


def provisional_cell_max_abs(spec: NnaSpec) -> float:
    """The cell range assumed before calibration: what the tanh table's input format spans."""
    return float(2**spec.lstm.gate.integer_bits)


def cell_frac_bits(max_abs: float, spec: NnaSpec) -> int:
    """Fractional bits of the cell state: the spec's when it fixes them, else, for a calibrated
    ``max|c|``, the finest power-of-two scale whose ``cell_bits`` range holds ``[-max_abs,
    max_abs)``, within ``LstmFormat.cell_frac_bit_limits``. (An offline constant: float in,
    int out.)"""
    if spec.lstm.cell_frac_bits is not None:
        return spec.lstm.cell_frac_bits
    low, high = spec.lstm.cell_frac_bit_limits()
    if not max_abs > 0:  # an all-zero cell: any scale holds it
        return high
    integer_bits = math.ceil(math.log2(max_abs))
    return min(max(spec.lstm.cell_bits - 1 - integer_bits, low), high)


def cell_to_gate_format(c: np.ndarray, c_frac: int, spec: NnaSpec) -> np.ndarray:
    """Cell codes (scale ``2**-c_frac``) as gate-format codes, the tanh table's input: a
    multiply by a power of two and a rounding shift, saturated to the gate bits."""
    gate = spec.lstm.gate
    rounding = spec.requantization.rounding
    if c_frac >= gate.frac_bits:
        return ref.mul(c, 1, c_frac - gate.frac_bits, gate.bits, rounding)
    return ref.mul(c, 2 ** (gate.frac_bits - c_frac), 0, gate.bits, rounding)


def initial_state(batch_size: int, params: LstmParams) -> IntState:
    """Zero state as codes: ``h = z_h`` (the hidden zero point), ``c = 0``; each ``(N, H)``."""
    hidden = params.recurrent.weight.shape[1]
    h = np.full((batch_size, hidden), params.recurrent.x_zero_point, dtype=np.int64)
    return h, np.zeros((batch_size, hidden), dtype=np.int64)


def lstm_step(x: ArrayLike, state: IntState, params: LstmParams, spec: NnaSpec, luts: GateLuts) -> IntState:
    """One integer LSTM step.

    Args:
      x: ``(N, K)`` input codes (activation bits, zero point ``params.input.x_zero_point``).
      state: ``(h, c)`` codes, each ``(N, H)``.
    Returns:
      ``(h', c')`` int64 ``(N, H)``: hidden codes (``hidden_bits``) and cell codes (``cell_bits``).
    """
    lstm, acc = spec.lstm, spec.accumulator
    rounding, order = spec.requantization.rounding, spec.requantization.zero_point
    n_frac = lstm.nonlinearity.frac_bits
    h, c = state
    from_input = ref.linear(x, params.input, acc.bits, acc.overflow, lstm.gate.bits, rounding, order)
    acc_h = ref.accumulate(h, params.recurrent.weight, acc.bits, acc.overflow, params.recurrent.x_zero_point)
    from_hidden = ref.requantize(acc_h, params.recurrent.multiplier, params.recurrent.shift, rounding)
    gates = ref.saturate(from_input + from_hidden, lstm.gate.bits)
    i, f, g, o = np.split(gates, 4, axis=-1)
    i, f, o = (ref.lut_lookup(v, luts.sigmoid) for v in (i, f, o))
    g = ref.lut_lookup(g, luts.tanh)
    c_frac = params.cell_frac_bits
    kept = ref.mul(f, c, n_frac, lstm.cell_bits, rounding)
    written = ref.mul(i, g, 2 * n_frac - c_frac, lstm.cell_bits, rounding)
    c = ref.saturate(kept + written, lstm.cell_bits)
    squashed = ref.lut_lookup(cell_to_gate_format(c, c_frac, spec), luts.tanh)
    h = ref.requantize_output(
        o * squashed, params.hidden_multiplier, params.hidden_shift, params.recurrent.x_zero_point,
        lstm.hidden_bits, rounding, order,
    )  # fmt: skip
    return h, c


def lstm_sequence(
    x: ArrayLike, params: LstmParams, spec: NnaSpec, luts: GateLuts, state: Optional[IntState] = None
) -> Tuple[np.ndarray, IntState]:
    """The layer over a sequence: ``x (N, T, K)`` codes -> ``(h (N, T, H), (h_T, c_T))``, int64,
    from ``state`` (zeros when None)."""
    x = np.asarray(x)
    if state is None:
        state = initial_state(x.shape[0], params)
    outputs = []
    for t in range(x.shape[1]):
        state = lstm_step(x[:, t], state, params, spec, luts)
        outputs.append(state[0])
    hidden = params.recurrent.weight.shape[1]
    y = np.stack(outputs, axis=1) if outputs else np.zeros((x.shape[0], 0, hidden), dtype=np.int64)
    return y, state
