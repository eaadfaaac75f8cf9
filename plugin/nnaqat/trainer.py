"""Transducer training loop: pruned RNN-T loss with warm-up, resumable, optionally DDP."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.utils.parametrize as parametrize
from lhotse import load_manifest_lazy
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from nnaqat.checkpoint import load_checkpoint, load_model, model_from_state, model_state, save_checkpoint
from nnaqat.data.datamodule import (
    AugmentConfig,
    batch_to_tensors,
    eval_dataloader,
    feature_statistics,
    filter_trainable,
    train_dataloader,
)
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.search import greedy_search
from nnaqat.decode.wer import error_stats
from nnaqat.models.transducer import Transducer, TransducerConfig, build_transducer
from nnaqat.nna import NnaSpec
from nnaqat.nna.convert import nna_
from nnaqat.nna.recognize import calibrate_on_cuts
from nnaqat.quant import QuantConfig, quantize_


@dataclass
class TrainConfig:
    """Training options; names follow icefall's command-line flags."""

    train_cuts: str
    dev_cuts: str
    bpe_model: str
    exp_dir: str
    model: Dict[str, Any] = field(default_factory=dict)  # TransducerConfig fields except vocab_size
    quant: QuantConfig = field(default_factory=QuantConfig)
    init_checkpoint: str = ""  # start from this model (e.g. the fp32 baseline for quantization-aware training)
    num_epochs: int = 10
    start_epoch: int = 1
    start_batch: int = 0
    max_duration: float = 200.0
    lr: float = 2e-3
    warmup_batches: int = 100
    weight_decay: float = 1e-6
    grad_clip: float = 5.0
    prune_range: int = 5
    lm_scale: float = 0.25
    am_scale: float = 0.0
    simple_loss_scale: float = 0.5
    ctc_loss_scale: float = 0.0  # > 0: train an auxiliary CTC head on the encoder with this weight
    distill_scale: float = 0.0  # > 0: add this weight times the KL to the init checkpoint's model (the teacher)
    delay_penalty: float = 0.0  # rewards earlier emission in the RNN-T losses (k2's delay_penalty)
    context_dropout: float = 0.0  # chance of hiding each token from the predictor in training
    warm_step: int = 100  # pruned-loss scale 0 before, 0.1 up to 2x, then 1
    spec_augment: bool = True
    time_warp: int = 20
    time_mask_frames: int = 20
    gain_db: float = 0.0
    eq_db: float = 0.0
    mel_warp: float = 0.0
    seed: int = 42
    save_every_n: int = 0  # write checkpoint-B.pt every n batches (0: never)
    world_size: int = 1
    num_threads: int = 0  # torch threads per process (0: leave as is)
    stop_after_batches: int = 0  # stop after this global batch (tests: interrupt a run)
    progress: bool = True
    nna_spec: str = ""  # AAT: emulate this NNA (conf/nna/*.yaml) in training
    nna_calibration_batches: int = 20  # AAT: batches (no augmentation) that set the activation ranges, then frozen


def pruned_loss_scale(batch_idx: int, warm_step: int) -> float:
    """icefall's warm-up: the simple loss alone first, because its gradients set the pruning window."""
    if batch_idx < warm_step:
        return 0.0
    return 0.1 if batch_idx < 2 * warm_step else 1.0


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.02 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Stop(Exception):
    """Raised inside the loop when ``stop_after_batches`` is reached (simulated interruption)."""


def _seed_batch(seed: int, batch_idx: int) -> None:
    # One seed per global batch: augmentation and dropout of batch b are the same whether or
    # not the run was interrupted before it.
    batch_seed = seed * 1_000_003 + batch_idx
    torch.manual_seed(batch_seed)
    # lhotse's SpecAugment draws from Python's random and NumPy's global generators.
    random.seed(batch_seed)
    np.random.seed(batch_seed % 2**32)


