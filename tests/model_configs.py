"""Model descriptions for tests: the shipped default (``egs/fsdd/conf/model.yaml``) with its sizes
shrunk, so tests exercise the default front end, predictor and targets at a fraction of the cost."""

from __future__ import annotations

import copy
from functools import cache

import yaml

from repo_paths import FSDD_CONF


@cache
def _default_model() -> dict:
    return yaml.safe_load((FSDD_CONF / "model.yaml").read_text())


def shrunk_default_model(hidden_size: int, num_layers: int, decoder_dim: int, subsampling_factor: int = 4) -> dict:
    """The default model config with an encoder of ``num_layers`` LSTMs of ``hidden_size`` units, predictor
    embedding and joiner of ``decoder_dim``, the given subsampling, and no dropout (tests train a few hundred
    updates)."""
    config = copy.deepcopy(_default_model())
    config["encoder_kwargs"].update(hidden_size=hidden_size, num_layers=num_layers,
                                    subsampling_factor=subsampling_factor, dropout=0.0)
    config["predictor_kwargs"]["embedding_dim"] = decoder_dim
    config["joiner_dim"] = decoder_dim
    return config
