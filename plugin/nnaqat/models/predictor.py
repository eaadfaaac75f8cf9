"""Prediction networks: functions of the last few tokens (stateless conv as in icefall/sherpa-onnx,
an LSTM over a token window) and the papers' LSTM over the whole history."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnaqat.registry import register


class TokenHistoryPredictor(nn.Module):
    """A predictor whose output depends only on the last ``context_size`` tokens.

    Its decoding state is that token history, which is what sherpa-onnx's transducer decoder
    contract expects (``y (N, context_size) -> decoder_out``). Subclasses implement ``forward``.
    """

    def __init__(self, vocab_size: int, context_size: int, blank_id: int, output_dim: int) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.vocab_size = vocab_size
        self.context_size = context_size
        self.blank_id = blank_id
        self.output_dim = output_dim

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """``y (N, U)`` token ids -> ``(N, U, D)``.

        With ``need_pad`` every position sees the ``context_size - 1`` previous tokens (blank
        before the start); without it ``y`` holds exactly ``context_size`` tokens per row and
        the output has one position (decoding).
        """
        raise NotImplementedError

    # Decoding interface (shared by every predictor): the state is the token history.
    def initial_state(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """History of blanks ``(N, context_size)``; step with blank to get the first output."""
        return torch.full((batch_size, self.context_size), self.blank_id, dtype=torch.long, device=device)

    def step(self, tokens: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``tokens (N,)`` -> ``(out (N, D), new_state (N, context_size))``."""
        context = torch.cat([state[:, 1:], tokens[:, None]], dim=1)
        return self.forward(context, need_pad=False)[:, 0], context

    @staticmethod
    def select_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The histories ``(len(index), context_size)`` of the hypotheses ``index (K,)`` picks."""
        return state[index]

    @staticmethod
    def concat_states(states: List[torch.Tensor]) -> torch.Tensor:
        """Histories ``(N_i, context_size)`` stacked into one batch ``(sum N_i, context_size)``."""
        return torch.cat(states, dim=0)


@register("predictor", "stateless")
class StatelessPredictor(TokenHistoryPredictor):
    """Embedding of the last ``context_size`` tokens mixed by a causal depthwise-grouped conv."""

    def __init__(self, vocab_size: int, embedding_dim: int = 256, context_size: int = 2, blank_id: int = 0) -> None:
        super().__init__(vocab_size, context_size, blank_id, output_dim=embedding_dim)
        # Blank embeds to zero, the same as the zero padding before the first token in training.
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=blank_id)
        self.conv = (
            nn.Conv1d(embedding_dim, embedding_dim, context_size, groups=max(1, embedding_dim // 4), bias=False)
            if context_size > 1
            else None
        )

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        emb = self.embedding(y.clamp_min(0))
        if self.conv is not None:
            emb = emb.transpose(1, 2)
            if need_pad:
                emb = F.pad(emb, (self.context_size - 1, 0))
            emb = self.conv(emb).transpose(1, 2)
        return F.relu(emb)


@register("predictor", "windowed_lstm")
class WindowedLstmPredictor(TokenHistoryPredictor):
    """An LSTM run afresh over the last ``context_size`` tokens at every position.

    Like the stateless predictor it is a function of a fixed token window (sherpa-onnx's decoder
    contract), but it can count: it tells a run of one token ``k <= context_size`` long from a
    shorter one, which a greedy search needs to say a digit three times in a row.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 256,
        hidden_size: int = 256,
        context_size: int = 4,
        dropout: float = 0.1,
        blank_id: int = 0,
    ) -> None:
        super().__init__(vocab_size, context_size, blank_id, output_dim=hidden_size)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=blank_id)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        k = self.context_size
        if need_pad:
            y = F.pad(y, (k - 1, 0), value=self.blank_id)
        windows = y.clamp_min(0).unfold(1, k, 1)  # (N, U, K): position u sees tokens u-K+1 .. u
        n, u, _ = windows.shape
        out, _ = self.lstm(self.embedding(windows.reshape(n * u, k)))
        return self.dropout(out[:, -1].reshape(n, u, -1))


@register("predictor", "lstm")
class LstmPredictor(nn.Module):
    """Embedding followed by an LSTM, as in the S8BQAT and AAT papers."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 256,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.1,
        blank_id: int = 0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.context_size = 1
        self.output_dim = hidden_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, y: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """``y (N, U)`` -> ``(out (N, U, H), new_state)``."""
        out, new_state = self.lstm(self.embedding(y.clamp_min(0)), state)
        return self.dropout(out), new_state

    # Decoding interface (shared by every predictor): the state is the LSTM's (h, c).
    def initial_state(self, batch_size: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(h, c)``, each ``(num_layers, N, H)``; step with blank to get the first output."""
        zeros = torch.zeros(self.lstm.num_layers, batch_size, self.lstm.hidden_size, device=device)
        return zeros, zeros.clone()

    def step(
        self, tokens: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """``tokens (N,)`` -> ``(out (N, H), new_state)``."""
        out, new_state = self.forward(tokens[:, None], state)
        return out[:, 0], new_state

    @staticmethod
    def select_state(state: Tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(h, c)``, each ``(layers, N, H)``, of the hypotheses ``index (K,)`` picks: ``(layers, K, H)``."""
        return state[0][:, index], state[1][:, index]

    @staticmethod
    def concat_states(states: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """States ``(layers, N_i, H)`` each stacked along the batch: ``(layers, sum N_i, H)``."""
        return torch.cat([s[0] for s in states], dim=1), torch.cat([s[1] for s in states], dim=1)
