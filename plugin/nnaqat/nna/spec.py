"""The emulated NNA's numerics as a typed, frozen spec, loaded from ``conf/nna/*.yaml`` (design §4)."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Tuple

import yaml

Rounding = Literal["single", "double", "tosa", "fp32_rne"]
Overflow = Literal["saturate", "wrap"]
Granularity = Literal["per_channel", "per_tensor"]
# Where the output zero point is added relative to the requantization rounding.
ZeroPointOrder = Literal["after_rounding", "before_rounding"]
Placement = Literal["nna", "cpu"]

ROUNDINGS: Tuple[str, ...] = typing.get_args(Rounding)
OVERFLOWS: Tuple[str, ...] = typing.get_args(Overflow)

_QFORMAT = re.compile(r"^Q(\d+)\.(\d+)$")


class NnaSpecError(ValueError):
    """A spec file with an unknown key or an invalid value; the message names the file and key."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class QFormat:
    """Signed fixed point ``Qm.f``: ``1 + m + f`` bits, value = integer * 2**-f."""

    integer_bits: int
    frac_bits: int

    def __post_init__(self) -> None:
        _check(self.integer_bits >= 0 and self.frac_bits >= 0, "Q-format parts must be >= 0")
        _check(2 <= self.bits <= 32, f"Q{self.integer_bits}.{self.frac_bits} must have 2..32 bits")

    @property
    def bits(self) -> int:
        return 1 + self.integer_bits + self.frac_bits

    @classmethod
    def parse(cls, text: str) -> QFormat:
        """``"Q3.12"`` -> ``QFormat(3, 12)``."""
        match = _QFORMAT.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"expected a Q-format like 'Q3.12', got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"Q{self.integer_bits}.{self.frac_bits}"


@dataclass(frozen=True)
class WeightFormat:
    bits: int = 8
    granularity: Granularity = "per_channel"

    def __post_init__(self) -> None:
        _check(2 <= self.bits <= 8, f"bits must be in 2..8, got {self.bits}")


@dataclass(frozen=True)
class ActivationFormat:
    bits: int = 8  # matmul inputs; asymmetric with a calibrated zero point

    def __post_init__(self) -> None:
        _check(2 <= self.bits <= 16, f"bits must be in 2..16, got {self.bits}")


@dataclass(frozen=True)
class AccumulatorFormat:
    bits: int = 32
    overflow: Overflow = "saturate"

    def __post_init__(self) -> None:
        _check(8 <= self.bits <= 32, f"bits must be in 8..32, got {self.bits}")


@dataclass(frozen=True)
class RequantizationFormat:
    """Fixed-point multiplier M0 (Q0.31) and shift, rounded by ``rounding``.

    The zero point is added to the *rounded* value by default, as ONNX Runtime
    (MlasRequantizeOutput) and TFLite do; the two orders differ on ties whenever the rounding
    is not invariant to integer offsets. ``before_rounding`` (round(acc * m + zp)) is only
    defined for ``fp32_rne``, where the float sum is what a float-emulating runtime rounds.
    """

    rounding: Rounding = "single"
    zero_point: ZeroPointOrder = "after_rounding"

    def __post_init__(self) -> None:
        _check(
            self.zero_point == "after_rounding" or self.rounding == "fp32_rne",
            f"zero_point 'before_rounding' needs rounding 'fp32_rne', not {self.rounding!r}",
        )


@dataclass(frozen=True)
class LutFormat:
    """Sigmoid/tanh tables: ``size = 2**n + 1`` entries (the last is the right end point)."""

    size: int = 513
    interpolate: bool = True

    def __post_init__(self) -> None:
        segments = self.size - 1
        _check(
            segments >= 2 and segments & (segments - 1) == 0,
            f"size must be 2**n + 1 with n >= 1, got {self.size}",
        )


@dataclass(frozen=True)
class LstmFormat:
    """Integer formats inside an LSTM cell."""

    gate: QFormat = QFormat(3, 12)  # gate pre-activations (LUT input)
    nonlinearity: QFormat = QFormat(0, 15)  # sigmoid/tanh outputs
    cell_bits: int = 16  # cell state, with a power-of-two scale
    hidden_bits: int = 8
    # The cell scale 2**-cell_frac_bits, fixed; None: calibrated (the finest scale holding the
    # observed range). A narrow cell state may need a finer scale than its range would give.
    cell_frac_bits: Optional[int] = None

    def __post_init__(self) -> None:
        _check(self.gate.bits <= 16, f"gate must have at most 16 bits, got {self.gate}")
        _check(self.nonlinearity.integer_bits == 0, f"nonlinearity must be Q0.f, got {self.nonlinearity}")
        _check(self.nonlinearity.bits <= 16, f"nonlinearity must have at most 16 bits, got {self.nonlinearity}")
        _check(2 <= self.cell_bits <= 16, f"cell_bits must be in 2..16, got {self.cell_bits}")
        _check(2 <= self.hidden_bits <= 16, f"hidden_bits must be in 2..16, got {self.hidden_bits}")
        if self.cell_frac_bits is not None:
            low, high = self.cell_frac_bit_limits()
            _check(
                low <= self.cell_frac_bits <= high,
                f"cell_frac_bits must be in {low}..{high} with gate {self.gate} and nonlinearity "
                f"{self.nonlinearity}, got {self.cell_frac_bits}",
            )

    def cell_frac_bit_limits(self) -> Tuple[int, int]:
        """Smallest and largest cell fractional bits the integer cell update can use: the shift
        of ``i * g`` (``2n - cell_frac_bits``) must lie in 0..31, and rescaling the cell to the
        gate format may multiply by at most ``2**14`` (an int16 operand)."""
        doubled = 2 * self.nonlinearity.frac_bits
        return max(doubled - 31, self.gate.frac_bits - 14), doubled


