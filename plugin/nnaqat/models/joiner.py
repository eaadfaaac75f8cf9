"""Joint network."""

from __future__ import annotations

import torch
from torch import nn

from nnaqat.registry import register


@register("joiner", "additive")
class AdditiveJoiner(nn.Module):
    """``logits = out(tanh(enc_proj(enc) + dec_proj(dec)))``."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor, project_input: bool = True) -> torch.Tensor:
        """Broadcasting join: ``(..., E)`` and ``(..., D)`` -> ``(..., V)``.

        With ``project_input=False`` the inputs are already projected to ``joiner_dim``.
        """
        if project_input:
            encoder_out = self.encoder_proj(encoder_out)
            decoder_out = self.decoder_proj(decoder_out)
        return self.output_linear(torch.tanh(encoder_out + decoder_out))
