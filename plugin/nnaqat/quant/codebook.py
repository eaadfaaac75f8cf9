"""Codebooks on the int8 grid: per-tensor scales, snapping, nearest-centroid assignment."""

from __future__ import annotations

from typing import Optional

import torch

INT8_MAX = 127  # symmetric int8: -127..127 (-128 unused, as in TFLite's symmetric weights)


def int8_scale(weights: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Symmetric int8 scale ``max|w| / 127``, per tensor (``dim=None``, a 0-d tensor) or per
    slice along ``dim`` (shape ``(weights.size(dim),)``). Never zero."""
    w = weights.detach().abs()
    amax = w.amax() if dim is None else w.transpose(0, dim).reshape(w.size(dim), -1).amax(dim=1)
    return (amax / INT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)


def snap_to_int8_grid(values: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Rounds ``values`` to the nearest multiple of ``scale`` within ``+-127 * scale`` and removes
    duplicates: a sorted 1-D codebook whose entries are exact int8 values times ``scale``."""
    levels = torch.round(values.detach().double() / float(scale)).clamp(-INT8_MAX, INT8_MAX)
    return torch.unique(levels).float() * torch.as_tensor(scale, dtype=torch.float32)


def int8_levels(centroids: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """The int8 integers of a codebook built by :func:`snap_to_int8_grid` (int8 tensor)."""
    exact = centroids.double() / float(scale)
    levels = torch.round(exact)
    if levels.abs().max() > INT8_MAX or (exact - levels).abs().max() > 1e-3:
        raise ValueError("codebook is not on the int8 grid of this scale")
    return levels.to(torch.int8)


_MAX_COMPARED_THRESHOLDS = 7  # up to 3-bit codebooks


def nearest_index(weights: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every weight (same shape, int64).

    ``centroids`` is sorted ascending. A weight exactly on a decision threshold (the midpoint of
    two centroids) goes to the upper one.
    """
    thresholds = ((centroids[1:] + centroids[:-1]) / 2).to(weights.dtype)
    if thresholds.numel() <= _MAX_COMPARED_THRESHOLDS:
        # Small codebooks: counting thresholds passed is several times faster than bucketize.
        index = torch.zeros(weights.shape, dtype=torch.uint8, device=weights.device)
        for threshold in thresholds:
            index += weights.detach() >= threshold
        return index.long()
    return torch.bucketize(weights.detach(), thresholds, right=True)


def hard_compress(weights: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Every weight replaced by its nearest centroid (same shape and dtype); idempotent."""
    return centroids.to(weights.dtype)[nearest_index(weights, centroids)]
