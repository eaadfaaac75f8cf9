"""Quantization parameters that are not calibrated by their user.

Where one emulated op consumes another's output, the NNA passes integer codes: the consumer
must read its input with exactly the producer's scale and zero point. :class:`TiedRange` gives
it those (quantizing a dequantized value with the same parameters returns the same codes, so the
float hand-over between modules is exact). :class:`FixedRange` is a scale known a priori, such as
a tanh output's. Both stand in for ``linear.RangeObserver``: ``observe`` and ``freeze`` do
nothing, ``scale_and_zero_point`` answers.
"""

from __future__ import annotations

from typing import Protocol, Tuple

import torch
from torch import nn


class RangeSource(Protocol):
    """Anything that knows a tensor's quantization parameters."""

    def scale_and_zero_point(self) -> Tuple[torch.Tensor, int]: ...


class TiedRange(nn.Module):
    """The scale and zero point of another tensor (the producer's), never observed here."""

    def __init__(self, source: RangeSource) -> None:
        super().__init__()
        # Not a submodule: the source has one owner, which checkpoints and freezes it.
        object.__setattr__(self, "source", source)

    def observe(self, x: torch.Tensor) -> None:
        """The producer calibrates the range; its consumers only read it."""

    def freeze(self) -> None:
        """Frozen with its producer."""

    def scale_and_zero_point(self) -> Tuple[torch.Tensor, int]:
        return self.source.scale_and_zero_point()


class FixedRange(nn.Module):
    """A constant scale and zero point (e.g. ``2**-7`` and 0 for an int8 tanh output)."""

    def __init__(self, scale: float, zero_point: int = 0) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        self.zero_point = zero_point

    def observe(self, x: torch.Tensor) -> None:
        """Nothing to calibrate."""

    def freeze(self) -> None:
        """Always frozen."""

    def scale_and_zero_point(self) -> Tuple[torch.Tensor, int]:
        return self.scale, self.zero_point

    def extra_repr(self) -> str:
        return f"scale={float(self.scale)!r}, zero_point={self.zero_point}"
