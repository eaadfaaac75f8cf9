"""Atomic checkpoint files, safe loading and checkpoint averaging."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from nnaqat.atomic import atomic_write
from nnaqat.models.transducer import Transducer, build_transducer
from nnaqat.nna import NnaSpec
from nnaqat.nna.convert import nna_
from nnaqat.quant import QuantConfig, quantize_


def save_checkpoint(path: Path | str, state: Dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` atomically: an interrupted write never leaves a broken file."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path | str) -> Dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` (no pickled code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_state(model: Transducer) -> Dict[str, Any]:
    """What a model file (icefall's ``pretrained.pt``) holds for :func:`load_model` to rebuild
    ``model``: its weights and config, its quantizer's config and its NNA spec, if any."""
    quantizer = getattr(model, "quantizer", None)
    spec = getattr(model, "nna_spec", None)
    return {
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "quant_config": asdict(quantizer.config if quantizer is not None else QuantConfig()),
        "nna_spec": spec.to_dict() if spec is not None else None,
    }


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


def model_from_state(state: Dict[str, Any], source: str = "model") -> Transducer:
    """Rebuilds the model a :func:`model_state` dict describes, in eval mode. A quantized model
    comes back with its quantizer attached and finalized: every quantized weight lies exactly on
    its codebook (checked), as the NNA will run it. A model trained with NNA emulation comes back
    converted (``nna.convert.nna_``), ranges included. ``source`` names it in errors."""
    model = build_transducer(state["model_config"])
    if state.get("nna_spec"):  # trained with NNA emulation: convert before loading
        nna_(model, NnaSpec.from_dict(state["nna_spec"], source))
    quant = QuantConfig(**state.get("quant_config", {}))
    if quant.quantizer == "none":
        model.load_state_dict(state["model"])
    else:
        quantizer = quantize_(model, quant, state_dict=state["model"])
        quantizer.finalize(model)
        quantizer.check_on_codebook(model)
    return model.eval()


def load_model(paths: Sequence[Path | str]) -> Transducer:
    """Rebuilds the model of the checkpoints with the average of their weights (see
    :func:`model_from_state`); they must share the model, quantizer and NNA configurations."""
    checkpoints = [load_checkpoint(p) for p in paths]
    first = checkpoints[0]
    for path, checkpoint in zip(paths[1:], checkpoints[1:]):
        for key in ("model_config", "quant_config", "nna_spec"):
            if checkpoint.get(key) != first.get(key):
                raise ValueError(f"cannot average {path} with {paths[0]}: their {key} differ")
        if checkpoint["model"].keys() != first["model"].keys():
            raise ValueError(f"cannot average {path} with {paths[0]}: their tensors differ")
    state = average_state_dicts([c["model"] for c in checkpoints])
    return model_from_state({**first, "model": state}, str(paths[0]))


def add_model_arguments(parser: argparse.ArgumentParser, exp_dir_required: bool = False) -> None:
    """The flags every decoding/export script takes to name a model: ``--exp-dir --epoch --avg`` or
    ``--checkpoint`` (a ``.pt`` checkpoint or a ``.pack`` side-car)."""
    parser.add_argument("--exp-dir", type=Path, required=exp_dir_required)
    parser.add_argument("--epoch", type=int, help="use epoch-N.pt (averaged with --avg)")
    parser.add_argument("--avg", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint (.pt or .pack) instead of --epoch/--avg")


def load_model_from_args(args: argparse.Namespace) -> Tuple[Transducer, str]:
    """The model named by :func:`add_model_arguments` flags and a suffix naming it in result files."""
    from nnaqat.export.packed import load_packed  # the side-car module imports this one

    if args.checkpoint:
        if args.checkpoint.suffix == ".pack":
            return load_packed(args.checkpoint), args.checkpoint.stem
        return load_model([args.checkpoint]), args.checkpoint.stem
    if args.exp_dir and args.epoch:
        return load_model(epoch_checkpoints(args.exp_dir, args.epoch, args.avg)), f"epoch-{args.epoch}-avg-{args.avg}"
    raise SystemExit("give --exp-dir with --epoch (and --avg), or --checkpoint")
