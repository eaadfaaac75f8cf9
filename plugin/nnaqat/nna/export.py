"""Exports a converted (``nna_``) and calibrated transducer as the integer model the reference
engine runs: exactly the integers the emulated forward pass uses."""

from __future__ import annotations

import torch

from nnaqat.models.transducer import Transducer
from nnaqat.nna import reference as ref
from nnaqat.nna.integer_model import EncoderParams, IntegerModel, JoinerParams, PredictorParams
from nnaqat.nna.models import NnaAdditiveJoiner, NnaLstmEncoder, NnaStatelessPredictor
from nnaqat.nna.placement import cpu_ops
from nnaqat.nna.reference_lstm import gate_luts


def _encoder(encoder: NnaLstmEncoder) -> EncoderParams:
    stacking = encoder.subsampling
    scale, zero_point = stacking.out.input_observer.scale_and_zero_point()
    return EncoderParams(
        input_scale=scale.numpy().astype("float32")[()],
        input_zero_point=zero_point,
        subsampling_factor=stacking.factor,
        subsampling=stacking.out.integer_params(),
        layers=tuple(layer.integer_params() for layer in encoder.layers),
        residuals=tuple(residual.integer_params() for residual in encoder.residuals),
    )


def _predictor(predictor: NnaStatelessPredictor) -> PredictorParams:
    conv = None if predictor.conv is None else predictor.conv.integer_params()
    return PredictorParams(predictor.embedding.integer_params(), predictor.context_size, conv)


def _joiner(joiner: NnaAdditiveJoiner) -> JoinerParams:
    add, tanh_output = joiner.activation.integer_params()
    return JoinerParams(
        encoder_proj=joiner.encoder_proj.integer_params(),
        decoder_proj=joiner.decoder_proj.integer_params(),
        add=add,
        tanh_output=ref.FixedPointMultiplier(*tanh_output),
        output_linear=joiner.output_linear.integer_params(),
    )


@torch.no_grad()
def export_integer_model(model: Transducer) -> IntegerModel:
    """The integers of an ``nna_``-converted ``model``.

    Raises:
      ValueError: the model is not converted, or runs ops on the CPU (the integer engine runs
        all-NNA models).
      RuntimeError: a range has not been calibrated.
    """
    spec = getattr(model, "nna_spec", None)
    if spec is None:
        raise ValueError("model does not emulate an NNA: convert it with nna.convert.nna_ first")
    on_cpu = cpu_ops(model)
    if on_cpu:
        raise ValueError(f"the integer engine runs all-NNA models; the spec places {on_cpu} on the CPU")
    was_training = model.training
    model.eval()  # no provisional ranges: an uncalibrated one raises
    try:
        return IntegerModel(
            spec=spec,
            luts=gate_luts(spec),
            encoder=_encoder(model.encoder),
            predictor=_predictor(model.predictor),
            joiner=_joiner(model.joiner),
            blank_id=model.blank_id,
        )
    finally:
        model.train(was_training)
