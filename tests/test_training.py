"""Real training runs on real FSDD features: loss falls, resume is exact, DDP runs."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch
import yaml

from nnaqat.checkpoint import load_checkpoint, save_checkpoint
from nnaqat.data.datamodule import batch_to_tensors
from nnaqat.trainer import TrainConfig, lr_factor, pruned_loss_scale, train
from repo_paths import REPO


MODEL = {
    "encoder_kwargs": {"hidden_size": 48, "num_layers": 1, "dropout": 0.1},
    "predictor_kwargs": {"embedding_dim": 32},
    "joiner_dim": 32,
}


def config(tiny_data, exp_dir, **overrides) -> TrainConfig:
    base = dict(
        train_cuts=str(tiny_data.train),
        dev_cuts=str(tiny_data.dev),
        bpe_model=str(tiny_data.bpe_model),
        exp_dir=str(exp_dir),
        model=MODEL,
        num_epochs=2,
        max_duration=60.0,
        lr=3e-3,
        warmup_batches=5,
        warm_step=8,
        gain_db=6.0,
        progress=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_warmup_schedules():
    assert [pruned_loss_scale(b, 10) for b in (0, 9, 10, 19, 20)] == [0.0, 0.0, 0.1, 0.1, 1.0]
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.02)


def test_tiny_training_run_loss_falls(tiny_data, tmp_path):
    train(config(tiny_data, tmp_path, num_epochs=4))
    history = load_checkpoint(tmp_path / "epoch-4.pt")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    first, last = history[0], history[-1]
    assert last["train_loss_per_frame"] < 0.7 * first["train_loss_per_frame"]
    assert last["dev_pruned_loss"] < first["dev_pruned_loss"]
    assert (tmp_path / "tensorboard").is_dir()


def test_resume_after_interrupt_matches_uninterrupted(tiny_data, tmp_path):
    straight = tmp_path / "straight"
    train(config(tiny_data, straight))
    batches_per_epoch = load_checkpoint(straight / "epoch-1.pt")["batch_idx_train"]
    assert batches_per_epoch > 4

    interrupted = tmp_path / "interrupted"
    stop = batches_per_epoch + 3  # mid-way through epoch 2
    train(config(tiny_data, interrupted, save_every_n=stop, stop_after_batches=stop))
    assert not (interrupted / "epoch-2.pt").exists()
    train(config(tiny_data, interrupted, start_batch=stop))

    a = load_checkpoint(straight / "epoch-2.pt")
    b = load_checkpoint(interrupted / "epoch-2.pt")
    assert a["batch_idx_train"] == b["batch_idx_train"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0, msg=name)

    # Resuming from an epoch checkpoint continues with the next epoch.
    train(config(tiny_data, straight, num_epochs=3, start_epoch=3))
    assert load_checkpoint(straight / "epoch-3.pt")["history"][-1]["epoch"] == 3


def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "epoch-1.pt"
    save_checkpoint(path, {"x": torch.ones(3)})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted while writing")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"x": torch.zeros(3), "boom": Boom()})
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-1.pt"]


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    train(config(tiny_data, tmp_path / "ddp", num_epochs=1, max_duration=20.0, world_size=2, num_threads=1))
    train(config(tiny_data, tmp_path / "single", num_epochs=1, max_duration=20.0, num_threads=1))
    ddp, single = (load_checkpoint(tmp_path / run / "epoch-1.pt") for run in ("ddp", "single"))
    assert math.isfinite(ddp["history"][0]["dev_pruned_loss"])
    # Each rank takes its share of the epoch's batches (less each bucket's partial last one).
    steps = ddp["batch_idx_train"], single["batch_idx_train"]
    assert 0 < steps[0] <= (steps[1] + 1) // 2, steps


def test_ddp_with_no_full_batch_is_an_error(tiny_data, tmp_path):
    with pytest.raises(Exception, match="gets no full batch"):
        train(config(tiny_data, tmp_path, num_epochs=1, max_duration=60.0, world_size=2, num_threads=1))


def test_non_finite_losses_are_skipped_and_counted(tiny_data, tmp_path):
    from nnaqat.trainer import Trainer

    trainer = Trainer(config(tiny_data, tmp_path))
    batch = next(iter(trainer.train_dl))
    batch["inputs"][0] = float("nan")
    loss, stats = trainer.compute_loss(batch)
    assert torch.isfinite(loss)
    assert trainer.non_finite == 1
    assert stats["utterances"] == batch["inputs"].size(0) - 1


def test_a_non_finite_utterance_does_not_reach_the_weights(tiny_data, tmp_path):
    from nnaqat.trainer import Trainer

    trainer = Trainer(config(tiny_data, tmp_path, warm_step=0))
    batch = next(iter(trainer.train_dl))
    batch["inputs"][0] = float("nan")  # its loss is masked, but 0 * NaN would still reach the gradients
    before = [p.detach().clone() for p in trainer.model.parameters()]
    stats = trainer.train_step(batch)
    assert trainer.non_finite == 1 and stats["utterances"] == batch["inputs"].size(0) - 1
    assert trainer.skipped_steps == 0
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    batch["inputs"][:] = float("nan")  # nothing left to learn from: no update at all
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.train_step(batch)["utterances"] == 0
    assert all(torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))


def _step_with_bad_batches(rank: int, cfg: TrainConfig, port: int, out: str) -> None:
    """One DDP rank: rank 0's batch has one NaN utterance, rank 1's only NaN ones."""
    import os

    import torch.distributed as dist

    from nnaqat.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        trainer = Trainer(cfg, rank)
        batch = next(iter(trainer.train_dl))
        batch["inputs"][0 if rank == 0 else slice(None)] = float("nan")
        trainer.train_step(batch)
        torch.save({"params": [p.detach() for p in trainer.model.parameters()],
                    "skipped": trainer.skipped_steps}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_when_one_has_no_finite_loss(tiny_data, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(tiny_data, tmp_path, max_duration=20.0, world_size=2, num_threads=1, warm_step=0)
    context = mp.spawn(_step_with_bad_batches, args=(cfg, port, str(tmp_path)), nprocs=2, join=False)
    started = time.monotonic()
    while not context.join(timeout=5):  # False until every rank has exited
        if time.monotonic() - started > 300:  # a rank that skipped DDP's backward would wait forever
            for process in context.processes:
                process.kill()
            pytest.fail("a DDP rank hung after a batch without finite losses")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"]
    for p0, p1 in zip(ranks[0]["params"], ranks[1]["params"]):
        assert bool(torch.isfinite(p0).all()) and torch.equal(p0, p1)


def test_ctc_loss_joins_the_training_loss(tiny_data, tmp_path):
    from nnaqat.trainer import Trainer

    trainer = Trainer(config(tiny_data, tmp_path, ctc_loss_scale=0.3, warm_step=0))
    assert trainer.model.config.ctc_head and trainer.model.ctc_proj is not None
    trainer.model.eval()  # no dropout: the two passes below see the same network
    batch = next(iter(trainer.train_dl))
    with_ctc, stats = trainer.compute_loss(batch)
    trainer.config.ctc_loss_scale = 0.0
    without, _ = trainer.compute_loss(batch)
    assert stats["ctc_loss"] > 0
    torch.testing.assert_close(with_ctc - without, torch.tensor(0.3 * stats["ctc_loss"]), rtol=1e-4, atol=1e-5)


def test_ctc_loss_needs_a_model_with_the_head(tiny_data, tmp_path):
    from nnaqat.trainer import Trainer

    plain = Trainer(config(tiny_data, tmp_path / "plain"))
    assert plain.model.ctc_proj is None
    save_checkpoint(tmp_path / "plain.pt", plain._state(1, True))
    with pytest.raises(ValueError, match="has none"):
        Trainer(config(tiny_data, tmp_path / "ctc", ctc_loss_scale=0.3, init_checkpoint=str(tmp_path / "plain.pt")))


def test_fine_tuning_starts_from_fp32_and_averaging_needs_one_configuration(tiny_data, tmp_path):
    from nnaqat.checkpoint import load_model
    from nnaqat.quant import QuantConfig
    from nnaqat.trainer import Trainer

    plain = Trainer(config(tiny_data, tmp_path / "plain"))
    save_checkpoint(tmp_path / "plain.pt", plain._state(1, True))
    quantized = Trainer(config(tiny_data, tmp_path / "q", init_checkpoint=str(tmp_path / "plain.pt"),
                               quant=QuantConfig(quantizer="uniform", weight_bits=4)))
    save_checkpoint(tmp_path / "q.pt", quantized._state(1, True))
    with pytest.raises(ValueError, match="q.pt is quantized or emulates an NNA"):
        Trainer(config(tiny_data, tmp_path / "ft", init_checkpoint=str(tmp_path / "q.pt")))
    with pytest.raises(ValueError, match="cannot average .*q.pt with .*plain.pt: their quant_config differ"):
        load_model([tmp_path / "plain.pt", tmp_path / "q.pt"])


def test_dev_cuts_too_short_for_the_encoder_are_left_out(tiny_data, tmp_path):
    from lhotse import CutSet, load_manifest

    from nnaqat.trainer import Trainer

    dev = load_manifest(tiny_data.dev)
    short = dev[0].truncate(duration=0.03)  # 3 frames: under the encoder's subsampling
    CutSet.from_cuts([short, *list(dev)[1:]]).to_file(tmp_path / "dev.jsonl.gz")
    trainer = Trainer(config(tiny_data, tmp_path / "exp", dev_cuts=str(tmp_path / "dev.jsonl.gz")))
    assert short.id not in trainer.dev_cuts.ids and len(trainer.dev_cuts) == len(dev) - 1
    assert math.isfinite(trainer.validate()["dev_pruned_loss"])


def test_repeat_marked_targets_follow_the_model_into_fine_tuning(tiny_data, tmp_path):
    from nnaqat.trainer import Trainer

    marked = Trainer(config(tiny_data, tmp_path / "marked", model={**MODEL, "mark_repeats": True}))
    assert marked.tokenizer.mark_repeats and not Trainer(config(tiny_data, tmp_path / "plain")).tokenizer.mark_repeats
    batch = next(iter(marked.train_dl))
    targets = batch_to_tensors(batch, marked.tokenizer)[2]
    assert (targets == marked.tokenizer.repeat_marker_id).any()  # the connected digits have runs
    loss, _ = marked.compute_loss(batch)
    assert torch.isfinite(loss)
    save_checkpoint(tmp_path / "marked.pt", marked._state(1, True))
    fine_tune = Trainer(config(tiny_data, tmp_path / "ft", init_checkpoint=str(tmp_path / "marked.pt")))
    assert fine_tune.model.config.mark_repeats and fine_tune.tokenizer.mark_repeats


def test_variant_flag_drops_the_replaced_variants_arguments(tiny_data, tmp_path):
    """`--predictor lstm` over a config written for the stateless predictor (whose `context_size`
    the LSTM predictor does not take) builds the LSTM predictor with its own defaults."""
    model_config = tmp_path / "model.yaml"
    model_config.write_text(yaml.safe_dump({**MODEL, "predictor": "stateless",
                                            "predictor_kwargs": {"embedding_dim": 32, "context_size": 2}}))
    cmd = [sys.executable, REPO / "local/train.py", "--train-cuts", tiny_data.train, "--dev-cuts", tiny_data.dev,
           "--bpe-model", tiny_data.bpe_model, "--model-config", model_config, "--exp-dir", tmp_path / "exp",
           "--num-epochs", 1, "--max-duration", 60, "--progress", "false"]
    done = subprocess.run([*map(str, cmd), "--predictor", "lstm"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    model = load_checkpoint(tmp_path / "exp" / "epoch-1.pt")["model_config"]
    assert model["predictor"] == "lstm" and model["predictor_kwargs"] == {}
    assert model["encoder_kwargs"] == MODEL["encoder_kwargs"]  # the variants not overridden keep theirs
