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
    """Per-utterance negative log-likelihoods in nats, each ``(N,)``."""

    simple: torch.Tensor
    pruned: torch.Tensor
    ctc: Optional[torch.Tensor]  # None when the model has no CTC head


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
        Returns:
          :class:`TransducerLosses`: ``simple``, ``pruned`` and ``ctc`` (None without the head),
          each ``(N,)`` negative log-likelihoods in nats.
        """
        rnnt = rnnt_backend()
        encoder_out, encoder_lens, _ = self.encoder(x, x_lens)
        history = y
        if self.training and context_dropout > 0:
            # A predictor that cannot always see how many times a token was said has to take the
            # emission time from the encoder instead of counting (runs of one digit).
            history = y.masked_fill(torch.rand(y.shape, device=y.device) < context_dropout, self.blank_id)
        decoder_out = self.predict(F.pad(history, (1, 0), value=self.blank_id))
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
        return TransducerLosses(simple_loss, pruned_loss, ctc_loss)


def build_transducer(config: TransducerConfig | Dict[str, Any]) -> Transducer:
    """Builds a :class:`Transducer` from a config (or its dict form, as stored in checkpoints)."""
    if isinstance(config, dict):
        config = TransducerConfig(**config)
    return Transducer(config)
