"""The size summary a stored model writes beside itself (``OUT.size.json``): one schema for the
packed side-car (``local/export_packed.py``) and the NNA side-car (``local/export_nna.py``), so a
results table reads either the same way."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict


@dataclass(frozen=True)
class WeightSize:
    """The quantized weight tensors of a stored model."""

    count: int  # weights
    stored_bytes: int  # as stored: indices (or int8 values) with their codebooks and scales
    index_bits: float  # bits of each weight's index (or value), averaged over weights; codebooks excluded


def size_summary_path(artifact: Path) -> Path:
    """``model.pack`` -> ``model.size.json``, ``model.nna.npz`` -> ``model.nna.size.json``."""
    return artifact.with_suffix(".size.json")


def write_size_summary(artifact: Path, weights: WeightSize, details: Dict[str, Any]) -> Path:
    """Writes the summary of ``artifact`` (already on disk): its weights, its file size, and the
    writer's own report as ``details``. Returns the summary's path."""
    path = size_summary_path(artifact)
    summary = {"weights": asdict(weights), "file_bytes": artifact.stat().st_size, "details": details}
    path.write_text(json.dumps(summary, indent=1))
    return path


def read_weight_size(path: Path) -> WeightSize:
    """The :class:`WeightSize` of a summary written by :func:`write_size_summary`."""
    try:
        return WeightSize(**json.loads(path.read_text())["weights"])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a size summary of this version (write it again with its exporter)") from error
