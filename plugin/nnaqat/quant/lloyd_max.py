"""Lloyd-Max scalar quantizer design: the MSE-optimal K-bit codebook of a weight tensor."""

from __future__ import annotations

from typing import Optional

import torch

from nnaqat.quant.codebook import nearest_index, snap_to_int8_grid


def _optimal_partition(points: torch.Tensor, counts: torch.Tensor, levels: int) -> torch.Tensor:
    """Globally MSE-optimal ``levels``-cell partition of sorted weighted points (1-D k-means).

    Optimal 1-D cells are contiguous, so a dynamic programme over ``cost[i, j]`` (the weighted
    squared error of points ``i..j`` around their mean) is exact: ``O(levels * n^2)``.
    Returns the centroids (weighted cell means), ascending.
    """
    n = points.numel()
    w = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    wx = torch.cat([points.new_zeros(1), (counts * points).cumsum(0)])
    wxx = torch.cat([points.new_zeros(1), (counts * points * points).cumsum(0)])
    i = torch.arange(n)[:, None]  # first point of the cell
    j = torch.arange(n)[None, :]  # last point of the cell
    mass = (w[j + 1] - w[i]).clamp_min(1e-300)
    total = wx[j + 1] - wx[i]
    cost = (wxx[j + 1] - wxx[i] - total * total / mass).clamp_min(0)
    cost = torch.where(j >= i, cost, torch.full_like(cost, float("inf")))
    best = cost[0].clone()  # best[j]: points 0..j in one cell
    splits = []
    for _ in range(1, levels):
        # candidate[i, j]: points 0..i-1 in the previous cells, i..j in the new one
        candidate = torch.cat([best.new_full((1, n), float("inf")), best[:-1, None] + cost[1:]])
        best, arg = candidate.min(dim=0)
        splits.append(arg)
    bounds, end = [], n - 1
    for arg in reversed(splits):
        start = int(arg[end])
        bounds.append((start, end))
        end = start - 1
    bounds.append((0, end))
    return torch.stack([total[s, e] / mass[s, e] for s, e in reversed(bounds)])


def lloyd_max(
    weights: torch.Tensor,
    bits: int,
    *,
    int8_scale: Optional[float | torch.Tensor] = None,
    num_bins: int = 1024,
    exact_max_levels: int = 32,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> torch.Tensor:
    """Lloyd-Max codebook of ``2**bits`` centroids for the empirical distribution of ``weights``.

    The weights' own distribution is the density. For up to ``exact_max_levels`` centroids a
    dynamic programme finds the global MSE optimum on a ``num_bins`` histogram (exactly on the
    weights when they have at most ``num_bins`` distinct values); wider codebooks, whose cost
    is quadratic in the bins per level, start from the quantiles. Lloyd iterations on the exact
    weights then converge to the optimality conditions: every centroid is the mean of its cell,
    every decision threshold the midpoint of its two centroids.

    Args:
      weights: any shape; flattened.
      bits: 1..8; fewer centroids result when the tensor has fewer distinct values.
      int8_scale: when given, centroids are snapped to multiples of it within +-127 (the
        tensor's int8 grid) and duplicates removed, so the codebook runs on an 8-bit NNA.
    Returns:
      Sorted 1-D centroids (float32), at most ``2**bits`` of them.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    x = weights.detach().flatten().double()
    if x.numel() == 0:
        raise ValueError("cannot design a codebook for an empty tensor")
    levels = 2**bits
    values, counts = torch.unique(x, return_counts=True)
    if values.numel() <= levels:
        centroids = values
    else:
        if values.numel() > num_bins:
            edges = torch.linspace(float(values[0]), float(values[-1]), num_bins + 1, dtype=torch.float64)
            cell = torch.bucketize(x, edges[1:-1])
            counts = torch.bincount(cell, minlength=num_bins).double()
            sums = torch.bincount(cell, weights=x, minlength=num_bins)
            keep = counts > 0
            values, counts = sums[keep] / counts[keep], counts[keep]
        if levels <= exact_max_levels:
            centroids = _optimal_partition(values, counts.double(), min(levels, values.numel()))
        else:
            probs = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
            centroids = torch.quantile(x if x.numel() <= 2**24 else x[:: x.numel() // 2**24 + 1], probs)
        for _ in range(max_iter):
            cell = nearest_index(x, centroids)
            sums = torch.bincount(cell, weights=x, minlength=centroids.numel())
            sizes = torch.bincount(cell, minlength=centroids.numel()).double()
            updated = torch.where(sizes > 0, sums / sizes.clamp_min(1), centroids)
            shift = (updated - centroids).abs().max()
            centroids = updated
            if shift <= tol * max(1.0, float(x.abs().max())):
                break
    centroids = centroids.float()
    if int8_scale is not None:
        centroids = snap_to_int8_grid(centroids, int8_scale)
    return centroids