class Trainer:
    """One process of a (possibly distributed) training run."""

    def __init__(self, config: TrainConfig, rank: int = 0) -> None:
        self.config = config
        self.rank = rank
        self.exp_dir = Path(config.exp_dir)
        self.tokenizer = Tokenizer(config.bpe_model)
        _seed_batch(config.seed, -1)  # deterministic initialisation
        self.teacher: Optional[Transducer] = None  # --distill-scale: the init checkpoint's model, fixed
        if config.init_checkpoint:
            init = load_checkpoint(config.init_checkpoint)
            if init.get("nna_spec") or init.get("quant_config", {}).get("quantizer", "none") != "none":
                raise ValueError(f"{config.init_checkpoint} is quantized or emulates an NNA: fine-tuning starts "
                                 "from an fp32 checkpoint (pass the quantizer and NNA spec as flags)")
            self.model: Transducer = build_transducer(init["model_config"])
            self.model.load_state_dict(init["model"])
            if self.model.config.vocab_size != len(self.tokenizer):
                raise ValueError(f"{config.init_checkpoint} has {self.model.config.vocab_size} tokens, {config.bpe_model} {len(self.tokenizer)}")
            if config.ctc_loss_scale > 0 and self.model.ctc_proj is None:
                raise ValueError(f"--ctc-loss-scale needs a CTC head, and {config.init_checkpoint} has none")
            if config.distill_scale > 0:  # what fine-tuning should keep of the model it starts from
                self.teacher = load_model([config.init_checkpoint]).requires_grad_(False)
        else:
            if config.distill_scale > 0:
                raise ValueError("--distill-scale needs --init-checkpoint (the teacher)")
            model_config = {**config.model, "ctc_head": config.ctc_loss_scale > 0}
            self.model = build_transducer(TransducerConfig(vocab_size=len(self.tokenizer), **model_config))
        # The targets the model learns (or learned, when fine-tuning).
        self.tokenizer = self.tokenizer.with_repeat_marks(self.model.config.mark_repeats)
        # The NNA emulation goes in first: a quantizer then wraps the emulated layers' weights.
        self.nna_spec = NnaSpec.from_yaml(config.nna_spec) if config.nna_spec else None
        if self.nna_spec is not None:
            nna_(self.model, self.nna_spec)
        self.quantizer = quantize_(self.model, config.quant) if config.quant.quantizer != "none" else None
        cuts = load_manifest_lazy(config.train_cuts).to_eager()
        self.train_cuts, self.dropped = filter_trainable(cuts, self.tokenizer, self.model.encoder.output_length)
        # Dev cuts too short for the encoder would stop validation, and the epoch's checkpoint with it.
        self.dev_cuts, _ = filter_trainable(
            load_manifest_lazy(config.dev_cuts).to_eager(), self.tokenizer, self.model.encoder.output_length
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.train_dl = train_dataloader(
            self.train_cuts,
            config.max_duration,
            AugmentConfig(
                spec_augment=config.spec_augment, time_warp=config.time_warp,
                time_mask_frames=config.time_mask_frames, gain_db=config.gain_db, eq_db=config.eq_db,
                mel_warp=config.mel_warp,
            ),
            seed=config.seed,
            world_size=config.world_size,
            rank=rank,
        )
        self.batches_per_epoch = sum(1 for _ in self.train_dl.sampler)
        if self.batches_per_epoch == 0:  # DDP drops each bucket's last, partial batch
            raise ValueError(
                f"{config.train_cuts}: rank {rank} of {config.world_size} gets no full batch of "
                f"{config.max_duration} s; lower --max-duration or use fewer processes"
            )
        total = self.batches_per_epoch * config.num_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config.warmup_batches, total)
        )
        self.batch_idx_train = 0
        self.non_finite = 0
        self.skipped_steps = 0
        self.history: list = []
        self._resume()
        if self.nna_spec is not None and self.batch_idx_train == 0:  # resumed runs restore their ranges
            self._calibrate_nna()
        self.ddp_model = DistributedDataParallel(self.model) if config.world_size > 1 else self.model
        self.writer = SummaryWriter(str(self.exp_dir / "tensorboard")) if rank == 0 else None

    # ---- state ----
    def _state(self, epoch: int, epoch_done: bool) -> Dict[str, Any]:
        return {
            **model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.train_dl.sampler.state_dict(),
            "epoch": epoch,
            "epoch_done": epoch_done,
            "batch_idx_train": self.batch_idx_train,
            "non_finite": self.non_finite,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "train_config": asdict(self.config),
        }

    def _resume(self) -> None:
        config = self.config
        if config.start_batch > 0:
            path = self.exp_dir / f"checkpoint-{config.start_batch}.pt"
        elif config.start_epoch > 1:
            path = self.exp_dir / f"epoch-{config.start_epoch - 1}.pt"
        else:
            self.start_epoch = 1
            if not config.init_checkpoint:
                self._init_feature_norm()
            return
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batch_idx_train = state["batch_idx_train"]
        self.non_finite = state["non_finite"]
        self.skipped_steps = state.get("skipped_steps", 0)  # older checkpoints did not count them
        self.history = list(state["history"])
        if state["epoch_done"]:
            self.start_epoch = state["epoch"] + 1
        else:
            self.start_epoch = state["epoch"]
            self.train_dl.sampler.load_state_dict(state["sampler"])
        logging.info("resumed from %s at epoch %d, batch %d", path, self.start_epoch, self.batch_idx_train)

    def _calibrate_nna(self) -> None:
        """EMA ranges of the emulated NNA from the first training batches (every rank the same
        ones, unaugmented), then frozen: training adapts to the ranges the device will use."""
        count = calibrate_on_cuts(self.model, self.train_cuts, self.tokenizer, self.config.nna_calibration_batches,
                                  self.config.max_duration, self.config.prune_range)
        logging.info("NNA ranges calibrated on %d batches and frozen", count)

    def _init_feature_norm(self) -> None:
        encoder = self.model.encoder
        stats = feature_statistics(self.train_cuts, is_speech=encoder.cmn.is_speech if encoder.cmn is not None else None)
        encoder.feature_norm.set_statistics(stats.mean, stats.std)
        if encoder.cmn is not None:
            encoder.cmn.speech_mean.copy_(stats.speech_mean)

    # ---- loop ----
    def _losses(
        self, x: torch.Tensor, x_lens: torch.Tensor, y: torch.Tensor, y_lens: torch.Tensor, again: bool = False
    ) -> tuple:
        """Per-utterance ``(simple, pruned, ctc, distill)`` losses, each ``(N,)`` (zeros for the
        terms not trained). ``again``: a second pass over the batch, through the bare model (DDP's
        forward starts with a collective the other ranks, passing once, would not match; its
        gradient hooks still all-reduce the backward pass)."""
        config = self.config
        simple, pruned, ctc, distill = (self.model if again else self.ddp_model)(
            x, x_lens, y, y_lens, prune_range=config.prune_range, am_scale=config.am_scale,
            lm_scale=config.lm_scale, delay_penalty=config.delay_penalty, context_dropout=config.context_dropout,
            teacher=self.teacher,
        )
        return simple, pruned, torch.zeros_like(simple) if ctc is None else ctc, (
            torch.zeros_like(simple) if distill is None else distill
        )

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, Dict[str, float]]:
        """Training loss of one batch (mean over utterances with finite losses) and its
        statistics; the quantizer's penalty joins in :meth:`train_step`.

        Utterances with a non-finite loss are counted, named and left out: the batch is run
        again without them, since masking their loss alone would still let their NaN
        activations into the weights' gradients (0 * NaN)."""
        x, x_lens, y, y_lens, cut_ids, _ = batch_to_tensors(batch, self.tokenizer)
        config = self.config
        losses = self._losses(x, x_lens, y, y_lens)
        for again in (False, True):
            finite = torch.stack([torch.isfinite(term) for term in losses]).all(0)
            if bool(finite.all()):
                break
            bad = [cut_ids[i] for i in (~finite).nonzero().flatten().tolist()]
            self.non_finite += len(bad)
            logging.warning("non-finite loss for %s (skipped; %d so far)", bad, self.non_finite)
            keep = finite.nonzero().flatten()
            if again or not keep.numel():  # left masked; a non-finite gradient then skips the step
                break
            x, x_lens, y, y_lens = x[keep], x_lens[keep], y[keep], y_lens[keep]
            cut_ids = [cut_ids[i] for i in keep.tolist()]
            losses = self._losses(x, x_lens, y, y_lens, again=True)
        simple, pruned, ctc, distill = losses
        scale = pruned_loss_scale(self.batch_idx_train, config.warm_step)
        num = finite.sum().clamp_min(1)
        simple_mean = torch.where(finite, simple, 0.0).sum() / num
        pruned_mean = torch.where(finite, pruned, 0.0).sum() / num
        ctc_mean = torch.where(finite, ctc, 0.0).sum() / num
        distill_mean = torch.where(finite, distill, 0.0).sum() / num
        loss = (config.simple_loss_scale * simple_mean + scale * pruned_mean + config.ctc_loss_scale * ctc_mean
                + config.distill_scale * distill_mean)
        frames = float(self.model.encoder.output_length(x_lens[finite]).sum())
        stats = {
            "utterances": float(finite.sum()),
            "simple_loss": simple_mean.item(),
            "pruned_loss": pruned_mean.item(),
            "ctc_loss": ctc_mean.item(),
            "distill_loss": distill_mean.item(),
            "loss_per_frame": pruned[finite].sum().item() / frames if frames > 0 else float("nan"),
        }
        return loss, stats

    def train_step(self, batch: dict) -> Dict[str, float]:
        """One update: loss, backward (and the quantizer's penalty), clipped optimizer step,
        schedule, quantizer hook."""
        with parametrize.cached():  # fake-quantized weights computed once per step (nn.LSTM reads them twice)
            loss, stats = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        stats["penalty"] = 0.0
        utterances = torch.tensor(stats["utterances"])
        if self.config.world_size > 1:  # every rank must take the same branch: DDP's backward all-reduces
            dist.all_reduce(utterances)
        if utterances > 0:
            loss.backward()
            if self.quantizer is not None:
                stats["penalty"] = self.quantizer.penalty_backward(self.model, self.batch_idx_train) or 0.0
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            if torch.isfinite(norm):  # the same on every rank: DDP averaged the gradients
                self.optimizer.step()
            else:  # e.g. another rank's batch had no finite loss: no update rather than NaN weights
                self.skipped_steps += 1
                logging.warning("non-finite gradient at batch %d: step skipped (%d so far)",
                                self.batch_idx_train, self.skipped_steps)
        self.scheduler.step()
        self.batch_idx_train += 1
        if self.quantizer is not None:
            self.quantizer.after_step(self.model, self.batch_idx_train)
        return stats

    def validate(self) -> Dict[str, float]:
        """Dev pruned loss per utterance and greedy-search WER of the model as deployed
        (quantized weights finalized on a copy)."""
        # Quantized: a copy, rebuilt as decoding loads a checkpoint (weights on their codebooks).
        model = model_from_state(model_state(self.model)) if self.quantizer is not None else self.model
        model.eval()
        config = self.config
        loss, utterances = 0.0, 0.0
        results = []
        with torch.no_grad():
            for batch in eval_dataloader(self.dev_cuts, config.max_duration):
                x, x_lens, y, y_lens, cut_ids, texts = batch_to_tensors(batch, self.tokenizer)
                pruned = model(x, x_lens, y, y_lens, prune_range=config.prune_range,
                               am_scale=config.am_scale, lm_scale=config.lm_scale).pruned
                finite = torch.isfinite(pruned)
                loss += float(pruned[finite].sum())
                utterances += float(finite.sum())
                encoder_out, encoder_lens, _ = model.encoder(x, x_lens)
                hyps = greedy_search(model, encoder_out, encoder_lens)
                results.extend((i, t.split(), self.tokenizer.decode(h).split()) for i, t, h in zip(cut_ids, texts, hyps))
        self.model.train()
        return {"dev_pruned_loss": loss / max(utterances, 1.0), "dev_greedy_wer": error_stats(results)[0].wer}

    def train_epoch(self, epoch: int) -> None:
        """Trains one epoch (from where the sampler stands, when resumed), then on rank 0
        validates and writes ``epoch-N.pt``."""
        config = self.config
        sampler = self.train_dl.sampler
        sampler.set_epoch(epoch)
        self.model.train()
        started = time.time()
        iterator = iter(self.train_dl)
        bar = tqdm(total=self.batches_per_epoch, desc=f"epoch {epoch}",
                   disable=not (config.progress and self.rank == 0), leave=False)
        running = []
        while True:
            if config.stop_after_batches and self.batch_idx_train >= config.stop_after_batches:
                raise _Stop()
            _seed_batch(config.seed, self.batch_idx_train)
            try:
                batch = next(iterator)
            except StopIteration:
                break
            stats = self.train_step(batch)
            running.append(stats["loss_per_frame"])
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss_per_frame']:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if self.writer is not None:
                self.writer.add_scalar("train/pruned_loss_per_frame", stats["loss_per_frame"], self.batch_idx_train)
                self.writer.add_scalar("train/simple_loss", stats["simple_loss"], self.batch_idx_train)
                if config.ctc_loss_scale > 0:
                    self.writer.add_scalar("train/ctc_loss", stats["ctc_loss"], self.batch_idx_train)
                if config.distill_scale > 0:
                    self.writer.add_scalar("train/distill_loss", stats["distill_loss"], self.batch_idx_train)
                self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.batch_idx_train)
                if self.quantizer is not None:
                    self.writer.add_scalar("train/quant_penalty", stats["penalty"], self.batch_idx_train)
            if config.save_every_n and self.batch_idx_train % config.save_every_n == 0 and self.rank == 0:
                save_checkpoint(self.exp_dir / f"checkpoint-{self.batch_idx_train}.pt", self._state(epoch, False))
        bar.close()
        if self.rank != 0:
            return
        finite = [v for v in running if math.isfinite(v)]
        record = {"epoch": epoch, "batch": self.batch_idx_train, "seconds": time.time() - started,
                  "train_loss_per_frame": sum(finite) / max(len(finite), 1), **self.validate()}
        self.history.append(record)
        logging.info("epoch %d: %s", epoch, record)
        self.writer.add_scalar("dev/pruned_loss", record["dev_pruned_loss"], epoch)
        self.writer.add_scalar("dev/greedy_wer", record["dev_greedy_wer"], epoch)
        save_checkpoint(self.exp_dir / f"epoch-{epoch}.pt", self._state(epoch, True))

    def run(self) -> None:
        """Trains the remaining epochs (or until ``stop_after_batches``)."""
        if self.rank == 0 and self.dropped:
            logging.warning("%d training cut(s) dropped as too short", len(self.dropped))
        try:
            for epoch in range(self.start_epoch, self.config.num_epochs + 1):
                self.train_epoch(epoch)
        except _Stop:
            logging.info("stopped after batch %d as asked", self.batch_idx_train)
        finally:  # the last events reach the disk even when training fails
            if self.writer is not None:
                self.writer.close()
        if self.non_finite:
            logging.warning("%d utterance loss(es) were non-finite and skipped", self.non_finite)
        if self.skipped_steps:
            logging.warning("%d step(s) skipped for a non-finite gradient", self.skipped_steps)


def _run_rank(rank: int, config: TrainConfig, port: int) -> None:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.world_size > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=config.world_size)
    try:
        Trainer(config, rank).run()
    finally:
        if config.world_size > 1:
            dist.destroy_process_group()


def train(config: TrainConfig, port: Optional[int] = None) -> None:
    """Trains with ``config.world_size`` processes (DDP over gloo on CPU, nccl on GPU)."""
    Path(config.exp_dir).mkdir(parents=True, exist_ok=True)
    if config.world_size == 1:
        _run_rank(0, config, 0)
        return
    import socket

    import torch.multiprocessing as mp

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    mp.spawn(_run_rank, args=(config, port), nprocs=config.world_size, join=True)
