"""Causal encoder: global feature normalisation, frame-stacking subsampling, residual LSTMs."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from nnaqat.data.features import mel_bin_centers_hz
from nnaqat.registry import register

LstmState = Tuple[torch.Tensor, torch.Tensor]


class FeatureNorm(nn.Module):
    """Fixed front-end normalisation: per-bin mean/variance, optionally band-limited.

    The statistics are buffers, so they travel with checkpoints and exported models, and the
    deployed model normalises exactly as in training (frame by frame, hence streamable).
    With ``max_freq_hz`` > 0, mel bins centred above it are zeroed: for narrow-band audio
    upsampled to 16 kHz (FSDD is 8 kHz) they hold only each recorder's noise floor, a cue
    that identifies the speaker rather than the word (leave-one-speaker-out WER of george:
    46.6 % with all bins, 30.9 % without them).
    """

    def __init__(self, num_features: int, max_freq_hz: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("inv_std", torch.ones(num_features))
        keep = torch.ones(num_features)
        if max_freq_hz > 0:
            keep = (mel_bin_centers_hz(num_features) <= max_freq_hz).float()
        # Derived from the config, not learned: kept out of the state dict.
        self.register_buffer("keep", keep, persistent=False)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Sets the statistics, ``mean`` and ``std`` of shape ``(F,)``."""
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / std.clamp_min(1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, F) -> (N, T, F)``."""
        return (x - self.mean) * (self.inv_std * self.keep)


class FrameStackSubsampling(nn.Module):
    """Splices ``2 * factor + 1`` frames every ``factor`` frames and projects them.

    ``(N, T, F) -> (N, T', D)`` with ``T' = (T - 2 * factor - 1) // factor + 1``: output frame
    j sees input frames ``factor * j .. factor * (j + 2)``, so chunks overlapping by
    ``factor + 1`` frames stream exactly. One matmul, which is what an 8-bit NNA runs best.
    (A 3-layer ReLU conv front-end trained far slower here: on FSDD it had not left the
    all-blank plateau after 500 updates.)
    """

    def __init__(self, num_features: int, output_dim: int, factor: int = 4) -> None:
        super().__init__()
        self.factor = factor
        self.window = 2 * factor + 1
        self.out = nn.Linear(self.window * num_features, output_dim)

    def output_length(self, num_frames: torch.Tensor | int) -> torch.Tensor | int:
        """Output frames for ``num_frames`` input frames (< 1 when too short)."""
        return (num_frames - self.window) // self.factor + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, F) -> (N, T', D)``."""
        frames = x.unfold(1, self.window, self.factor)  # (N, T', F, window)
        n, t, f, w = frames.shape
        return self.out(frames.transpose(2, 3).reshape(n, t, w * f))


@register("encoder", "lstm")
class LstmEncoder(nn.Module):
    """Feature normalisation, frame-stacking subsampling and residual unidirectional LSTMs.

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
        subsampling_factor: int = 4,
        dropout: float = 0.1,
        max_freq_hz: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.d_model = proj_size if proj_size > 0 else hidden_size
        self.output_dim = self.d_model
        self.feature_norm = FeatureNorm(num_features, max_freq_hz)
        self.subsampling = FrameStackSubsampling(num_features, self.d_model, subsampling_factor)
        self.output_length = self.subsampling.output_length
        self.min_input_frames = self.subsampling.window
        self.dropout = nn.Dropout(dropout)
        # One LSTM per layer with a residual connection around each: the joiner sees the
        # acoustic frames from the first update on, which shortens the all-blank plateau.
        self.layers = nn.ModuleList(
            nn.LSTM(self.d_model, hidden_size, batch_first=True, proj_size=proj_size) for _ in range(num_layers)
        )

    def initial_state(self, batch_size: int) -> LstmState:
        """Zero states ``((L, N, d_model), (L, N, hidden_size))``."""
        h = torch.zeros(self.num_layers, batch_size, self.d_model)
        c = torch.zeros(self.num_layers, batch_size, self.hidden_size)
        return h, c

    def front_end(self, x: torch.Tensor, x_lens: torch.Tensor) -> torch.Tensor:
        """Checks lengths and normalises features ``(N, T, F)``: the float part that runs on the
        CPU before an NNA's first quantize.

        Raises:
          ValueError: an utterance is shorter than ``min_input_frames``.
        """
        too_short = (x_lens < self.min_input_frames).nonzero().flatten().tolist()
        if too_short:
            raise ValueError(
                f"utterance(s) at batch index {too_short} have {x_lens[too_short].tolist()} "
                f"frames; the encoder needs at least {self.min_input_frames}"
            )
        return self.feature_norm(x)

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
          ValueError: an utterance is shorter than ``min_input_frames``.
        """
        out = self.dropout(self.subsampling(self.front_end(x, x_lens)))
        out_lens = self.output_length(x_lens)
        if state is None:
            state = self.initial_state(x.size(0))
            state = (state[0].to(x), state[1].to(x))
        new_h, new_c = [], []
        for i, layer in enumerate(self.layers):
            y, (h, c) = layer(out, (state[0][i : i + 1], state[1][i : i + 1]))
            out = out + self.dropout(y)
            new_h.append(h)
            new_c.append(c)
        return out, out_lens, (torch.cat(new_h), torch.cat(new_c))
