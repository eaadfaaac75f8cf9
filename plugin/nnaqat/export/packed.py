"""Packed side-car: K-bit indices, an int8 codebook and scales per quantized tensor.

File layout: the magic ``NNAQPACK``, a little-endian uint64 header length, a UTF-8 JSON header,
then raw little-endian blobs the header points at (offsets relative to the end of the header).
Quantized tensors store bit-packed indices (LSB first), int8 levels and float32 scales (one per
tensor or per output channel); every other tensor of the deployed model is float32.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from nnaqat.atomic import atomic_write
from nnaqat.bitpack import pack_indices, unpack_indices
from nnaqat.models.transducer import Transducer, build_transducer
from nnaqat.quant.config import is_training_only
from nnaqat.quant.quantizers import QuantizedTensor
from nnaqat.sizes import WeightSize

MAGIC = b"NNAQPACK"
VERSION = 1


@dataclass
class SizeReport:
    """Bytes of the quantized weight tensors as packed, and as fp32 / per-channel int8 would store them."""

    num_weights: int = 0
    packed_bytes: int = 0
    fp32_bytes: int = 0
    int8_bytes: int = 0
    other_fp32_bytes: int = 0  # biases, normalisation statistics: float32 in every format
    bits: Dict[str, int] = field(default_factory=dict)  # per quantized tensor
    counts: Dict[str, int] = field(default_factory=dict)  # weights per quantized tensor

    @property
    def mean_bits(self) -> float:
        """Average index bits per quantized weight (codebooks and scales excluded)."""
        return sum(self.bits[n] * c for n, c in self.counts.items()) / max(self.num_weights, 1)

    @property
    def weight_size(self) -> WeightSize:
        return WeightSize(count=self.num_weights, stored_bytes=self.packed_bytes, index_bits=self.mean_bits)

    def table(self) -> str:
        rows = [("fp32", self.fp32_bytes), ("int8 (per-channel)", self.int8_bytes), ("packed", self.packed_bytes)]
        lines = [f"{self.num_weights} quantized weights, {self.mean_bits:.2f} bits each on average; "
                 f"other tensors {self.other_fp32_bytes} bytes (fp32)"]
        lines += [f"  {name:<20} {size:>10} bytes  ({size / self.fp32_bytes:.3f} of fp32)" for name, size in rows]
        return "\n".join(lines)


def _deployed(name: str) -> bool:
    return not name.startswith("quantizer.") and not is_training_only(name)


def save_packed(model: Transducer, path: Path | str) -> SizeReport:
    """Writes a finalized quantized model (``model.quantizer.finalize`` done) as a side-car."""
    quantizer = getattr(model, "quantizer", None)
    if quantizer is None:
        raise ValueError("the model has no quantizer; run nnaqat.quant.quantize_ and finalize first")
    if getattr(model, "nna_spec", None) is not None:  # its integer ranges and formats do not fit here
        raise ValueError("the model emulates an NNA: write its side-car with local/export_nna.py")
    quantizer.check_on_codebook(model)
    quantized: Dict[str, QuantizedTensor] = quantizer.quantized(model)
    blobs: List[bytes] = []
    offset = 0
    entries = []
    report = SizeReport()

    def add(blob: bytes) -> List[int]:
        nonlocal offset
        blobs.append(blob)
        offset += len(blob)
        return [offset - len(blob), len(blob)]

    for name, tensor in model.state_dict().items():
        if not _deployed(name):
            continue
        entry = {"name": name, "shape": list(tensor.shape)}
        q = quantized.get(name)
        if q is None:
            entry["float32"] = add(tensor.detach().float().numpy().astype("<f4").tobytes())
            report.other_fp32_bytes += 4 * tensor.numel()
        else:
            entry.update(
                bits=q.bits,
                indices=add(pack_indices(q.indices.numpy(), q.bits)),
                levels=add(q.levels.numpy().astype(np.int8).tobytes()),
                scale=add(q.scale.float().reshape(-1).numpy().astype("<f4").tobytes()),
                per_channel=q.scale.dim() > 0,
            )
            n = tensor.numel()
            report.num_weights += n
            report.packed_bytes += math.ceil(n * q.bits / 8) + q.levels.numel() + 4 * q.scale.numel()
            report.fp32_bytes += 4 * n
            report.int8_bytes += n + 4 * tensor.size(0)
            report.bits[name] = q.bits
            report.counts[name] = n
        entries.append(entry)
    header = json.dumps(
        {
            "version": VERSION,
            "model_config": model.config.to_dict(),
            "tensors": entries,
        }
    ).encode()
    atomic_write(path, lambda f: f.writelines([MAGIC, struct.pack("<Q", len(header)), header, *blobs]))
    return report


def _read_tensor(entry: dict, blob) -> torch.Tensor:
    """One header entry's tensor (float32 as stored, or a quantized one dequantized)."""
    shape = entry["shape"]
    if "float32" in entry:
        return torch.from_numpy(np.frombuffer(blob(entry["float32"]), dtype="<f4").copy()).reshape(shape)
    scale = torch.from_numpy(np.frombuffer(blob(entry["scale"]), dtype="<f4").copy())
    q = QuantizedTensor(
        indices=torch.from_numpy(unpack_indices(blob(entry["indices"]), entry["bits"], math.prod(shape))).reshape(shape),
        levels=torch.from_numpy(np.frombuffer(blob(entry["levels"]), dtype=np.int8).copy()),
        scale=scale if entry["per_channel"] else scale.reshape(()),
        bits=entry["bits"],
    )
    return q.dequantize()


def load_packed(path: Path | str) -> Transducer:
    """Rebuilds the model from a side-car; its weights equal the saved model's bit for bit."""
    raw = Path(path).read_bytes()
    if raw[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path}: not an nnaqat packed model")
    start = len(MAGIC) + 8
    try:
        (length,) = struct.unpack("<Q", raw[len(MAGIC) : start])
        header = json.loads(raw[start : start + length])
    except (struct.error, ValueError) as error:
        raise ValueError(f"{path}: unreadable header (truncated file?): {error}") from None
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported version {header.get('version')}")
    body = memoryview(raw)[start + length :]

    def blob(span: List[int]) -> bytes:
        if span[0] + span[1] > len(body):
            raise ValueError(f"bytes {span[0]}-{span[0] + span[1]} of a {len(body)}-byte body (truncated file?)")
        return bytes(body[span[0] : span[0] + span[1]])

    state = {}
    for entry in header["tensors"]:
        try:
            state[entry["name"]] = _read_tensor(entry, blob)
        except ValueError as error:
            raise ValueError(f"{path}: {entry['name']}: {error}") from None
    model = build_transducer(header["model_config"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(_deployed(k) for k in missing):
        raise ValueError(f"{path}: tensors do not match the model (missing {missing}, unexpected {unexpected})")
    return model.eval()
