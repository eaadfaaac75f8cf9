"""Uniform symmetric K-bit fake quantization on the int8 grid, with straight-through gradients."""

from __future__ import annotations

import torch
from torch import nn

from nnaqat.quant.codebook import INT8_MAX, int8_scale


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Exactly ``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass.
    (``x + (value - x).detach()`` would not be exact in floating point.)"""
    return value.detach() + (surrogate - surrogate.detach())


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Rounds (half to even) in the forward pass, identity gradient."""
    return straight_through(torch.round(x), x)


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward pass; gradient multiplied by ``factor`` (LSQ's step-size scaling)."""
    return straight_through(x, x * factor)


def max_level(bits: int) -> int:
    """Largest integer step of the symmetric K-bit grid: ``2**(K-1) - 1``, and 1 for binary."""
    return max(2 ** (bits - 1) - 1, 1)


def uniform_int8_levels(bits: int) -> torch.Tensor:
    """The int8 values of the symmetric K-bit codebook: ``round(j * 127 / m)`` for
    ``j = -m..m``, ``m = 2**(K-1) - 1`` (K = 8 gives every int8 value but -128); for K = 1,
    ``{-127, 127}`` (no zero)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if bits == 1:
        return torch.tensor([-INT8_MAX, INT8_MAX], dtype=torch.int8)
    m = max_level(bits)
    return torch.round(torch.arange(-m, m + 1, dtype=torch.float64) * INT8_MAX / m).to(torch.int8)


def channel_view(scale: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A scale per tensor ``()`` or per output channel ``(C,)`` reshaped to broadcast over
    ``weights (C, ...)``."""
    return scale.reshape(-1, *([1] * (weights.dim() - 1)))


def fake_quantize(weights: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-channel K-bit fake quantization whose values lie on the int8 grid.

    ``weights (C, ...)``, ``scale (C,)`` the int8 step per output channel. Values are
    ``scale * round(q * 127 / m)`` with ``q = clamp(round(w / scale * m / 127), -m, m)``;
    gradients pass straight through the roundings and are zero where the clamp is active
    (clipped STE). With a learnable ``scale`` this gives LSQ's step-size gradient.
    """
    s = channel_view(scale, weights)
    if bits == 1:
        # Binary: +-127 * scale; the clipped STE passes gradients for |w| <= 127 * scale.
        sign = torch.where(weights >= 0, 1.0, -1.0).to(weights.dtype)
        return s * INT8_MAX * straight_through(sign, (weights / (s * INT8_MAX)).clamp(-1, 1))
    m = max_level(bits)
    q = round_ste((weights / s * (m / INT8_MAX)).clamp(-m, m))
    return s * round_ste(q * (INT8_MAX / m))


class UniformFakeQuant(nn.Module):
    """Parametrization: per-channel max-abs int8 scale, recomputed from the latent weights."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def scale(self, weights: torch.Tensor) -> torch.Tensor:
        if self.bits > 1:
            return int8_scale(weights, dim=0)
        # Binary codebooks use the mean magnitude (the L2-optimal +-a), not the maximum.
        level = weights.detach().abs().reshape(weights.size(0), -1).mean(dim=1)
        return (level / INT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weights, self.scale(weights), self.bits)


class LsqFakeQuant(nn.Module):
    """Parametrization with a learned per-channel step size (LSQ, Esser et al. 2020).

    The step is learned in the log domain, ``scale = initial * exp(log_gain)``: Adam's updates
    have a fixed size per step, which would swamp a step of ~1e-3 learned directly.
    """

    def __init__(self, weights: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = bits
        m = max_level(bits)
        w = weights.detach().abs().reshape(weights.size(0), -1)
        # LSQ's initial step 2 * mean|w| / sqrt(Qp), expressed as the int8 step of this grid.
        step = 2 * w.mean(dim=1) / m**0.5 if bits > 1 else w.mean(dim=1)
        self.register_buffer("initial_scale", (step * m / INT8_MAX).clamp_min(1e-8))
        self.log_gain = nn.Parameter(torch.zeros_like(self.initial_scale))
        self.grad_factor = 1.0 / (w.size(1) * m) ** 0.5

    @property
    def scale(self) -> torch.Tensor:
        """The int8 step per output channel ``(C,)``."""
        return self.initial_scale * torch.exp(self.log_gain)

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weights, grad_scale(self.scale, self.grad_factor), self.bits)
