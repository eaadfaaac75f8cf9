"""Shared fixtures: the real FSDD corpus (from ../shared) and a small prepared data set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lhotse import CutSet

from nnaqat.data.features import compute_fbank
from nnaqat.data.fsdd import compose_connected_digits, download_fsdd, prepare_fsdd
from nnaqat.checkpoint import load_model
from nnaqat.data.tokenizer import train_bpe
from nnaqat.trainer import TrainConfig, train
from model_configs import shrunk_default_model
from repo_paths import FSDD_TARBALL

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def fsdd_dir(tmp_path_factory) -> Path:
    """The FSDD corpus extracted from the local tarball (never downloaded in tests)."""
    if not FSDD_TARBALL.is_file():
        pytest.fail(f"FSDD tarball not found at {FSDD_TARBALL} (set NNAQAT_FSDD_TARBALL)")
    return download_fsdd(tmp_path_factory.mktemp("fsdd"), FSDD_TARBALL)


@pytest.fixture(scope="session")
def fsdd_manifests(fsdd_dir):
    return prepare_fsdd(fsdd_dir)


@dataclass
class TinyData:
    train: Path
    dev: Path
    bpe_model: Path
    root: Path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, fsdd_manifests) -> TinyData:
    """Connected-digit utterances with fbank features: 160 train (2 speakers) and 24 dev."""
    root = tmp_path_factory.mktemp("tiny")
    words = {s: CutSet.from_manifests(**fsdd_manifests[s]) for s in ("train", "dev")}
    train = compose_connected_digits(words["train"], 160, seed=1, prefix="train", speakers=["jackson", "theo"])
    dev = compose_connected_digits(words["dev"], 24, seed=2, prefix="dev", speakers=["jackson", "theo"])
    paths = {}
    for name, cuts in (("train", train), ("dev", dev)):
        featurised = compute_fbank(cuts, root / f"feats_{name}", num_jobs=1)
        paths[name] = root / f"cuts_{name}.jsonl.gz"
        featurised.to_file(paths[name])
    bpe = train_bpe([c.supervisions[0].text for c in train], root / "lang", vocab_size=32)
    return TinyData(train=paths["train"], dev=paths["dev"], bpe_model=bpe, root=root)


# A small model trained once per session on tiny_data, shared by the streaming, export and NNA tests:
# the recipe's front end (band limit, causal mean normalisation whose state rides in an extra state
# row), two LSTM layers (states with L > 1), 8x frame stacking, a context-2 stateless predictor,
# repeat-marked targets.
SMALL_MODEL = shrunk_default_model(hidden_size=96, num_layers=2, decoder_dim=32, subsampling_factor=8)
SMALL_EPOCHS = 16


@pytest.fixture(scope="session")
def small_exp_dir(tiny_data, tmp_path_factory) -> Path:
    """Experiment folder holding ``epoch-{SMALL_EPOCHS}.pt`` (about 530 updates on 160 utterances)."""
    exp = tmp_path_factory.mktemp("small-exp")
    train(
        TrainConfig(
            train_cuts=str(tiny_data.train), dev_cuts=str(tiny_data.dev), bpe_model=str(tiny_data.bpe_model),
            exp_dir=str(exp), model=SMALL_MODEL, num_epochs=SMALL_EPOCHS, max_duration=12.0, lr=4e-3,
            warmup_batches=20, warm_step=30, spec_augment=False, progress=False,
        )
    )
    return exp


@pytest.fixture(scope="session")
def small_checkpoint(small_exp_dir) -> Path:
    return small_exp_dir / f"epoch-{SMALL_EPOCHS}.pt"


@pytest.fixture(scope="session")
def small_model(small_checkpoint):
    return load_model([small_checkpoint])
