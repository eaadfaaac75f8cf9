"""Causal encoder: global feature normalisation, frame-stacking subsampling, residual LSTMs."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from nnaqat.data.features import mel_bin_centers_hz
from nnaqat.registry import register

LstmState = Tuple[torch.Tensor, torch.Tensor]
CmnState = Tuple[torch.Tensor, torch.Tensor]  # running sum (N, F) and count (N,) of speech frames


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


class CausalMeanNorm(nn.Module):
    """Causal cepstral-mean-style normalisation of log-mel frames: each speech frame minus the
    running mean of the utterance's speech frames so far, plus the training data's speech mean.

    The running mean starts from that prior with the weight of ``prior_frames`` frames, so early
    frames move little. It removes what stays constant over an utterance — the microphone, the
    room, the recording level — which four training speakers cannot teach the model to ignore
    (held-out george, 8 epochs, greedy: 30.9 % WER without, 27.4 % with). Frames of
    digital silence (all bins at the fbank floor) neither count nor change. Causal, so chunks
    with the carried ``(sum (N, F), count (N,))`` state give the whole-utterance result.
    """

    # A frame whose loudest bin is below this is digital silence (fbank floor: -15.94).
    SILENCE_LOG_ENERGY = -15.4

    def __init__(self, num_features: int, prior_frames: int) -> None:
        super().__init__()
        if prior_frames <= 0:
            raise ValueError(f"prior_frames must be > 0, got {prior_frames}")
        self.prior_frames = float(prior_frames)
        self.register_buffer("speech_mean", torch.zeros(num_features))

    @classmethod
    def is_speech(cls, x: torch.Tensor) -> torch.Tensor:
        """``(..., T, F)`` raw log-mel -> ``(..., T)`` bool: not digital silence."""
        return x.amax(-1) > cls.SILENCE_LOG_ENERGY

    def initial_state(self, batch_size: int) -> CmnState:
        return torch.zeros(batch_size, self.speech_mean.numel()), torch.zeros(batch_size)

    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, state: CmnState, consumed: torch.Tensor
    ) -> Tuple[torch.Tensor, CmnState]:
        """``x (N, T, F)`` raw log-mel, ``x_lens (N,)``, ``state`` -> ``(normalised (N, T, F), new_state)``.

        Frames past ``x_lens`` neither count nor change. ``new_state`` is taken after the first
        ``consumed (N,)`` frames (>= 1): a streaming chunk re-reads the frames after those.
        """
        valid = torch.arange(x.size(1), device=x.device)[None, :] < x_lens[:, None]
        speech = valid & self.is_speech(x)
        weight = speech.to(x.dtype)[..., None]
        sums = state[0][:, None, :] + torch.cumsum(x * weight, dim=1)
        counts = state[1][:, None, None] + torch.cumsum(weight, dim=1)
        mean = (self.prior_frames * self.speech_mean + sums) / (self.prior_frames + counts)
        out = torch.where(speech[..., None], x - mean + self.speech_mean, x)
        last = (consumed - 1).clamp(0, x.size(1) - 1)
        rows = torch.arange(x.size(0), device=x.device)
        return out, (sums[rows, last], counts[rows, last, 0])


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
    ``(R, N, d_model)`` and ``(R, N, hidden_size)``, as in sherpa-onnx's LSTM transducer
    contract: ``R = num_layers`` rows, plus one with ``cmn_prior_frames > 0`` whose ``c`` row
    carries :class:`CausalMeanNorm`'s running sum and count (so every runtime that carries the
    two state tensors streams the front end exactly too).
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
        cmn_prior_frames: int = 0,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.d_model = proj_size if proj_size > 0 else hidden_size
        self.output_dim = self.d_model
        self.cmn = CausalMeanNorm(num_features, cmn_prior_frames) if cmn_prior_frames > 0 else None
        if self.cmn is not None and hidden_size < num_features + 1:
            raise ValueError(f"the CMN state row needs hidden_size >= {num_features + 1}, got {hidden_size}")
        self.num_state_rows = num_layers + (self.cmn is not None)
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
        """Zero states ``((R, N, d_model), (R, N, hidden_size))``."""
        h = torch.zeros(self.num_state_rows, batch_size, self.d_model)
        c = torch.zeros(self.num_state_rows, batch_size, self.hidden_size)
        return h, c

    def front_end(
        self, x: torch.Tensor, x_lens: torch.Tensor, state: Optional[LstmState] = None
    ) -> Tuple[torch.Tensor, Optional[LstmState], Optional[CmnState]]:
        """The float part that runs on the CPU before an NNA's first quantize: checks lengths,
        normalises features ``(N, T, F)``, and splits ``state`` into the LSTM layers' rows.

        Returns:
          ``(normalised (N, T, F), lstm_state, front_state)``: ``lstm_state`` is the first
          ``num_layers`` rows of ``state`` (None when ``state`` is None), ``front_state`` the
          causal mean's new state (None without it), both for :meth:`join_state`.
        Raises:
          ValueError: an utterance is shorter than ``min_input_frames``.
        """
        too_short = (x_lens < self.min_input_frames).nonzero().flatten().tolist()
        if too_short:
            raise ValueError(
                f"utterance(s) at batch index {too_short} have {x_lens[too_short].tolist()} "
                f"frames; the encoder needs at least {self.min_input_frames}"
            )
        lstm_state = None if state is None else (state[0][: self.num_layers], state[1][: self.num_layers])
        front_state = None
        if self.cmn is not None:
            if state is None:
                cmn_state = tuple(s.to(x) for s in self.cmn.initial_state(x.size(0)))
            else:
                row = state[1][self.num_layers]
                f = self.cmn.speech_mean.numel()
                cmn_state = (row[:, :f], row[:, f])
            # The next chunk starts where this one's encoder frames end (frame-stacking overlap).
            consumed = self.output_length(x_lens) * self.subsampling.factor
            x, front_state = self.cmn(x, x_lens, cmn_state, consumed)
        return self.feature_norm(x), lstm_state, front_state

    def join_state(self, lstm_state: LstmState, front_state: Optional[CmnState]) -> LstmState:
        """The encoder state ``(h, c)`` of ``R`` rows: the LSTM layers' rows, then the front end's."""
        if front_state is None:
            return lstm_state
        h, c = lstm_state
        sums, counts = front_state
        row = torch.zeros(1, c.size(1), c.size(2), dtype=c.dtype, device=c.device)
        row[0, :, : sums.size(1)] = sums
        row[0, :, sums.size(1)] = counts
        return torch.cat([h, torch.zeros_like(h[:1])]), torch.cat([c, row])

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
        features, state, front_state = self.front_end(x, x_lens, state)
        out = self.dropout(self.subsampling(features))
        out_lens = self.output_length(x_lens)
        new_h, new_c = [], []
        for i, layer in enumerate(self.layers):
            # nn.LSTM starts from zeros when given no state.
            y, (h, c) = layer(out, None if state is None else (state[0][i : i + 1], state[1][i : i + 1]))
            out = out + self.dropout(y)
            new_h.append(h)
            new_c.append(c)
        return out, out_lens, self.join_state((torch.cat(new_h), torch.cat(new_c)), front_state)
