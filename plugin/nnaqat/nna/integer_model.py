"""The exported integer model: what the integer reference engine runs (NumPy only).

A tree of named tuples of int64 arrays and ints, saved as one versioned ``.npz`` (no pickles):
every key is the dotted path of a leaf, e.g. ``encoder.layers.0.input.weight``. The spec is
stored as JSON, the gate tables as their integer entries. The float front-end (``FeatureNorm``)
is not part of it: it runs on the CPU before the first quantization (``encoder.input_scale``).
"""

from __future__ import annotations

import json
import typing
import zipfile
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np

from nnaqat.atomic import atomic_write
from nnaqat.nna import reference as ref
from nnaqat.nna.lut import Lut
from nnaqat.nna.reference_lstm import GateLuts, LstmParams
from nnaqat.nna.spec import NnaSpec
from nnaqat.nna.storage import StorageReport, decode_arrays, encode_arrays

FORMAT = "nnaqat-nna-integer-model"
VERSION = 2  # 2: weights as K-bit codebook indices, integers in their narrowest type


class AddOpParams(NamedTuple):
    """A saturating add with rescale (``reference.add``) and its zero points."""

    fixed_point: ref.AddParams
    a_zero_point: int
    b_zero_point: int
    out_zero_point: int


class ConvParams(NamedTuple):
    """A causal grouped ``Conv1d`` (``reference.grouped_accumulate``) with ReLU fused into the
    output clamp (outputs below ``y_zero_point``, the code of 0.0, are raised to it)."""

    weight: np.ndarray  # (C_out, C_in / groups, K)
    bias: np.ndarray  # (C_out,) accumulator units
    groups: int
    x_zero_point: int
    multiplier: np.ndarray  # (C_out,)
    shift: np.ndarray  # (C_out,)
    y_zero_point: int


class EncoderParams(NamedTuple):
    input_scale: np.float32  # normalised features -> codes: reference.quantize, the one float step
    input_zero_point: int
    subsampling_factor: int  # frame stacking: 2f + 1 frames every f
    subsampling: ref.LinearParams  # (d_model, (2f + 1) * F)
    layers: Tuple[LstmParams, ...]
    residuals: Tuple[AddOpParams, ...]  # layer input + layer output, per layer


class PredictorParams(NamedTuple):
    embedding: np.ndarray  # (V, D) codes, zero point 0
    context_size: int
    conv: Optional[ConvParams]  # None when context_size == 1 (ReLU on the embedding codes)


class JoinerParams(NamedTuple):
    encoder_proj: ref.LinearParams
    decoder_proj: ref.LinearParams
    add: AddOpParams  # projections -> gate format (zero point 0), the tanh table's input
    tanh_output: ref.FixedPointMultiplier  # nonlinearity format -> activation codes (scale 1/127, zero point 0)
    output_linear: ref.LinearParams  # -> logit codes


class IntegerModel(NamedTuple):
    spec: NnaSpec
    luts: GateLuts
    encoder: EncoderParams
    predictor: PredictorParams
    joiner: JoinerParams
    blank_id: int


def _flatten(value: Any, key: str, out: Dict[str, np.ndarray]) -> None:
    if isinstance(value, NnaSpec):
        out[key] = np.array(json.dumps(value.to_dict()))
    elif isinstance(value, Lut):
        out[key] = np.asarray(value.table)
    elif hasattr(value, "_fields"):  # a named tuple
        for name in value._fields:
            _flatten(getattr(value, name), f"{key}.{name}", out)
    elif isinstance(value, tuple):
        out[f"{key}.count"] = np.array(len(value))
        for i, item in enumerate(value):
            _flatten(item, f"{key}.{i}", out)
    elif value is not None:  # None: the key is absent
        out[key] = np.asarray(value)


def to_arrays(model: IntegerModel) -> Dict[str, np.ndarray]:
    """The model as flat ``{dotted key: array}`` with ``format`` and ``version`` keys."""
    out = {"format": np.array(FORMAT), "version": np.array(VERSION)}
    for name in model._fields:
        _flatten(getattr(model, name), name, out)
    return out


def _unflatten(hint: Any, key: str, arrays: Dict[str, np.ndarray], spec: Optional[NnaSpec]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:  # Optional[X]
        present = any(k == key or k.startswith(key + ".") for k in arrays)
        return _unflatten(args[0], key, arrays, spec) if present else None
    if origin is tuple:  # Tuple[X, ...]
        return tuple(_unflatten(args[0], f"{key}.{i}", arrays, spec) for i in range(int(arrays[f"{key}.count"])))
    if hint is NnaSpec:
        return NnaSpec.from_dict(json.loads(str(arrays[key])), key)
    if hint is Lut:
        function = key.rsplit(".", 1)[-1]
        lstm = spec.lstm
        table = arrays[key].astype(np.int64)
        table.flags.writeable = False
        return Lut(function, table, lstm.gate, lstm.nonlinearity, spec.lut.interpolate)
    if isinstance(hint, type) and hasattr(hint, "_fields"):
        hints = typing.get_type_hints(hint)
        return hint(**{name: _unflatten(hints[name], f"{key}.{name}", arrays, spec) for name in hint._fields})
    if key not in arrays:
        raise KeyError(f"integer model has no {key!r}")
    value = arrays[key]
    if hint is int:
        return int(value)
    if hint is np.float32:
        return np.float32(value)
    return value.astype(np.int64)


def from_arrays(arrays: Dict[str, np.ndarray]) -> IntegerModel:
    """Inverse of :func:`to_arrays`.

    Raises:
      ValueError: not an integer model, or a version this code does not read.
    """
    if str(arrays.get("format", "")) != FORMAT:
        raise ValueError(f"not an {FORMAT} file")
    if int(arrays["version"]) != VERSION:
        raise ValueError(f"integer model version {int(arrays['version'])}, this engine reads version {VERSION}")
    spec = NnaSpec.from_dict(json.loads(str(arrays["spec"])), "spec")
    hints = typing.get_type_hints(IntegerModel)
    return IntegerModel(**{name: _unflatten(hints[name], name, arrays, spec) for name in IntegerModel._fields})


def save_integer_model(model: IntegerModel, path: Union[str, Path]) -> StorageReport:
    """Writes ``model`` as an uncompressed ``.npz`` side-car: weights as K-bit indices into int8
    codebooks where that is smaller (see :mod:`nnaqat.nna.storage`), every other integer in its
    narrowest type. Returns the bytes per kind of array."""
    stored, report = encode_arrays(to_arrays(model))
    atomic_write(path, lambda f: np.savez(f, **stored))
    return report


def load_integer_model(path: Union[str, Path]) -> IntegerModel:
    """Reads a file of :func:`save_integer_model` (no pickled objects are loaded); a file that
    is not one, or is truncated, raises ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return from_arrays(decode_arrays({key: data[key] for key in data.files}))
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: {error}") from None
