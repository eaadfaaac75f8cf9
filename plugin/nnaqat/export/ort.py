"""The exported models in ONNX Runtime, and their parity with the PyTorch model on real features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
import onnxruntime as ort
import torch

from nnaqat.export.onnx import DecoderForOnnx, EncoderForOnnx, JoinerForOnnx, OnnxFiles, read_metadata
from nnaqat.models.transducer import Transducer


def _session(path, num_threads: int, optimize: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = num_threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtTransducer:
    """Encoder, decoder and joiner sessions, called as sherpa-onnx calls them (inputs by position).

    ``optimize=False`` runs the graphs as written: ONNX Runtime's default optimizations fuse
    ``DequantizeLinear`` + ``MatMul`` into int8 kernels that also quantize the activations.
    """

    def __init__(self, files: OnnxFiles, num_threads: int = 1, optimize: bool = True) -> None:
        self.files = files
        self.encoder = _session(files.encoder, num_threads, optimize)
        self.decoder = _session(files.decoder, num_threads, optimize)
        self.joiner = _session(files.joiner, num_threads, optimize)
        meta = read_metadata(files.encoder)
        self.chunk_size = int(meta["T"])
        self.chunk_shift = int(meta["decode_chunk_len"])
        self.num_layers = int(meta["num_encoder_layers"])
        self.d_model = int(meta["d_model"])
        self.hidden_size = int(meta["rnn_hidden_size"])
        self.context_size = int(read_metadata(files.decoder)["context_size"])

    @staticmethod
    def _run(session: ort.InferenceSession, *inputs: np.ndarray) -> list:
        names = [i.name for i in session.get_inputs()]
        return session.run(None, dict(zip(names, inputs)))

    def initial_state(self, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
        """Zeros ``(L, N, d_model)`` and ``(L, N, hidden)``."""
        return (
            np.zeros((self.num_layers, batch_size, self.d_model), np.float32),
            np.zeros((self.num_layers, batch_size, self.hidden_size), np.float32),
        )

    def run_encoder(self, x: np.ndarray, state0: np.ndarray, state1: np.ndarray) -> Tuple[np.ndarray, ...]:
        """``x (N, T, F)`` -> ``(encoder_out (N, k, J), new_state0, new_state1)``."""
        return tuple(self._run(self.encoder, x.astype(np.float32), state0, state1))

    def run_decoder(self, y: np.ndarray) -> np.ndarray:
        """``y (N, context_size)`` int64 -> ``(N, J)``."""
        return self._run(self.decoder, y.astype(np.int64))[0]

    def run_joiner(self, encoder_out: np.ndarray, decoder_out: np.ndarray) -> np.ndarray:
        """``(N, J), (N, J) -> (N, V)``."""
        return self._run(self.joiner, encoder_out, decoder_out)[0]


@dataclass
class Parity:
    """Largest absolute differences between PyTorch and ONNX Runtime over a set of utterances."""

    encoder_out: float = 0.0
    states: float = 0.0
    decoder_out: float = 0.0
    logit: float = 0.0
    frames: int = 0  # joiner evaluations compared
    argmax_agree: int = 0  # of those, how many pick the same token

    def as_dict(self) -> Dict[str, float]:
        return dict(self.__dict__)


def _max_diff(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.numpy() - b).max()) if b.size else 0.0


@torch.no_grad()
def parity(model: Transducer, onnx_model: OrtTransducer, features: Sequence[torch.Tensor]) -> Parity:
    """Runs PyTorch and ONNX Runtime side by side, chunk by chunk with carried states, as sherpa-onnx does.

    Each utterance ``(T, F)`` streams through both encoders (full chunks only, as sherpa-onnx
    decodes them); the decoder contexts follow PyTorch's greedy path, and every frame's logits
    are compared, each side with its own encoder and decoder outputs.
    """
    model = model.eval()
    encoder, decoder, joiner = EncoderForOnnx(model), DecoderForOnnx(model), JoinerForOnnx(model)
    size, shift = onnx_model.chunk_size, onnx_model.chunk_shift
    result = Parity()
    for feats in features:
        state_t = tuple(torch.from_numpy(s) for s in onnx_model.initial_state(1))
        state_o = onnx_model.initial_state(1)
        context = torch.full((1, onnx_model.context_size), model.blank_id, dtype=torch.int64)
        for start in range(0, feats.size(0) - size + 1, shift):
            x = feats[None, start : start + size]
            enc_t, *state_t = encoder(x, *state_t)
            enc_o, *state_o = onnx_model.run_encoder(x.numpy(), *state_o)
            result.encoder_out = max(result.encoder_out, _max_diff(enc_t, enc_o))
            result.states = max(result.states, *(_max_diff(t, o) for t, o in zip(state_t, state_o)))
            for f in range(enc_t.size(1)):
                dec_t, dec_o = decoder(context), onnx_model.run_decoder(context.numpy())
                logit_t = joiner(enc_t[:, f], dec_t)
                logit_o = onnx_model.run_joiner(enc_o[:, f], dec_o)
                result.decoder_out = max(result.decoder_out, _max_diff(dec_t, dec_o))
                result.logit = max(result.logit, _max_diff(logit_t, logit_o))
                result.frames += 1
                token = int(logit_t.argmax())
                result.argmax_agree += token == int(logit_o.argmax())
                if token != model.blank_id:
                    context = torch.cat([context[:, 1:], torch.tensor([[token]])], dim=1)
    return result
