"""Causal encoder: global feature normalisation, 4x frame-stacking subsampling, stacked LSTM."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from nnaqat.registry import register

LstmState = Tuple[torch.Tensor, torch.Tensor]


def subsampled_length(num_frames: torch.Tensor | int) -> torch.Tensor | int:
    """Output frames of :class:`FrameStackSubsampling` for ``num_frames`` input frames."""
    return (num_frames - 5) // 4


# Smallest input that yields one output frame.
MIN_INPUT_FRAMES = 9


class FeatureNorm(nn.Module):
    """Per-bin mean/variance normalisation with statistics fixed before training.

    The statistics are buffers, so they travel with checkpoints and exported models, and the
    deployed model normalises exactly as in training (frame by frame, hence streamable).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("inv_std", torch.ones(num_features))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Sets the statistics, ``mean`` and ``std`` of shape ``(F,)``."""
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / std.clamp_min(1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, F) -> (N, T, F)``."""
        return (x - self.mean) * self.inv_std


class FrameStackSubsampling(nn.Module):
    """Splices 9 consecutive frames every 4th frame and projects them: 4x subsampling.

    ``(N, T, F) -> (N, T', D)`` with ``T' = (T - 5) // 4``: output frame j sees input frames
    4j .. 4j+8, so chunks overlapping by 5 frames stream exactly. One matmul, which is what an
    8-bit NNA runs best. (A 3-layer ReLU conv front-end with the same window trained far slower
    here: on FSDD it had not left the all-blank plateau after 500 updates; this layer does.)
    """

    window = 9
    stride = 4

    def __init__(self, num_features: int, output_dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(self.window * num_features, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, F) -> (N, T', D)``."""
        frames = x.unfold(1, self.window, self.stride)  # (N, T', F, window)
        n, t, f, w = frames.shape
        return self.out(frames.transpose(2, 3).reshape(n, t, w * f))


@register("encoder", "lstm")
class LstmEncoder(nn.Module):
    """Feature normalisation, 4x frame-stacking subsampling and a stack of unidirectional LSTMs.

    With ``proj_size > 0`` each LSTM layer projects its hidden state to ``d_model = proj_size``
    (LSTMP); otherwise ``d_model = hidden_size``. The states are ``(h, c)`` with shapes
    ``(num_layers, N, d_model)`` and ``(num_layers, N, hidden_size)``, as in sherpa-onnx's LSTM
    transducer contract.
    """

    def __init__(
        self,
        num_features: int = 80,
        hidden_size: int = 256,
        num_layers: int = 2,
        proj_size: int = 0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.d_model = proj_size if proj_size > 0 else hidden_size
        self.output_dim = self.d_model
        self.feature_norm = FeatureNorm(num_features)
        self.subsampling = FrameStackSubsampling(num_features, self.d_model)
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            self.d_model,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            proj_size=proj_size,
        )
        self.output_dropout = nn.Dropout(dropout)

    def initial_state(self, batch_size: int) -> LstmState:
        """Zero states ``((L, N, d_model), (L, N, hidden_size))``."""
        h = torch.zeros(self.num_layers, batch_size, self.d_model)
        c = torch.zeros(self.num_layers, batch_size, self.hidden_size)
        return h, c

    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, state: Optional[LstmState] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, LstmState]:
        """Encodes a padded batch.

        Args:
          x: features ``(N, T, F)``.
          x_lens: valid frames per utterance ``(N,)``.
          state: LSTM state to continue from (streaming); zeros when None.
        Returns:
          ``(out (N, T', d_model), out_lens (N,), new_state)``. The state is taken after the
          last *computed* frame, which is only meaningful for unpadded (streaming) input.
        Raises:
          ValueError: an utterance is shorter than ``MIN_INPUT_FRAMES``.
        """
        too_short = (x_lens < MIN_INPUT_FRAMES).nonzero().flatten().tolist()
        if too_short:
            raise ValueError(
                f"utterance(s) at batch index {too_short} have {x_lens[too_short].tolist()} "
                f"frames; the encoder needs at least {MIN_INPUT_FRAMES}"
            )
        out = self.input_dropout(self.subsampling(self.feature_norm(x)))
        out_lens = subsampled_length(x_lens)
        if state is None:
            state = self.initial_state(x.size(0))
            state = (state[0].to(x), state[1].to(x))
        out, new_state = self.lstm(out, state)
        return self.output_dropout(out), out_lens, new_state
