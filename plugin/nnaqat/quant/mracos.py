"""Multi-Regional Absolute Cosine (MRACos): S8BQAT's soft pull of weights onto their codebook."""

from __future__ import annotations

import math
from typing import Tuple

import torch

from nnaqat.quant.codebook import nearest_index


def _offsets(weights: torch.Tensor, centroids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(e, g)``: each weight's offset from its nearest centroid and the width of the gap it lies
    in (beyond the outermost centroids: the outermost gap). ``e / g`` is in ``[-1/2, 1/2]``
    inside the codebook's range."""
    c = centroids.to(weights.dtype)
    if c.numel() < 2:
        raise ValueError("MRACos needs at least 2 centroids")
    gaps = c[1:] - c[:-1]
    # (2L,): the gap above and the gap below each centroid, interleaved
    gap_table = torch.stack([torch.cat([gaps, gaps[-1:]]), torch.cat([gaps[:1], gaps])], dim=1).flatten()
    index = nearest_index(weights, c)
    e = weights - torch.take(c, index)  # take: a cheaper gather than indexing
    return e, torch.take(gap_table, index.mul_(2).add_(e < 0))


def mracos(weights: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Elementwise MRACos penalty of ``weights`` (any shape) for a sorted codebook.

    Between adjacent centroids ``c_j <= w <= c_{j+1}``:
    ``R(w) = 1 - |cos(pi * (w - c_j) / (c_{j+1} - c_j))|``, zero on every centroid and 1 at the
    midpoint (the Lloyd-Max decision threshold); its gradient points to the nearest centroid.
    Beyond the outermost centroids the same curve is mirrored with the outermost gap up to
    half a gap, then continues linearly with slope ``pi / gap``, so the pull back to the
    codebook never vanishes. Differentiable; returns a tensor shaped like ``weights``.
    """
    e, g = _offsets(weights, centroids)
    u = e / g
    return torch.where(u.abs() <= 0.5, 1 - torch.cos(math.pi * u), 1 + math.pi * (u.abs() - 0.5))


@torch.no_grad()
def mracos_and_grad(weights: torch.Tensor, centroids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mracos(weights, centroids), its derivative)``, elementwise, in closed form without
    autograd: ``dR/dw = pi / g * sin(pi * clamp((w - c) / g, -1/2, 1/2))`` for the nearest
    centroid ``c`` and gap ``g``. The definition of the compiled pass training runs
    (``nnaqat._kernels.mracos_pull``, which the tests hold to it)."""
    e, g = _offsets(weights, centroids)
    u = e / g
    angle = u.clamp(-0.5, 0.5) * math.pi
    value = 1 - torch.cos(angle) + math.pi * (u.abs() - 0.5).clamp_min(0)
    return value, torch.sin(angle) * math.pi / g
