"""RNN-Transducer assembled from registered variants, trained with the pruned RNN-T loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nnaqat import registry
from nnaqat.loss import rnnt_backend

@dataclass
class TransducerConfig:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    vocab_size: int
    encoder: str = "lstm"
    predictor: str = "stateless"
    joiner: str = "additive"
    joiner_dim: int = 256
    blank_id: int = 0
    encoder_kwargs: Dict[str, Any] = field(default_factory=dict)
    predictor_kwargs: Dict[str, Any] = field(default_factory=dict)
    ctc_head: bool = False  # an auxiliary CTC head on the encoder, for training (icefall's --use-ctc)
    mark_repeats: bool = False  # trained on targets with a "▁" before a repeated word (Tokenizer); fine-tuning keeps it

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class TransducerLosses(NamedTuple):
    """Per-utterance losses in nats, each ``(N,)``."""

    simple: torch.Tensor
    pruned: torch.Tensor
    ctc: Optional[torch.Tensor]  # None when the model has no CTC head
    distill: Optional[torch.Tensor] = None  # KL to a teacher on the pruned lattice; None without one


def pruned_lattice_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, ranges: torch.Tensor,
    encoder_lens: torch.Tensor, y_lens: torch.Tensor,
) -> torch.Tensor:
    """KL(teacher || student) of the joiner's output distributions, summed over the nodes of the
    pruned lattice that lie inside each utterance.

    Args:
      student_logits, teacher_logits: ``(N, T, S, V)`` joiner outputs on the same nodes.
      ranges: ``(N, T, S)`` the symbol position of each node (``get_rnnt_prune_ranges``).
      encoder_lens: ``(N,)`` frames; y_lens: ``(N,)`` symbols.
    Returns:
      ``(N,)`` in nats.
    """
    teacher = teacher_logits.float().log_softmax(-1)
    kl = (teacher.exp() * (teacher - student_logits.float().log_softmax(-1))).sum(-1)  # (N, T, S)
    frames = torch.arange(kl.size(1), device=kl.device)[None, :, None]
    inside = (frames < encoder_lens[:, None, None]) & (ranges <= y_lens[:, None, None])
    return torch.where(inside, kl, 0.0).sum((1, 2))


class Transducer(nn.Module):
    """Encoder + predictor + joiner, with the linear "simple" heads the pruned loss needs and an
    optional CTC head; all three heads are for training only."""

    def __init__(self, config: TransducerConfig) -> None:
        super().__init__()
        self.config = config
        self.blank_id = config.blank_id
        self.encoder = registry.build("encoder", config.encoder, **config.encoder_kwargs)
        self.predictor = registry.build(
            "predictor",
            config.predictor,
            vocab_size=config.vocab_size,
            blank_id=config.blank_id,
            **config.predictor_kwargs,
        )
        self.joiner = registry.build(
            "joiner",
            config.joiner,
            encoder_dim=self.encoder.output_dim,
            decoder_dim=self.predictor.output_dim,
            joiner_dim=config.joiner_dim,
            vocab_size=config.vocab_size,
        )
        self.simple_am_proj = nn.Linear(self.encoder.output_dim, config.vocab_size)
        self.simple_lm_proj = nn.Linear(self.predictor.output_dim, config.vocab_size)
        self.ctc_proj = nn.Linear(self.encoder.output_dim, config.vocab_size) if config.ctc_head else None

    def predict(self, y: torch.Tensor) -> torch.Tensor:
        """Predictor over whole label sequences: ``(N, U)`` -> ``(N, U, D)``."""
        out = self.predictor(y)
        return out[0] if isinstance(out, tuple) else out

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: torch.Tensor,
        y_lens: torch.Tensor,
        prune_range: int = 5,
        am_scale: float = 0.0,
        lm_scale: float = 0.25,
        delay_penalty: float = 0.0,
        context_dropout: float = 0.0,
        teacher: Optional["Transducer"] = None,
    ) -> TransducerLosses:
        """Per-utterance simple and pruned RNN-T losses, and the CTC loss if the model has the head.

        Args:
          x: features ``(N, T, F)``; x_lens ``(N,)``.
          y: token ids ``(N, U)`` padded with blank; y_lens ``(N,)``.
          prune_range: symbols kept per frame by the pruned loss.
          am_scale, lm_scale: smoothing weights of the simple loss.
          delay_penalty: rewards earlier emission in both RNN-T losses (k2's ``delay_penalty``).
          context_dropout: chance that a token is hidden (replaced by blank) in the predictor's
            input, in training mode only.
          teacher: a model of the same frame rate and vocabulary (e.g. the fp32 model an AAT or
            QAT run starts from), run without gradient on the same input: ``distill`` is
            :func:`pruned_lattice_kl` of this model to it on this model's pruned lattice.
        Returns:
          :class:`TransducerLosses`: ``simple``, ``pruned`` and ``ctc`` (None without the head)
          negative log-likelihoods and ``distill`` (None without a teacher), each ``(N,)`` in nats.
        """
        rnnt = rnnt_backend()
        encoder_out, encoder_lens, _ = self.encoder(x, x_lens)
        history = y
        if self.training and context_dropout > 0:
            # A predictor that cannot always see how many times a token was said has to take the
            # emission time from the encoder instead of counting (runs of one digit).
            history = y.masked_fill(torch.rand(y.shape, device=y.device) < context_dropout, self.blank_id)
        decoder_input = F.pad(history, (1, 0), value=self.blank_id)
        decoder_out = self.predict(decoder_input)
        boundary = torch.zeros(x.size(0), 4, dtype=torch.int64, device=x.device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = encoder_lens

        simple_loss, (px_grad, py_grad) = rnnt.rnnt_loss_smoothed(
            lm=self.simple_lm_proj(decoder_out).float(),
            am=self.simple_am_proj(encoder_out).float(),
            symbols=y,
            termination_symbol=self.blank_id,
            lm_only_scale=lm_scale,
            am_only_scale=am_scale,
            boundary=boundary,
            delay_penalty=delay_penalty,
            reduction="none",
            return_grad=True,
        )
        ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, prune_range)
        am_pruned, lm_pruned = rnnt.do_rnnt_pruning(
            am=self.joiner.encoder_proj(encoder_out), lm=self.joiner.decoder_proj(decoder_out), ranges=ranges
        )
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)
        pruned_loss = rnnt.rnnt_loss_pruned(
            logits.float(), y, ranges, self.blank_id, boundary=boundary, delay_penalty=delay_penalty, reduction="none"
        )
        ctc_loss = None
        if self.ctc_proj is not None:
            log_probs = self.ctc_proj(encoder_out).float().log_softmax(-1).transpose(0, 1)  # (T, N, V)
            # zero_infinity: an utterance too short for CTC (it needs a frame between repeated tokens)
            # still trains the transducer.
            ctc_loss = F.ctc_loss(log_probs, y, encoder_lens, y_lens, blank=self.blank_id, reduction="none",
                                  zero_infinity=True)
        distill = None
        if teacher is not None:
            with torch.no_grad():
                teacher_out, _, _ = teacher.encoder(x, x_lens)
                teacher_am, teacher_lm = rnnt.do_rnnt_pruning(
                    am=teacher.joiner.encoder_proj(teacher_out),
                    lm=teacher.joiner.decoder_proj(teacher.predict(decoder_input)), ranges=ranges,
                )
                teacher_logits = teacher.joiner(teacher_am, teacher_lm, project_input=False)
            distill = pruned_lattice_kl(logits, teacher_logits, ranges, encoder_lens, y_lens)
        return TransducerLosses(simple_loss, pruned_loss, ctc_loss, distill)


def build_transducer(config: TransducerConfig | Dict[str, Any]) -> Transducer:
    """Builds a :class:`Transducer` from a config (or its dict form, as stored in checkpoints)."""
    if isinstance(config, dict):
        config = TransducerConfig(**config)
    return Transducer(config)
