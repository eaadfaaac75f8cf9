"""Compact storage of an integer model's arrays: what an NNA toolchain's side-car holds.

Weight arrays with few distinct codes (sub-8-bit models: S8BQAT codebooks, possibly rescaled
per output channel by the NNA's weight scales) are stored as K-bit indices into an int8 codebook,
one per tensor or one per output row, whichever is smaller; every other integer array in the
narrowest signed type that holds it. Decoding gives back exactly the int64 arrays. NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Tuple

import numpy as np

from nnaqat.bitpack import pack_indices, unpack_indices
from nnaqat.sizes import WeightSize

SEP = "#"  # stored keys of an encoded weight: KEY#codebook, KEY#indices, KEY#shape, KEY#bits


def is_weight(key: str) -> bool:
    """Weight matrices and kernels (and the embedding table) of an integer model's arrays."""
    return key.endswith(".weight") or key == "predictor.embedding"


def _narrowest(array: np.ndarray) -> np.ndarray:
    if array.size == 0:
        return array.astype(np.int8)
    low, high = int(array.min()), int(array.max())
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype)
    return array.astype(np.int64)


def _index_bits(levels: int) -> int:
    return max(1, math.ceil(math.log2(levels)))


def _codebook(weight: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int] | None:
    """``(codebook, indices, bits)`` of the smaller of a per-tensor and a per-row codebook, or None
    when neither beats int8 (or the codes do not fit in int8)."""
    if weight.size == 0 or weight.min() < -128 or weight.max() > 127:
        return None
    best, best_bytes = None, weight.size  # int8
    levels, indices = np.unique(weight, return_inverse=True)
    bits = _index_bits(len(levels))
    if bits < 8 and math.ceil(weight.size * bits / 8) + len(levels) < best_bytes:
        best, best_bytes = (levels, indices.reshape(-1), bits), math.ceil(weight.size * bits / 8) + len(levels)
    rows = weight.reshape(weight.shape[0], -1)
    per_row = [np.unique(row, return_inverse=True) for row in rows]
    bits = _index_bits(max(len(levels) for levels, _ in per_row))
    size = 2**bits
    if bits < 8 and math.ceil(weight.size * bits / 8) + rows.shape[0] * size < best_bytes:
        codebook = np.stack([np.pad(levels, (0, size - len(levels)), mode="edge") for levels, _ in per_row])
        best = (codebook, np.concatenate([idx.reshape(-1) for _, idx in per_row]), bits)
    return best


@dataclass
class StorageReport:
    """Bytes of each kind of array as stored (before the ``.npz`` container's overhead)."""

    weights: int = 0  # K-bit indices and codebooks, or int8
    weight_count: int = 0
    luts: int = 0
    other: int = 0  # biases, multipliers, shifts, zero points, spec
    index_bits: Dict[str, int] = field(default_factory=dict)  # weight key -> K (8: stored as int8)
    counts: Dict[str, int] = field(default_factory=dict)  # weight key -> weights

    @property
    def total(self) -> int:
        return self.weights + self.luts + self.other

    @property
    def weight_size(self) -> WeightSize:
        mean_bits = sum(self.index_bits[k] * n for k, n in self.counts.items()) / max(self.weight_count, 1)
        return WeightSize(count=self.weight_count, stored_bytes=self.weights, index_bits=mean_bits)

    def table(self) -> str:
        return "\n".join([
            f"weights  {self.weights:>10,} bytes for {self.weight_count:,} weights ({self.weight_count:,} as int8; "
            f"index bits per tensor {sorted(set(self.index_bits.values()))}, "
            f"{self.weight_size.index_bits:.2f} per weight)",
            f"LUTs     {self.luts:>10,} bytes",
            f"other    {self.other:>10,} bytes (biases, requantization multipliers and shifts, zero points, spec)",
            f"total    {self.total:>10,} bytes",
        ])


def encode_arrays(arrays: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], StorageReport]:
    """Logical arrays (int64 integers, strings, floats) -> stored arrays and their sizes."""
    stored: Dict[str, np.ndarray] = {}
    report = StorageReport()
    for key, value in arrays.items():
        if not np.issubdtype(value.dtype, np.integer):
            stored[key] = value
            report.other += value.nbytes
            continue
        encoded = _codebook(value) if is_weight(key) else None
        if encoded is not None:
            codebook, indices, bits = encoded
            stored[f"{key}{SEP}codebook"] = codebook.astype(np.int8)
            stored[f"{key}{SEP}indices"] = np.frombuffer(pack_indices(indices, bits), dtype=np.uint8)
            stored[f"{key}{SEP}shape"] = np.asarray(value.shape, dtype=np.int64)
            stored[f"{key}{SEP}bits"] = np.asarray(bits)
            size = codebook.size + stored[f"{key}{SEP}indices"].size
        else:
            stored[key] = _narrowest(value)
            size = stored[key].nbytes
        if is_weight(key):
            report.weights += size
            report.weight_count += value.size
            report.counts[key] = value.size
            report.index_bits[key] = bits if encoded is not None else 8 * stored[key].itemsize
        elif key.startswith("luts."):
            report.luts += size
        else:
            report.other += size
    return stored, report


def decode_arrays(stored: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays`: integers come back as int64."""
    arrays: Dict[str, np.ndarray] = {}
    for key, value in stored.items():
        if SEP not in key:
            arrays[key] = value.astype(np.int64) if np.issubdtype(value.dtype, np.integer) else value
        elif key.endswith(SEP + "codebook"):
            name = key[: -len(SEP + "codebook")]
            shape = tuple(int(d) for d in stored[f"{name}{SEP}shape"])
            bits, count = int(stored[f"{name}{SEP}bits"]), int(np.prod(shape))
            indices = unpack_indices(stored[f"{name}{SEP}indices"].tobytes(), bits, count)
            codebook = value.astype(np.int64)
            if codebook.ndim == 1:
                arrays[name] = codebook[indices].reshape(shape)
            else:  # one codebook per row
                rows = indices.reshape(shape[0], -1)
                arrays[name] = np.take_along_axis(codebook, rows, axis=1).reshape(shape)
    return arrays
