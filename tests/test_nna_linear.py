"""``NnaLinear``: bit-exact with ``reference.linear``, calibrated by EMA then frozen, close to
the float layer it replaces, with straight-through gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from nnaqat.nna import NnaSpec
from nnaqat.nna import reference as ref
from nnaqat.nna.linear import NnaLinear
from nnaqat.nna.spec import AccumulatorFormat, RequantizationFormat, WeightFormat
from repo_paths import NNA_CONF

DEFAULT = NnaSpec.from_yaml(NNA_CONF / "int8.yaml")
HARSH = NnaSpec.from_yaml(NNA_CONF / "harsh.yaml")

SPECS = {
    "int8": DEFAULT,
    "harsh": HARSH,
    "double": dataclasses.replace(DEFAULT, requantization=RequantizationFormat("double")),
    "tosa": dataclasses.replace(DEFAULT, requantization=RequantizationFormat("tosa")),
    "fp32_rne": dataclasses.replace(DEFAULT, requantization=RequantizationFormat("fp32_rne")),
    "fp32_rne-before": dataclasses.replace(DEFAULT, requantization=RequantizationFormat("fp32_rne", "before_rounding")),
    "wrap16": dataclasses.replace(DEFAULT, accumulator=AccumulatorFormat(16, "wrap")),
    "per-tensor-4bit": dataclasses.replace(DEFAULT, weights=WeightFormat(4, "per_tensor")),
}


def calibrated_layer(spec: NnaSpec, in_features: int, out_features: int, seed: int = 0) -> tuple[NnaLinear, nn.Linear]:
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    layer = NnaLinear.from_linear(linear, spec).train()
    for _ in range(3):
        layer(torch.randn(16, in_features) + 0.3)
    layer.freeze_calibration()
    return layer.eval(), linear


def reference_output(layer: NnaLinear, x_q: torch.Tensor) -> np.ndarray:
    spec = layer.spec
    return ref.linear(
        x_q.long().numpy(), layer.integer_params(), spec.accumulator.bits, spec.accumulator.overflow,
        spec.activations.bits, spec.requantization.rounding, spec.requantization.zero_point,
    )  # fmt: skip


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("in_features", [48, 1100])
def test_nna_linear_equals_the_reference_engine(name, in_features):
    layer, _ = calibrated_layer(SPECS[name], in_features, 24)
    # Inside and far outside the calibrated input range (input and output clamps).
    x = torch.cat([torch.randn(2, 5, in_features), 6 * torch.randn(1, 5, in_features)])
    with torch.no_grad():
        x_q = layer.quantize_input(x)
        y_q = layer.forward_integers(x_q)
    expected = reference_output(layer, x_q)
    assert np.array_equal(y_q.numpy(), expected), f"{np.count_nonzero(y_q.numpy() != expected)} mismatches"
    # The inputs reached the input clamps, and the outputs the output clamps or, with a
    # wrapping accumulator, the accumulator wrapped.
    low, high = ref.int_range(layer.spec.activations.bits)
    assert (x_q == low).any() and (x_q == high).any()
    if layer.spec.accumulator.overflow == "saturate":
        assert (expected == low).any() or (expected == high).any()
    else:
        params = layer.integer_params()
        wide = 63  # never overflows
        exact = ref.accumulate(x_q.long().numpy(), params.weight, wide, "saturate", params.x_zero_point, params.bias)
        assert np.any(exact != ref.wrap(exact, layer.spec.accumulator.bits))


def test_training_mode_forward_uses_the_exported_integers():
    torch.manual_seed(1)
    layer = NnaLinear(32, 8, spec=DEFAULT).train()
    x = torch.randn(4, 32)
    x_q = layer.quantize_input(x)  # first batch: calibrates the input
    y_q = layer.forward_integers(x_q)  # ... and the output
    assert np.array_equal(y_q.detach().numpy(), reference_output(layer, x_q))


def test_calibration_is_an_ema_until_frozen():
    layer = NnaLinear(4, 2).train()
    layer(torch.tensor([[-1.0, 0.0, 2.0, 1.0]]))
    assert layer.input_observer.min_max.tolist() == [-1.0, 2.0]
    layer(torch.tensor([[-3.0, 0.0, 4.0, 1.0]]))
    assert torch.allclose(layer.input_observer.min_max, torch.tensor([0.9 * -1 + 0.1 * -3, 0.9 * 2 + 0.1 * 4]))
    before = layer.input_observer.min_max.clone()
    layer.eval()(torch.full((1, 4), 100.0))  # evaluation does not calibrate
    assert torch.equal(layer.input_observer.min_max, before)
    layer.train().freeze_calibration()
    layer(torch.full((1, 4), 100.0))  # nor does training once frozen
    assert torch.equal(layer.input_observer.min_max, before)
    assert layer.state_dict()["input_observer.frozen"]  # checkpoints keep the frozen calibration


def test_uncalibrated_layer_refuses_to_run_in_eval():
    with pytest.raises(RuntimeError, match="no data"):
        NnaLinear(4, 2).eval()(torch.zeros(1, 4))


def test_integer_params_lie_on_their_grids():
    layer, _ = calibrated_layer(DEFAULT, 64, 16)
    params = layer.integer_params()
    assert params.weight.dtype == np.int64 and np.abs(params.weight).max() == 127  # max-abs per channel
    assert np.all(np.abs(params.weight).max(axis=1) == 127)
    assert np.all((params.multiplier >= 2**30) & (params.multiplier < 2**31))
    assert np.abs(params.bias).max() < 2**31 and -128 <= params.x_zero_point <= 127


def test_output_is_close_to_the_float_layer():
    layer, linear = calibrated_layer(DEFAULT, 64, 16)
    x = torch.randn(32, 64) + 0.3
    with torch.no_grad():
        emulated, exact = layer(x), linear(x)
    y_scale, _ = layer.output_observer.scale_and_zero_point()
    # int8 inputs, weights and outputs: errors of about an output step, nowhere near the signal.
    assert (emulated - exact).abs().mean() < 2 * y_scale
    assert (emulated - exact).abs().mean() < 0.05 * exact.abs().mean()


def test_gradients_are_the_straight_through_surrogate():
    """dL/dW = sum_b g * s_y * real_multiplier * [output not clamped] * (x_q - z_x) / s_w, and
    dL/dx = sum_n g * s_y * real_multiplier * [not clamped] * w_q / s_x * [input not clamped]."""
    layer, _ = calibrated_layer(DEFAULT, 64, 16)
    x = (2 * torch.randn(32, 64) + 0.3).requires_grad_()  # wide: some inputs and outputs clamp
    y = layer(x)
    y.pow(2).sum().backward()
    g = 2 * y.detach().double()
    with torch.no_grad():
        x_q = layer.quantize_input(x).double()
    x_scale, x_zp = layer.input_observer.scale_and_zero_point()
    y_scale, y_zp = layer.output_observer.scale_and_zero_point()
    params = layer.integer_params()
    real = torch.from_numpy(params.multiplier * 2.0 ** (params.shift - 31))
    acc = ref.accumulate(x_q.long().numpy(), params.weight, 32, "saturate", x_zp, params.bias)
    unclamped = torch.from_numpy(ref.requantize(acc, params.multiplier, params.shift, "single") + y_zp)
    low, high = ref.int_range(8)
    output_inside = (unclamped >= low) & (unclamped <= high)
    input_codes = torch.round(x.detach() / x_scale) + x_zp
    input_inside = (input_codes >= low) & (input_codes <= high)
    assert not output_inside.all() and not input_inside.all()
    upstream = g * float(y_scale) * real * output_inside  # (B, N): gradient reaching the accumulator
    w_scale = layer.weight_scale().double()
    expected_w = upstream.T @ (x_q - x_zp) / w_scale[:, None]
    expected_x = upstream @ torch.from_numpy(params.weight).double() / float(x_scale) * input_inside
    assert torch.allclose(layer.weight.grad.double(), expected_w, rtol=1e-4, atol=1e-6)
    assert torch.allclose(x.grad.double(), expected_x, rtol=1e-4, atol=1e-6)
