"""One small model trained on real FSDD features, shared by the streaming and export tests.

Test modules wrap :func:`trained_model_dir` in their own session fixture; the result is
memoised here, so the model is trained once per pytest session however many modules use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from nnaqat.trainer import TrainConfig, train

# Two LSTM layers (states with L > 1), the recipe's 8x frame stacking and a context-2 stateless predictor.
MODEL = {
    "encoder_kwargs": {"hidden_size": 64, "num_layers": 2, "subsampling_factor": 8, "dropout": 0.0},
    "predictor_kwargs": {"embedding_dim": 32, "context_size": 2},
    "joiner_dim": 32,
}
EPOCHS = 12

_trained: Dict[str, Path] = {}


def trained_model_dir(tiny_data, tmp_path_factory) -> Path:
    """Experiment folder holding ``epoch-{EPOCHS}.pt`` (about 400 updates, 12 epochs of 160 utterances)."""
    if "exp" not in _trained:
        exp = tmp_path_factory.mktemp("streaming-exp")
        train(
            TrainConfig(
                train_cuts=str(tiny_data.train), dev_cuts=str(tiny_data.dev), bpe_model=str(tiny_data.bpe_model),
                exp_dir=str(exp), model=MODEL, num_epochs=EPOCHS, max_duration=12.0, lr=4e-3,
                warmup_batches=20, warm_step=30, spec_augment=False, progress=False,
            )
        )
        _trained["exp"] = exp
    return _trained["exp"]
