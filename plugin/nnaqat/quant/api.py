"""``quantize_(model, config)``: the one call that makes a model quantization-aware."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from nnaqat import registry
from nnaqat.quant.config import QuantConfig, quantizable_parameters, resolve_bits
from nnaqat.quant.quantizers import WeightQuantizer, derive_codebook


def quantize_(model: nn.Module, config: QuantConfig, *, state_dict: Optional[dict] = None) -> WeightQuantizer:
    """Attaches the configured quantizer to ``model`` (in place) as ``model.quantizer``.

    Call it on the trained fp32 model (codebooks and scales start from its weights), before
    creating the optimizer (LSQ adds parameters). With ``state_dict`` (a checkpoint of a model
    quantized with the same config) the quantizer takes that checkpoint's structure and the
    whole model is loaded from it.
    """
    if getattr(model, "quantizer", None) is not None:
        raise ValueError("model already has a quantizer")
    names = quantizable_parameters(model.named_parameters())
    bits = resolve_bits(names, config) if config.quantizer != "none" else {}
    factory = registry.get("quantizer", config.quantizer)
    quantizer = factory(model, bits, config, state_dict=state_dict)
    model.quantizer = quantizer
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return quantizer


def derive_centroids(model: nn.Module, config: QuantConfig) -> Dict[str, Dict[str, torch.Tensor]]:
    """S8BQAT codebooks of every quantizable tensor of an fp32 model:
    ``{name: {"levels": int8 (L,), "scale": float32 () or (C,), "bits": int64 ()}}``."""
    names = quantizable_parameters(model.named_parameters())
    out = {}
    for name, bits in resolve_bits(names, config).items():
        levels, scale = derive_codebook(model.get_parameter(name), bits, config.codebook)
        out[name] = {"levels": levels, "scale": scale, "bits": torch.tensor(bits)}
    return out
