"""ONNX export in sherpa-onnx's streaming LSTM transducer contract: fp32, quantization-aware int8
(our codebook weights stored as int8), and icefall's post-training int8.

``encoder.onnx``: inputs by position ``x (N, T, 80)``, ``state0 (L, N, d_model)``, ``state1 (L, N,
hidden)``; outputs ``encoder_out (N, k, joiner_dim)`` (through the joiner's encoder projection),
``new_state0``, ``new_state1``. sherpa-onnx feeds it ``T`` feature frames per call and advances
``decode_chunk_len`` frames (both in the metadata), which for our frame-stacking front end are the
``size`` and ``shift`` of :class:`nnaqat.decode.streaming.ChunkGeometry`.
``decoder.onnx``: ``y (N, context_size)`` int64 -> ``decoder_out (N, joiner_dim)`` (projected).
``joiner.onnx``: ``encoder_out (N, joiner_dim)``, ``decoder_out (N, joiner_dim)`` -> ``logit (N, vocab)``.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Tuple

import onnx
import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from nnaqat.decode.streaming import DEFAULT_CHUNK_FRAMES, ChunkGeometry
from nnaqat.models.predictor import TokenHistoryPredictor
from nnaqat.models.transducer import Transducer
from nnaqat.quant.fake_quant import channel_view
from nnaqat.quant.quantizers import QuantizedTensor

OPSET = 13  # DequantizeLinear with per-axis scales needs 13
# fp32; int8-qat: a quantization-aware model's weights as int8 + scales; int8: icefall's post-training
PRECISIONS = ("fp32", "int8-qat", "int8")


@dataclass(frozen=True)
class OnnxFiles:
    """The four files sherpa-onnx loads."""

    encoder: Path
    decoder: Path
    joiner: Path
    tokens: Path

    @classmethod
    def in_dir(cls, directory: Path | str, precision: str = "fp32") -> "OnnxFiles":
        """``{encoder,decoder,joiner}.onnx`` (fp32), ``*.int8.onnx`` (icefall's naming) or
        ``*.int8-qat.onnx``, and ``tokens.txt``."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        d = Path(directory)
        suffix = ".onnx" if precision == "fp32" else f".{precision}.onnx"
        return cls(d / f"encoder{suffix}", d / f"decoder{suffix}", d / f"joiner{suffix}", d / "tokens.txt")

    def models(self) -> Tuple[Path, Path, Path]:
        return self.encoder, self.decoder, self.joiner

    def total_bytes(self) -> int:
        """Size of the three models on disk."""
        return sum(p.stat().st_size for p in self.models())


class EncoderForOnnx(nn.Module):
    """``(x, state0, state1) -> (encoder_out, new_state0, new_state1)`` with the joiner's encoder projection."""

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.encoder_proj = model.joiner.encoder_proj

    def forward(self, x: torch.Tensor, state0: torch.Tensor, state1: torch.Tensor):
        x_lens = torch.full((x.size(0),), x.size(1), dtype=torch.int64)
        out, _, (h, c) = self.encoder(x, x_lens, (state0, state1))
        return self.encoder_proj(out), h, c


class DecoderForOnnx(nn.Module):
    """``y (N, context_size) -> decoder_out (N, joiner_dim)``."""

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.predictor = model.predictor
        self.decoder_proj = model.joiner.decoder_proj

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.decoder_proj(self.predictor(y, need_pad=False)[:, 0])


class JoinerForOnnx(nn.Module):
    """``(encoder_out, decoder_out) -> logit``, both inputs already projected."""

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.joiner = model.joiner

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        return self.joiner(encoder_out, decoder_out, project_input=False)


def encoder_metadata(model: Transducer, geometry: ChunkGeometry) -> Dict[str, str]:
    """What sherpa-onnx's ``OnlineLstmTransducerModel`` reads from ``encoder.onnx``."""
    encoder = model.encoder
    return {
        "model_type": "lstm",
        "T": str(geometry.size),
        "decode_chunk_len": str(geometry.shift),
        "num_encoder_layers": str(encoder.num_state_rows),  # state rows: LSTM layers (+ front end)
        "d_model": str(encoder.d_model),
        "rnn_hidden_size": str(encoder.hidden_size),
        "subsampling_factor": str(geometry.factor),  # informative; sherpa-onnx does not read it
        "chunk_frames": str(geometry.chunk_frames),
    }


def set_metadata(path: Path | str, metadata: Mapping[str, str]) -> None:
    """Adds (or replaces) ``metadata_props`` entries of an ONNX file in place."""
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, str(path))


def read_metadata(path: Path | str) -> Dict[str, str]:
    """An ONNX file's ``metadata_props`` (the weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _export(module: nn.Module, args: tuple, path: Path, inputs, outputs, dynamic_axes) -> None:
    # torch.onnx.export restores the wrapper's mode afterwards, recursively: a wrapper left in
    # training mode would switch the caller's model (its dropout) to training.
    module.eval()
    with warnings.catch_warnings():
        # Tracing turns the encoder's Python-side length check into a constant: expected here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1")  # our states are inputs
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=OPSET,
            input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes,
        )


class _DequantizeLinear(torch.autograd.Function):
    """``q * scale`` (scale per tensor, or per slice of dim 0) in PyTorch; ONNX's
    ``DequantizeLinear(q, scale, 0, axis=0)`` in the exported graph."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return q.float() * channel_view(scale, q)

    @staticmethod
    def symbolic(g, q, scale):
        zero_point = g.op("Constant", value_t=torch.zeros(scale.type().sizes(), dtype=torch.int8))
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=0)


