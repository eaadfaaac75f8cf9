"""Multi-Regional Absolute Cosine (MRACos): S8BQAT's soft pull of weights onto their codebook."""

from __future__ import annotations

import math

import torch


def mracos(weights: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Elementwise MRACos penalty of ``weights`` (any shape) for a sorted codebook.

    Between adjacent centroids ``c_j <= w <= c_{j+1}``:
    ``R(w) = 1 - |cos(pi * (w - c_j) / (c_{j+1} - c_j))|``, zero on every centroid and 1 at the
    midpoint (the Lloyd-Max decision threshold); its gradient points to the nearest centroid.
    Beyond the outermost centroids the same curve is mirrored with the outermost gap up to
    half a gap, then continues linearly with slope ``pi / gap``, so the pull back to the
    codebook never vanishes. Returns a tensor shaped like ``weights``.
    """
    c = centroids.to(weights.dtype)
    if c.numel() < 2:
        raise ValueError("MRACos needs at least 2 centroids")
    gaps = c[1:] - c[:-1]
    cell = torch.bucketize(weights.detach(), c[1:-1], right=True)  # 0..L-2: w in [c_cell, c_cell+1]
    lower, gap = c[cell], gaps[cell]
    inside = 1 - torch.cos(math.pi * (weights - lower) / gap).abs()
    below = (c[0] - weights) / gaps[0]
    above = (weights - c[-1]) / gaps[-1]
    outside = torch.maximum(below, above)  # in gaps beyond the codebook (> 0 only outside)
    mirrored = torch.where(
        outside <= 0.5,
        1 - torch.cos(math.pi * outside.clamp(0, 0.5)),
        1 + math.pi * (outside - 0.5),
    )
    return torch.where(outside > 0, mirrored, inside)
