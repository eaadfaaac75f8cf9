"""Bit packing of small non-negative integers (K-bit codebook indices); NumPy only, so the
torch-free integer engine can read what the exporters write."""

from __future__ import annotations

import numpy as np


def pack_indices(indices: np.ndarray, bits: int) -> bytes:
    """Packs non-negative integers ``< 2**bits`` into ``ceil(n * bits / 8)`` bytes, LSB first."""
    indices = np.asarray(indices).reshape(-1)
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= 2**bits):
        raise ValueError(f"indices span [{int(indices.min())}, {int(indices.max())}]: not all fit in {bits} bits")
    indices = indices.astype(np.uint16)
    bit_planes = (indices[:, None] >> np.arange(bits, dtype=np.uint16)) & 1  # (n, bits)
    return np.packbits(bit_planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_indices(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: ``count`` indices as int64; raises unless ``data`` has
    exactly the bytes they take (a truncated file would otherwise read as zeros)."""
    if len(data) != -(-count * bits // 8):
        raise ValueError(f"{count} {bits}-bit indices take {-(-count * bits // 8)} bytes, got {len(data)}")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=count * bits)
    planes = flat.reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)).sum(axis=1)