class _Int8Weight(nn.Module):
    """Parametrization replacing a weight by its int8 values and scales (the stored form)."""

    def __init__(self, quantized: QuantizedTensor) -> None:
        super().__init__()
        self.register_buffer("q", quantized.levels[quantized.indices].to(torch.int8))
        self.register_buffer("scale", quantized.scale.float())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return _DequantizeLinear.apply(self.q, self.scale)


def with_int8_weights(model: Transducer) -> Transducer:
    """A copy of a quantization-aware model whose quantized weights are int8 tensors and scales,
    dequantized where they are used (exported as int8 initializers and ``DequantizeLinear``)."""
    quantizer = getattr(model, "quantizer", None)
    quantized: Dict[str, QuantizedTensor] = quantizer.quantized(model) if quantizer is not None else {}
    if not quantized:
        raise ValueError("int8-qat export needs a quantization-aware model (a checkpoint trained with --quantizer)")
    model = copy.deepcopy(model)
    for name, q in quantized.items():
        if not torch.equal(q.dequantize(), model.get_parameter(name).detach()):
            raise ValueError(f"{name} is not on its codebook: finalize the quantizer first")
        module, _, attr = name.rpartition(".")
        parametrize.register_parametrization(model.get_submodule(module), attr, _Int8Weight(q), unsafe=True)
    return model


@torch.no_grad()
def export_onnx(
    model: Transducer,
    tokens: Path | str,
    out_dir: Path | str,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    precision: str = "fp32",
) -> OnnxFiles:
    """Writes ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` and ``tokens.txt`` to ``out_dir``.

    Args:
      model: a transducer with the LSTM encoder (no projection) and a token-history predictor
        (``stateless`` or ``windowed_lstm``).
      tokens: the recipe's ``tokens.txt`` (copied).
      chunk_frames: encoder frames per sherpa-onnx chunk (sets ``T`` and ``decode_chunk_len``).
      precision: ``fp32``, or ``int8-qat`` for a quantization-aware model: its quantized weights
        stored as their int8 values and scales (``*.int8-qat.onnx``), bit-for-bit the weights it
        was trained and decoded with.
    Raises:
      ValueError: a model part that the sherpa-onnx LSTM contract cannot express.
    """
    if precision not in ("fp32", "int8-qat"):
        raise ValueError(f"export_onnx writes fp32 or int8-qat, not {precision!r} (see quantize_int8)")
    if not isinstance(model.predictor, TokenHistoryPredictor):
        raise ValueError(
            "sherpa-onnx's transducer contract needs a predictor of the last context_size tokens, "
            f"not {type(model.predictor).__name__}"
        )
    if model.encoder.d_model != model.encoder.hidden_size:
        raise ValueError("LSTM projections (proj_size > 0) have no ONNX LSTM equivalent; export a model without")
    tokens = Path(tokens)
    if not tokens.is_file():
        raise FileNotFoundError(f"tokens file not found: {tokens}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = OnnxFiles.in_dir(out_dir, precision)
    model = (with_int8_weights(model) if precision == "int8-qat" else model).eval()
    geometry = ChunkGeometry.of(model, chunk_frames)
    encoder = model.encoder
    batch = 2  # any; the batch axis is dynamic

    x = torch.zeros(batch, geometry.size, encoder.feature_norm.mean.numel())
    h, c = encoder.initial_state(batch)
    _export(
        EncoderForOnnx(model), (x, h, c), files.encoder,
        ["x", "state0", "state1"], ["encoder_out", "new_state0", "new_state1"],
        {"x": {0: "N"}, "state0": {1: "N"}, "state1": {1: "N"},
         "encoder_out": {0: "N"}, "new_state0": {1: "N"}, "new_state1": {1: "N"}},
    )
    set_metadata(files.encoder, encoder_metadata(model, geometry))

    predictor = model.predictor
    y = torch.zeros(batch, predictor.context_size, dtype=torch.int64)
    _export(
        DecoderForOnnx(model), (y,), files.decoder, ["y"], ["decoder_out"], {"y": {0: "N"}, "decoder_out": {0: "N"}}
    )
    set_metadata(files.decoder, {"context_size": str(predictor.context_size), "vocab_size": str(predictor.vocab_size)})

    joiner_dim = model.joiner.output_linear.in_features
    e = torch.zeros(batch, joiner_dim)
    _export(
        JoinerForOnnx(model), (e, e.clone()), files.joiner, ["encoder_out", "decoder_out"], ["logit"],
        {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
    )
    set_metadata(files.joiner, {"joiner_dim": str(joiner_dim)})

    if tokens.resolve() != files.tokens.resolve():
        shutil.copyfile(tokens, files.tokens)
    return files


def quantize_int8(fp32: OnnxFiles) -> OnnxFiles:
    """icefall's post-training int8: ONNX Runtime dynamic quantization of the fp32 export.

    Weights of ``MatMul`` (encoder, joiner) and ``MatMul`` + ``Gather`` (decoder: the embedding)
    become int8 with per-tensor scales; activations are quantized at run time. The LSTM and
    ``Gemm`` (2-D linear) nodes stay float, exactly as in icefall's exports. Writes
    ``*.int8.onnx`` beside the fp32 files.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = OnnxFiles.in_dir(fp32.encoder.parent, "int8")
    ops = {fp32.encoder: ["MatMul"], fp32.decoder: ["MatMul", "Gather"], fp32.joiner: ["MatMul"]}
    for src, dst in zip(fp32.models(), int8.models()):
        quantize_dynamic(model_input=src, model_output=dst, op_types_to_quantize=ops[src], weight_type=QuantType.QInt8)
        set_metadata(dst, read_metadata(src))  # kept explicitly: sherpa-onnx exits without it
    return int8


def count_ops(path: Path | str) -> Dict[str, int]:
    """Node count per op type of an ONNX file (e.g. to see what int8 quantization changed)."""
    counts: Dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
