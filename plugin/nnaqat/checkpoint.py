"""Atomic checkpoint files, safe loading and checkpoint averaging."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from nnaqat.models.transducer import Transducer, build_transducer
from nnaqat.quant import QuantConfig, quantize_


def save_checkpoint(path: Path | str, state: Dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` atomically: an interrupted write never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path | str) -> Dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` (no pickled code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def average_state_dicts(states: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Element-wise mean of model state dicts (integer buffers are taken from the last one)."""
    averaged: Dict[str, torch.Tensor] = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            averaged[key] = sum(s[key].double() for s in states).div(len(states)).to(last.dtype)
        else:
            averaged[key] = last.clone()
    return averaged


def epoch_checkpoints(exp_dir: Path | str, epoch: int, avg: int) -> List[Path]:
    """``epoch-{epoch-avg+1}.pt`` ... ``epoch-{epoch}.pt`` (icefall's ``--epoch --avg``)."""
    if avg < 1 or epoch - avg + 1 < 1:
        raise ValueError(f"cannot average {avg} checkpoints ending at epoch {epoch}")
    return [Path(exp_dir) / f"epoch-{e}.pt" for e in range(epoch - avg + 1, epoch + 1)]


def load_model(paths: Sequence[Path | str]) -> Transducer:
    """Rebuilds the model of the first checkpoint with the average of all their weights.

    A quantization-aware checkpoint comes back with its quantizer attached and finalized: every
    quantized weight lies exactly on its codebook (checked), as the NNA will run it.
    """
    checkpoints = [load_checkpoint(p) for p in paths]
    model = build_transducer(checkpoints[0]["model_config"])
    state = average_state_dicts([c["model"] for c in checkpoints])
    quant = QuantConfig(**checkpoints[0].get("quant_config", {}))
    if quant.quantizer == "none":
        model.load_state_dict(state)
    else:
        quantizer = quantize_(model, quant, state_dict=state)
        quantizer.finalize(model)
        quantizer.check_on_codebook(model)
    return model.eval()
