"""Sigmoid/tanh lookup tables: built once, offline, in float64; looked up in integers.

A table of ``2**n + 1`` entries spans the whole integer range of its input format: entry ``i``
sits at input code ``-2**(b-1) + i * 2**s`` (``b`` input bits, ``s = b - n`` bits per segment),
so the last entry is the right end point ``2**(b-1)``, one past the largest code, as in
TFLite's 513-entry int16 tables. The lookups themselves are in ``reference.lut_lookup`` and
``ops.lut_lookup``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Literal

import numpy as np

from nnaqat.nna.spec import NnaSpec, QFormat

LutFunction = Literal["sigmoid", "tanh"]

FUNCTIONS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
}


@dataclass(frozen=True, eq=False)
class Lut:
    """A built table: ``table`` int64 ``(2**n + 1,)``, read-only, values in ``output`` format."""

    function: LutFunction
    table: np.ndarray
    input: QFormat
    output: QFormat
    interpolate: bool

    @property
    def segment_bits(self) -> int:
        """log2 of the input codes per segment."""
        return self.input.bits - (self.table.size - 1).bit_length() + 1


def _round_half_away(x: np.ndarray) -> np.ndarray:
    # TFLite builds its tables with std::round (ties away from zero); so do we.
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def build_lut(function: LutFunction, size: int, input: QFormat, output: QFormat, interpolate: bool) -> Lut:
    """The ``size``-entry table of ``function`` from ``input`` to ``output`` codes.

    With ``interpolate``, every entry but the last is lowered by half the error that linear
    interpolation makes at its segment's midpoint (TFLite's construction), which balances the
    chord's error between the segment's ends and middle. Without it, entries are the rounded
    function at their input point (the lookup takes the nearest entry).
    """
    segments = size - 1
    if segments < 2 or segments & (segments - 1) or segments > 2**input.bits:
        raise ValueError(f"size must be 2**n + 1 with 2 <= 2**n <= 2**{input.bits}, got {size}")
    f = FUNCTIONS[function]
    out_scale = 2.0**output.frac_bits
    step = 2 ** (input.bits - segments.bit_length() + 1)
    codes = -(2 ** (input.bits - 1)) + step * np.arange(size, dtype=np.float64)
    x = codes / 2.0**input.frac_bits
    samples = _round_half_away(f(x) * out_scale)
    if interpolate:
        midpoints = (x[:-1] + x[1:]) / 2
        chord_at_midpoint = _round_half_away((f(x[1:]) * out_scale + samples[:-1]) / 2)
        error = chord_at_midpoint - _round_half_away(f(midpoints) * out_scale)
        samples[:-1] -= _round_half_away(error / 2)
    low, high = -(2 ** (output.bits - 1)), 2 ** (output.bits - 1) - 1
    table = np.clip(samples, low, high).astype(np.int64)
    table.flags.writeable = False
    return Lut(function, table, input, output, interpolate)


def spec_lut(spec: NnaSpec, function: LutFunction) -> Lut:
    """The LSTM gate table of ``function`` under ``spec`` (gate format in, nonlinearity format out)."""
    return build_lut(function, spec.lut.size, spec.lstm.gate, spec.lstm.nonlinearity, spec.lut.interpolate)
