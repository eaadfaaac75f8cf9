"""Quantization-aware training end to end: real FSDD features, the real loss, the recipe CLIs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnaqat.checkpoint import load_checkpoint, load_model
from nnaqat.quant import QuantConfig
from nnaqat.trainer import TrainConfig, train
from repo_paths import REPO

MODEL = {"encoder_kwargs": {"hidden_size": 64, "num_layers": 1}, "predictor_kwargs": {"embedding_dim": 32}, "joiner_dim": 32}


def run(cmd: list) -> subprocess.CompletedProcess:
    """Runs a recipe script; a failure shows its stderr."""
    done = subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd[0]} failed:\n{done.stderr[-3000:]}"
    return done


def base_config(tiny_data, exp_dir: Path, **overrides) -> TrainConfig:
    config = dict(
        train_cuts=str(tiny_data.train), dev_cuts=str(tiny_data.dev), bpe_model=str(tiny_data.bpe_model),
        exp_dir=str(exp_dir), model=MODEL, max_duration=12.0, warmup_batches=20, warm_step=10,
        spec_augment=False, progress=False,
    )
    config.update(overrides)
    return TrainConfig(**config)


@pytest.fixture(scope="module")
def fp32(tiny_data, tmp_path_factory) -> Path:
    """A small fp32 model trained until its dev WER is meaningful (~30 % on 24 utterances), averaged."""
    exp = tmp_path_factory.mktemp("fp32")
    train(base_config(tiny_data, exp, num_epochs=50, lr=5e-3))
    run([REPO / "local/average_checkpoints.py", "--exp-dir", exp, "--epoch", 50, "--avg", 2, "--out", exp / "pretrained.pt"])
    return exp


def dev_wer(exp: Path, epoch: int) -> float:
    return load_checkpoint(exp / f"epoch-{epoch}.pt")["history"][-1]["dev_greedy_wer"]


def test_s8bqat_fine_tuning_keeps_wer_close_to_fp32(fp32, tiny_data, tmp_path):
    fp32_wer = dev_wer(fp32, 50)
    assert fp32_wer < 60, "the fp32 start must be a working model for this test to mean anything"
    centroids = tmp_path / "centroids.pt"
    run([REPO / "local/derive_centroids.py", "--checkpoint", fp32 / "pretrained.pt", "--weight-bits", 3, "--out", centroids])
    quant = QuantConfig(quantizer="s8bqat", weight_bits=3, centroids=str(centroids), mracos_weight=10.0,
                        mracos_ramp_batches=20, compress_every=10)
    train(base_config(tiny_data, tmp_path, num_epochs=3, lr=1e-3, warm_step=0, warmup_batches=5, quant=quant,
                      init_checkpoint=str(fp32 / "pretrained.pt")))
    history = load_checkpoint(tmp_path / "epoch-3.pt")["history"]
    assert max(h["dev_greedy_wer"] for h in history) <= fp32_wer + 10.0
    # The saved model reloads with every weight on its 3-bit int8-grid codebook.
    model = load_model([tmp_path / "epoch-3.pt"])
    model.quantizer.check_on_codebook(model)
    for name, q in model.quantizer.quantized(model).items():
        assert q.levels.numel() <= 8 and q.levels.dtype == torch.int8, name


@pytest.mark.parametrize("quantizer", ["uniform", "lsq", "s8bqat"])
def test_quantizer_is_chosen_by_flag(fp32, tiny_data, tmp_path, quantizer):
    run([REPO / "local/train.py", "--train-cuts", tiny_data.train, "--dev-cuts", tiny_data.dev,
         "--bpe-model", tiny_data.bpe_model, "--exp-dir", tmp_path, "--init-checkpoint", fp32 / "pretrained.pt",
         "--num-epochs", 1, "--max-duration", 30, "--lr", 0.001, "--warm-step", 0, "--progress", "false",
         "--quantizer", quantizer, "--weight-bits", 4, *(["--ste-forward", "true"] if quantizer == "s8bqat" else [])])
    state = load_checkpoint(tmp_path / "epoch-1.pt")
    if quantizer == "s8bqat":  # stage 7's picture: the float weights behind the snapped forward pass
        out = run([REPO / "local/plot_weights.py", "--before", fp32 / "pretrained.pt", "--after",
                   tmp_path / "epoch-1.pt", "--out", tmp_path / "weights.png"])
        assert "wrote" in out.stdout and (tmp_path / "weights.png").stat().st_size > 10_000
    assert state["quant_config"]["quantizer"] == quantizer and state["quant_config"]["weight_bits"] == 4
    pack = tmp_path / "model.pack"
    done = run([REPO / "local/export_packed.py", "--exp-dir", tmp_path, "--epoch", 1, "--out", pack])
    assert "packed" in done.stdout and pack.is_file()
    # The side-car decodes as it is, to the checkpoint's hypotheses.
    for checkpoint in (pack, tmp_path / "epoch-1.pt"):
        run([REPO / "local/decode.py", "--exp-dir", tmp_path, "--checkpoint", checkpoint,
             "--bpe-model", tiny_data.bpe_model, "--cuts", f"dev={tiny_data.dev}"])
    recogs = [(tmp_path / "greedy_search" / f"recogs-dev-{name}.txt").read_text() for name in ("model", "epoch-1")]
    assert recogs[0] == recogs[1] and "hyp=" in recogs[0]


def test_post_training_quantization_flag(fp32, tiny_data, tmp_path):
    cmd = [REPO / "local/decode.py", "--exp-dir", tmp_path, "--checkpoint", fp32 / "pretrained.pt",
           "--bpe-model", tiny_data.bpe_model, "--cuts", f"dev={tiny_data.dev}"]
    wers = {}
    for bits in ("8", "1"):
        out = run(cmd + ["--quantizer", "ptq", "--weight-bits", bits])
        assert "lie exactly on their codebooks" in out.stderr
        wers[bits] = float((tmp_path / "greedy_search" / "errs-dev-pretrained.txt").read_text().split()[2])
    # int8 is nearly free on a working model; 1-bit rounding without training is not.
    assert wers["8"] <= dev_wer(fp32, 50) + 5 and wers["1"] > wers["8"]