@dataclass(frozen=True)
class NnaSpec:
    """Everything that decides the integers the NNA computes.

    ``placement`` holds ``(op-name glob, "nna" | "cpu")`` rules in file order; the first match
    wins and ops no rule matches run on the NNA.
    """

    weights: WeightFormat = WeightFormat()
    activations: ActivationFormat = ActivationFormat()
    accumulator: AccumulatorFormat = AccumulatorFormat()
    requantization: RequantizationFormat = RequantizationFormat()
    lut: LutFormat = LutFormat()
    lstm: LstmFormat = LstmFormat()
    placement: Tuple[Tuple[str, Placement], ...] = field(default=(("*", "nna"),))

    def __post_init__(self) -> None:
        segments = self.lut.size - 1
        _check(
            segments <= 2**self.lstm.gate.bits,
            f"lut.size - 1 = {segments} exceeds the {2**self.lstm.gate.bits} codes of lstm.gate {self.lstm.gate}",
        )

    def placement_of(self, op_name: str) -> Placement:
        """``"nna"`` or ``"cpu"`` for a model op such as ``"joiner.output_linear"``."""
        return next((p for glob, p in self.placement if fnmatch.fnmatchcase(op_name, glob)), "nna")

    def placed(self, rules: str) -> NnaSpec:
        """This spec with ``"GLOB=nna|cpu,GLOB=..."`` rules put before its own (so they win),
        e.g. ``placed("encoder.layers.*=cpu")``; ``""`` changes nothing.

        Raises:
          NnaSpecError: a rule is not ``GLOB=nna`` or ``GLOB=cpu``.
        """
        parsed = {}
        for rule in filter(None, (r.strip() for r in rules.split(","))):
            glob, sep, where = rule.partition("=")
            if not sep:
                raise NnaSpecError(f"placement rule {rule!r}: expected GLOB=nna or GLOB=cpu")
            if glob.strip() in parsed:
                raise NnaSpecError(f"placement {rules!r}: {glob.strip()!r} is placed twice")
            parsed[glob.strip()] = where.strip()
        try:
            added = _placement_rules(parsed)
        except ValueError as error:
            raise NnaSpecError(f"placement {rules!r}: {error}") from None
        return dataclasses.replace(self, placement=added + self.placement)

    @classmethod
    def from_yaml(cls, path: str | Path) -> NnaSpec:
        """Loads a spec file; keys left out take the defaults above.

        Raises:
          NnaSpecError: unknown key, wrong type or invalid value, naming the file and the key.
        """
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(data, f"{path}")

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> NnaSpec:
        """A spec from the mapping a spec file holds (e.g. :meth:`to_dict`'s, stored in a
        checkpoint); errors name ``source``."""
        return _build(cls, data, source, "")

    def to_dict(self) -> Dict[str, Any]:
        """The spec as the mapping a spec file holds: plain YAML/JSON types, every key given;
        ``from_dict(spec.to_dict()) == spec``."""
        return _as_mapping(self)


def _as_mapping(value: Any) -> Any:
    if isinstance(value, QFormat):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {f.name: _as_mapping(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):  # placement rules, in order
        return {glob: placement for glob, placement in value}
    return value


def _build(cls: type, data: Any, path: str, prefix: str) -> Any:
    """The dataclass ``cls`` from a YAML mapping, checking every key and value."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise NnaSpecError(f"{path}: {where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise NnaSpecError(f"{path}: unknown key {prefix + str(unknown[0])!r} (expected one of {names})")
    values = {name: _value(hints[name], data[name], path, f"{prefix}{name}") for name in names if name in data}
    try:
        return cls(**values)
    except ValueError as error:
        raise NnaSpecError(f"{path}: {where}: {error}") from None


def _value(hint: Any, value: Any, path: str, key: str) -> Any:
    """One typed value; ``key`` is its dotted path for error messages."""
    try:
        if typing.get_origin(hint) is typing.Union:  # Optional[X]: null or an X
            if value is None:
                return None
            (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            return _value(hint, value, path, key)
        if hint is QFormat:
            return QFormat.parse(value)
        if dataclasses.is_dataclass(hint):
            return _build(hint, value, path, f"{key}.")
        if typing.get_origin(hint) is tuple:  # placement rules
            return _placement_rules(value)
        if hint is bool:
            _check(isinstance(value, bool), f"expected true or false, got {value!r}")
        elif hint is int:
            _check(isinstance(value, int) and not isinstance(value, bool), f"expected an integer, got {value!r}")
        elif typing.get_origin(hint) is Literal:
            _check(value in typing.get_args(hint), f"expected one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    except NnaSpecError:
        raise
    except ValueError as error:
        raise NnaSpecError(f"{path}: {key}: {error}") from None


def _placement_rules(value: Any) -> Tuple[Tuple[str, str], ...]:
    _check(isinstance(value, dict), f"expected a mapping of op-name globs to nna/cpu, got {value!r}")
    allowed = typing.get_args(Placement)
    for glob, placement in value.items():
        _check(isinstance(glob, str) and glob != "", f"op name must be a non-empty string, got {glob!r}")
        _check(placement in allowed, f"placement of {glob!r} must be one of {list(allowed)}, got {placement!r}")
    return tuple(value.items())

