"""``nna_(model, spec)``: the one call that makes a transducer emulate the NNA in training.

Like ``quant.quantize_`` it works in place, before the optimizer is created, and a checkpoint of
the converted model is rebuilt by converting a freshly built float model with the same spec and
``state_dict``. The NNA versions are not registry variants: their quantization parameters are
tied across the encoder, predictor and joiner, which build-by-name cannot express.

Typical use::

    nna_(model, NnaSpec.from_yaml("conf/nna/int8.yaml"))
    calibrate(model, batches)          # a few training-mode batches set the EMA ranges
    freeze_calibration(model)          # optional: fixed ranges from here on
    ... train; export with nna.export.export_integer_model(model)
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
from torch import nn

from nnaqat.models.encoder import LstmEncoder
from nnaqat.models.joiner import AdditiveJoiner
from nnaqat.models.predictor import StatelessPredictor
from nnaqat.models.transducer import Transducer
from nnaqat.nna.linear import RangeObserver
from nnaqat.nna.models import NnaAdditiveJoiner, NnaLstmEncoder, NnaStatelessPredictor
from nnaqat.nna.placement import cpu_ops, place_
from nnaqat.nna.spec import NnaSpec

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x, x_lens, y, y_lens


def _check_convertible(model: Transducer) -> None:
    if getattr(model, "nna_spec", None) is not None:
        raise ValueError("model already emulates an NNA")
    if getattr(model, "quantizer", None) is not None:
        raise ValueError("call nna_ before quantize_: the quantizer must wrap the emulated layers' weights")
    parts = {"encoder": (model.encoder, LstmEncoder), "predictor": (model.predictor, StatelessPredictor),
             "joiner": (model.joiner, AdditiveJoiner)}  # fmt: skip
    for name, (module, expected) in parts.items():
        if type(module) is not expected:
            raise ValueError(f"no NNA version of the {name} {type(module).__name__} (supported: {expected.__name__})")
    if model.encoder.d_model != model.encoder.hidden_size:
        raise ValueError("the NNA encoder does not emulate LSTM projections (proj_size > 0)")


def nna_(model: Transducer, spec: NnaSpec, *, state_dict: Optional[dict] = None) -> Transducer:
    """Replaces ``model``'s encoder, predictor and joiner by their NNA-emulating versions, in place.

    Without ``state_dict`` the float weights carry over and the new ranges are uncalibrated
    (:func:`calibrate`); with it (a checkpoint of a converted model) everything is loaded from
    it. ``model.nna_spec`` records the spec. The training-only simple heads stay float, and so
    do the ops the spec places on the CPU (``placement.place_``).

    Raises:
      ValueError: the model is already converted or quantized, has a part with no NNA version, or
        an op with no float fallback is placed on the CPU.
    """
    _check_convertible(model)
    config = model.config
    float_state = model.state_dict()
    model.encoder = NnaLstmEncoder(spec, **config.encoder_kwargs)
    model.predictor = NnaStatelessPredictor(
        spec, vocab_size=config.vocab_size, blank_id=config.blank_id, **config.predictor_kwargs
    )
    model.joiner = NnaAdditiveJoiner(
        spec, model.encoder.output_dim, model.predictor.output_dim, config.joiner_dim, config.vocab_size
    )
    model.joiner.connect(model.encoder.output_range, model.predictor.output_range)
    place_(model, spec)  # also records model.nna_spec
    if state_dict is not None:
        model.load_state_dict(state_dict)
        return model
    result = model.load_state_dict(float_state, strict=False)
    uncalibrated = [k for k in result.missing_keys if "_observer." not in k]
    if result.unexpected_keys or uncalibrated:
        raise RuntimeError(f"float weights do not map onto the NNA model: {result.unexpected_keys or uncalibrated}")
    return model


@torch.no_grad()
def calibrate(model: Transducer, batches: Iterable[Batch], prune_range: int = 5) -> int:
    """Runs training-mode forward passes (the training loss's, without gradients) so that every
    EMA range observes real activations; returns the number of batches."""
    was_training = model.training
    model.train()
    count = 0
    for x, x_lens, y, y_lens in batches:
        model(x, x_lens, y, y_lens, prune_range=prune_range)
        count += 1
    model.train(was_training)
    if count == 0:
        raise ValueError("no calibration batches")
    return count


def freeze_calibration(model: nn.Module) -> None:
    """Fixes every calibrated range of ``model``.

    Raises:
      RuntimeError: a range has seen no data (other than one an op on the CPU does not use).
    """
    on_cpu = tuple(f"{name}." for name in cpu_ops(model))
    for name, module in model.named_modules():
        if isinstance(module, RangeObserver):
            if name.startswith(on_cpu) and not module.calibrated:
                continue  # e.g. the cell range of an LSTM that runs in float
            module.freeze()
