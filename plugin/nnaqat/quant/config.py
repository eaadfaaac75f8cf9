"""Quantization options and per-tensor bit widths."""

from __future__ import annotations

import argparse
import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Tuple

import yaml

if TYPE_CHECKING:
    import torch


@dataclass
class QuantConfig:
    """How to quantize a model's weights; every field is also a training/decoding flag."""

    quantizer: str = "none"  # registered quantizer: none, ptq, uniform, lsq, s8bqat
    weight_bits: int = 8  # bits for tensors no bit-config rule matches
    bit_config: str = ""  # YAML {glob on parameter name: bits}; the first matching rule wins
    centroids: str = ""  # s8bqat: codebooks from local/derive_centroids.py (else derived at start)
    codebook: str = "channel"  # s8bqat: one int8 scale per output "channel", or per "tensor" (the paper)
    mracos_weight: float = 1.0  # s8bqat: lambda of the MRACos regularizer
    mracos_ramp_batches: int = 200  # s8bqat: lambda rises linearly from 0 over these batches, then holds
    ste_forward: bool = False  # s8bqat: forward through the snapped weights, straight-through gradients
    compress_every: int = 100  # s8bqat: snap weights onto their centroids every N batches (0: only at the end)
    learn_scale: bool = False  # s8bqat with ste_forward: learn each codebook's int8 scale (LSQ's gradient)
    learn_levels: bool = False  # s8bqat with ste_forward: learn each codebook's int8 levels (GQ-style centroids)


# Only the deployed network is quantized: the simple (linear) heads exist for the pruned loss, the
# CTC head for its auxiliary loss.
TRAINING_ONLY = ("simple_am_proj.*", "simple_lm_proj.*", "ctc_proj.*")


def is_training_only(name: str) -> bool:
    """Whether a parameter/buffer name belongs to a head that is not deployed."""
    return any(fnmatch.fnmatchcase(name, g) for g in TRAINING_ONLY)


def quantizable_parameters(named_parameters: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """Names of the weight matrices/kernels (2-D or more) of the deployed network."""
    return [name for name, p in named_parameters if p.dim() >= 2 and not is_training_only(name)]


def load_bit_rules(path: str | Path) -> List[Tuple[str, int]]:
    """Reads a bit-config YAML mapping globs to bit widths 1..8, in file order."""
    rules = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: expected a mapping of parameter-name globs to bit widths")
    for glob, bits in rules.items():
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
            raise ValueError(f"{path}: bits for {glob!r} must be an integer in 1..8, got {bits!r}")
    return list(rules.items())


def resolve_bits(names: List[str], config: QuantConfig) -> Dict[str, int]:
    """Bit width of every name: the first matching bit-config rule, else ``weight_bits``."""
    if not 1 <= config.weight_bits <= 8:
        raise ValueError(f"weight_bits must be in 1..8, got {config.weight_bits}")
    rules = load_bit_rules(config.bit_config) if config.bit_config else []
    unmatched = [g for g, _ in rules if not any(fnmatch.fnmatchcase(n, g) for n in names)]
    if unmatched:  # a typo, or a rule for another model: either way worth seeing
        logging.warning("%s: no parameter matches %s (%d bits by default)", config.bit_config, unmatched,
                        config.weight_bits)
    return {n: next((b for g, b in rules if fnmatch.fnmatchcase(n, g)), config.weight_bits) for n in names}


POST_TRAINING_FLAGS = ("quantizer", "weight_bits", "bit_config", "codebook")


def add_post_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--quantizer --weight-bits --bit-config --codebook``: how a script quantizes an fp32
    checkpoint after training (``ptq``; ``s8bqat`` = Lloyd-Max rounding)."""
    from nnaqat import registry

    defaults = QuantConfig()
    parser.add_argument("--quantizer", default=defaults.quantizer, choices=registry.names("quantizer"),
                        help="quantize an fp32 checkpoint's weights after training")
    parser.add_argument("--weight-bits", type=int, default=defaults.weight_bits)
    parser.add_argument("--bit-config", default=defaults.bit_config, help="YAML {parameter glob: bits}; first match wins")
    parser.add_argument("--codebook", default=defaults.codebook, choices=["tensor", "channel"],
                        help="s8bqat: int8 scale per tensor or per output channel")


def post_training_config(args: argparse.Namespace) -> QuantConfig:
    """The :class:`QuantConfig` of :func:`add_post_training_arguments`' flags."""
    return QuantConfig(**{name: getattr(args, name) for name in POST_TRAINING_FLAGS})
