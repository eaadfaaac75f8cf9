"""Accelerator-aware training on real FSDD: ``TrainConfig.nna_spec`` converts the fp32 baseline,
calibrates and freezes, fine-tunes through the emulation (with a weight quantizer on top), and
its checkpoints decode through the integer engine exactly as through the emulated model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from lhotse import CutSet, load_manifest

from nnaqat.checkpoint import load_checkpoint, load_model
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.dataset import decode_cuts
from nnaqat.nna.linear import RangeObserver
from nnaqat.nna.models import NnaLstmEncoder
from nnaqat.nna.recognize import integer_decode_cuts
from nnaqat.quant import QuantConfig
from nnaqat.trainer import TrainConfig, Trainer
from repo_paths import NNA_CONF

SPEC = NNA_CONF / "int8.yaml"


def observer_ranges(model: torch.nn.Module) -> dict:
    return {name: m.min_max.clone() for name, m in model.named_modules() if isinstance(m, RangeObserver)}


@pytest.fixture(scope="module")
def aat_run(tiny_data, small_checkpoint, tmp_path_factory):
    """One epoch of AAT from the fp32 baseline, with 6-bit uniform weights; the ranges right
    after calibration, the weights before training, and a training batch with its loss then."""
    exp = tmp_path_factory.mktemp("aat")
    config = TrainConfig(
        train_cuts=str(tiny_data.train), dev_cuts=str(tiny_data.dev), bpe_model=str(tiny_data.bpe_model),
        exp_dir=str(exp), init_checkpoint=str(small_checkpoint), num_epochs=1, max_duration=60.0,
        lr=5e-4, warmup_batches=2, warm_step=0, spec_augment=False, progress=False, nna_spec=str(SPEC),
        nna_calibration_batches=2, quant=QuantConfig(quantizer="uniform", weight_bits=6),
    )  # fmt: skip
    trainer = Trainer(config)
    calibrated = observer_ranges(trainer.model)
    weights = copy.deepcopy(trainer.model.encoder.layers[0].state_dict())
    batch = next(iter(trainer.train_dl))
    torch.manual_seed(0)  # the same dropout draws before and after training
    with torch.no_grad():
        before = trainer.compute_loss(batch)[0].item()
    trainer.run()
    return exp, trainer, calibrated, weights, (batch, before)


def test_training_converts_calibrates_freezes_and_learns(aat_run):
    exp, trainer, calibrated, weights, before = aat_run
    model = trainer.model
    assert isinstance(model.encoder, NnaLstmEncoder) and model.quantizer is not None
    assert calibrated and all(m.frozen for m in model.modules() if isinstance(m, RangeObserver))
    after = observer_ranges(model)
    assert all(torch.equal(after[name], value) for name, value in calibrated.items())  # frozen through training
    moved = [k for k, v in model.encoder.layers[0].state_dict().items() if k.endswith("original") or "weight" in k]
    assert moved and any(not torch.equal(model.encoder.layers[0].state_dict()[k], weights[k]) for k in moved)
    state = load_checkpoint(exp / "epoch-1.pt")
    assert state["nna_spec"]["lstm"]["gate"] == "Q3.12"
    history = state["history"][-1]
    assert torch.isfinite(torch.tensor(history["train_loss_per_frame"]))
    batch, loss_before = before
    torch.manual_seed(0)
    with torch.no_grad():
        assert trainer.compute_loss(batch)[0].item() < loss_before  # it learns what it is trained on


def test_checkpoint_decodes_identically_through_the_integer_engine(aat_run, tiny_data):
    exp = aat_run[0]
    model = load_model([exp / "epoch-1.pt"])  # converted, quantizer finalized, ranges restored
    assert isinstance(model.encoder, NnaLstmEncoder)
    tokenizer = Tokenizer(tiny_data.bpe_model)
    dev = load_manifest(tiny_data.dev)
    short = dev[7].truncate(duration=0.03)  # too short for the encoder: an empty hypothesis, counted
    cuts = CutSet.from_cuts([*dev.subset(first=7), short])
    emulated = sorted(decode_cuts(model, cuts, tokenizer, progress=False))
    integer = sorted(integer_decode_cuts(model, cuts, tokenizer, chunk_frames=2))
    assert [r[0] for r in integer] == [r[0] for r in emulated] and short.id in [r[0] for r in integer]
    assert [r[2] for r in integer if r[0] == short.id] == [[]]
    differing = sum(a[2] != b[2] for a, b in zip(emulated, integer))
    print(f"AAT checkpoint: {differing} of {len(integer)} hypotheses differ between emulation and engine")
    assert differing == 0
    assert sum(len(r[2]) for r in integer) > 2 * len(integer)  # real hypotheses, not empty ones


def test_distillation_adds_the_kl_to_the_fp32_model_it_starts_from(tiny_data, small_checkpoint, tmp_path):
    """``distill_scale``: the init checkpoint's model, fixed and unconverted, is the teacher, and
    the loss gains ``distill_scale`` times the emulated model's KL to it (that descending the KL
    brings a model toward its teacher is tested on the float model in test_models.py)."""
    base = dict(train_cuts=str(tiny_data.train), dev_cuts=str(tiny_data.dev), bpe_model=str(tiny_data.bpe_model),
                exp_dir=str(tmp_path), num_epochs=1, max_duration=60.0, lr=5e-4, warmup_batches=1, warm_step=0,
                spec_augment=False, progress=False, nna_spec=str(SPEC), nna_calibration_batches=2)
    with pytest.raises(ValueError, match="--distill-scale needs --init-checkpoint"):
        Trainer(TrainConfig(**base, distill_scale=1.0))
    trainer = Trainer(TrainConfig(**base, init_checkpoint=str(small_checkpoint), distill_scale=10.0))
    assert not isinstance(trainer.teacher.encoder, NnaLstmEncoder) and not trainer.teacher.training
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    batch = next(iter(trainer.train_dl))
    losses = {}
    for scale in (10.0, 0.0):
        trainer.config = dataclasses.replace(trainer.config, distill_scale=scale)
        torch.manual_seed(0)
        with torch.no_grad():
            losses[scale] = trainer.compute_loss(batch)
    distill = losses[10.0][1]["distill_loss"]
    assert distill > 0 and losses[0.0][1]["distill_loss"] == pytest.approx(distill)  # the emulation differs from fp32
    assert losses[10.0][0].item() - losses[0.0][0].item() == pytest.approx(10.0 * distill, rel=1e-4)
