"""The emulated ops between a transducer's linear and LSTM layers — residual add, predictor conv
with fused ReLU, joiner add + tanh, integer embedding — against the integer engine's, on fuzzed
formats, ranges and codes; the grouped convolution against its definition; STE gradients."""

from __future__ import annotations

import dataclasses
from unittest.mock import patch

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nnaqat.nna import NnaSpec
from nnaqat.nna import reference as ref
from nnaqat.nna.engine import add_tanh, conv_relu
from nnaqat.nna.layers import NnaAdd, NnaAddTanh, NnaEmbedding, NnaGroupedConv
from nnaqat.nna.linear import RangeObserver
from nnaqat.nna.models import NnaAdditiveJoiner
from nnaqat.nna.ranges import FixedRange
from nnaqat.nna.spec import AccumulatorFormat, RequantizationFormat
from repo_paths import NNA_CONF

BASES = [NnaSpec.from_yaml(NNA_CONF / "int8.yaml"), NnaSpec.from_yaml(NNA_CONF / "harsh.yaml")]
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs(draw) -> NnaSpec:
    rounding = draw(st.sampled_from(ref.ROUNDINGS))
    order = draw(st.sampled_from(["after_rounding", "before_rounding"])) if rounding == "fp32_rne" else "after_rounding"
    accumulator = draw(st.sampled_from([AccumulatorFormat(32, "saturate"), AccumulatorFormat(12, "wrap")]))
    return dataclasses.replace(
        draw(st.sampled_from(BASES)), requantization=RequantizationFormat(rounding, order), accumulator=accumulator
    )


def calibrated_range(low: float, high: float, bits: int = 8) -> RangeObserver:
    observer = RangeObserver(bits)
    observer.min_max.copy_(torch.tensor([low, high]))
    observer.calibrated.fill_(True)
    observer.freeze()
    return observer.eval()


def codes(rng: np.random.Generator, shape, bits: int = 8) -> np.ndarray:
    low, high = ref.int_range(bits)
    x = rng.integers(low, high + 1, shape)
    x.flat[:: max(1, x.size // 3)] = high  # the clamps
    x.flat[1 :: max(1, x.size // 3)] = low
    return x


def dequantized(x_q: np.ndarray, source) -> torch.Tensor:
    scale, zero_point = source.scale_and_zero_point()
    return (torch.from_numpy(x_q).float() - zero_point) * scale


def assert_same(emulated: torch.Tensor, expected: np.ndarray) -> None:
    emulated = emulated.detach().double().numpy()
    assert emulated.shape == expected.shape
    assert np.count_nonzero(emulated != expected) == 0


# ---- grouped convolution ---------------------------------------------------------------------


@FUZZ
@given(
    st.sampled_from([(4, 1), (4, 4), (8, 2), (6, 3)]), st.integers(1, 3), st.integers(-128, 127),
    st.sampled_from([("saturate", 32), ("saturate", 12), ("wrap", 12)]), st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_grouped_accumulate_is_a_grouped_conv1d(channels_groups, taps, zero_point, overflow_bits, seed):
    """The reference against torch's own grouped convolution (float64, exact on these integers)."""
    channels, groups = channels_groups
    overflow, acc_bits = overflow_bits
    rng = np.random.default_rng(seed)
    x = codes(rng, (2, 5, taps, channels))
    weight = codes(rng, (channels, channels // groups, taps))
    bias = rng.integers(-(2**12), 2**12, channels)
    as_signal = torch.from_numpy(x - zero_point).double().reshape(10, taps, channels).transpose(1, 2)
    exact = F.conv1d(as_signal, torch.from_numpy(weight).double(), torch.from_numpy(bias).double(), groups=groups)
    exact = exact.reshape(2, 5, channels).long().numpy()
    expected = ref.saturate(exact, acc_bits) if overflow == "saturate" else ref.wrap(exact, acc_bits)
    got = ref.grouped_accumulate(x, weight, groups, acc_bits, overflow, zero_point, bias)
    assert np.array_equal(got, expected)


@FUZZ
@given(specs(), st.sampled_from([(8, 2), (8, 8), (6, 1)]), st.integers(1, 3), st.floats(0.01, 2.0),
       st.sampled_from([0.01, 1.0, 50.0]), st.integers(0, 2**31 - 1))  # fmt: skip
def test_grouped_conv_with_relu_equals_the_engine(spec, channels_groups, taps, output_max, weight_gain, seed):
    channels, groups = channels_groups
    torch.manual_seed(seed % 2**31)
    source = FixedRange(0.05, zero_point=-3)  # an input zero point other than 0
    conv = nn.Conv1d(channels, channels, taps, groups=groups, bias=True)
    layer = NnaGroupedConv.from_conv(conv, source, spec)
    with torch.no_grad():
        layer.weight.mul_(weight_gain)
    layer.output_observer = calibrated_range(0.0, output_max)
    windows = codes(np.random.default_rng(seed), (3, 4, taps, channels))
    with torch.no_grad():
        emulated = layer.forward_integers(torch.from_numpy(windows).float())
    expected = conv_relu(windows, layer.integer_params(), spec)
    assert_same(emulated, expected)
    assert expected.min() >= layer.integer_params().y_zero_point  # ReLU: nothing below the code of 0.0


# ---- adds ------------------------------------------------------------------------------------


@FUZZ
@given(specs(), st.tuples(st.floats(-8, 0), st.floats(0.01, 8)), st.tuples(st.floats(-1, 0), st.floats(0.01, 1)),
       st.tuples(st.floats(-6, 0), st.floats(0.01, 6)), st.integers(0, 2**31 - 1))  # fmt: skip
def test_residual_add_equals_the_reference(spec, a_range, b_range, out_range, seed):
    a_source, b_source = calibrated_range(*a_range), calibrated_range(*b_range)
    add = NnaAdd(a_source, 8, b_source, 8, spec)
    add.output_observer = calibrated_range(*out_range)
    rng = np.random.default_rng(seed)
    a_q, b_q = codes(rng, (4, 7)), codes(rng, (4, 7))
    with torch.no_grad():
        out = add(dequantized(a_q, a_source), dequantized(b_q, b_source))
    k = add.integer_params()
    expected = ref.add(a_q, k.a_zero_point, b_q, k.b_zero_point, k.fixed_point, k.out_zero_point, 8,
                       spec.requantization.rounding)  # fmt: skip
    assert_same(torch.round(out / add.output_observer.scale_and_zero_point()[0]) + k.out_zero_point, expected)


@FUZZ
@given(specs(), st.tuples(st.floats(-8, 0), st.floats(0.01, 8)), st.tuples(st.floats(-8, 0), st.floats(0.01, 8)),
       st.integers(0, 2**31 - 1))  # fmt: skip
def test_joiner_add_tanh_equals_the_engine(spec, a_range, b_range, seed):
    a_source, b_source = calibrated_range(*a_range), calibrated_range(*b_range)
    activation = NnaAddTanh(a_source, b_source, spec)
    rng = np.random.default_rng(seed)
    a_q, b_q = codes(rng, (5, 1, 6)), codes(rng, (1, 3, 6))  # broadcast as frames x symbols
    with torch.no_grad():
        out = activation(dequantized(a_q, a_source), dequantized(b_q, b_source))
    add, to_output = activation.integer_params()
    expected = add_tanh(a_q, b_q, add, to_output, spec, activation.tanh)
    assert_same(torch.round(out / activation.output_range.scale), expected)
    assert np.abs(expected).max() <= ref.int_range(spec.activations.bits)[1]


def test_residual_add_gradient_is_one_inside_the_output_range():
    """STE: d(a + b)/da = d(a + b)/db = 1 up to the quantized multipliers, 0 where it saturates."""
    a_source, b_source = calibrated_range(-2.0, 2.0), calibrated_range(-1.0, 1.0)
    add = NnaAdd(a_source, 8, b_source, 8)
    add.output_observer = calibrated_range(-1.5, 1.5)
    rng = np.random.default_rng(0)
    a_q, b_q = codes(rng, (200,)), codes(rng, (200,))
    a = dequantized(a_q, a_source).requires_grad_()
    b = dequantized(b_q, b_source).requires_grad_()
    add(a, b).sum().backward()
    k = add.integer_params()
    unclamped = ref.add(a_q, k.a_zero_point, b_q, k.b_zero_point, k.fixed_point, k.out_zero_point, 24, "single")
    inside = torch.from_numpy((unclamped >= -128) & (unclamped <= 127))
    assert 0 < int(inside.sum()) < 200
    for grad in (a.grad, b.grad):
        assert torch.allclose(grad, inside.float(), atol=1e-6)


def test_joiner_tanh_gradient_is_the_true_derivative():
    """Through the table, the gradient is tanh's derivative at the integer sum (clipped STE
    where the gate-format add saturates, |a + b| >= 8; the int8 output, scale 1/127, never does)."""
    spec = BASES[0]
    a_source, b_source = calibrated_range(-6.0, 6.0), calibrated_range(-4.0, 4.0)
    activation = NnaAddTanh(a_source, b_source, spec)
    rng = np.random.default_rng(1)
    a = dequantized(codes(rng, (300,)), a_source).requires_grad_()
    b = dequantized(codes(rng, (300,)), b_source)
    activation(a, b).sum().backward()
    add, _ = activation.integer_params()
    a_q, b_q = (torch.round(v.detach() / s.scale_and_zero_point()[0]) + s.scale_and_zero_point()[1]
                for v, s in ((a, a_source), (b, b_source)))  # fmt: skip
    total = ref.add(a_q.long().numpy(), add.a_zero_point, b_q.long().numpy(), add.b_zero_point, add.fixed_point, 0,
                    16, spec.requantization.rounding)  # fmt: skip
    x = torch.from_numpy(total).double() * 2.0**-spec.lstm.gate.frac_bits
    inside = (total > -(2**15)) & (total < 2**15 - 1)
    assert 0 < inside.sum() < 300
    expected = (1 - torch.tanh(x) ** 2) * torch.from_numpy(inside)
    assert torch.allclose(a.grad.double(), expected, atol=1e-5)


@pytest.mark.parametrize("a_range", [(-6.0, 6.0), (-2.0, 3.0)])
def test_joiner_pair_table_equals_the_operators_values_and_gradients(a_range):
    """The 256 x 256 table of every input pair gives the ops' output codes and straight-through
    gradients, broadcasting as frames x symbols; a module that has cached its table for one
    calibration builds it again for the next."""
    spec = BASES[0]
    a_source, b_source = calibrated_range(-6.0, 6.0), calibrated_range(-4.0, 4.0)
    activation = NnaAddTanh(a_source, b_source, spec)
    activation(torch.zeros(1), torch.zeros(1))  # caches the table of the first calibration
    a_source.min_max.copy_(torch.tensor(a_range))
    rng = np.random.default_rng(2)
    a_q, b_q = codes(rng, (5, 1, 6)), codes(rng, (1, 3, 6))
    results = []
    for table in (True, False):
        a = dequantized(a_q, a_source).requires_grad_()
        b = dequantized(b_q, b_source).requires_grad_()
        with patch("nnaqat.nna.layers.MAX_PAIR_TABLE_BITS", 8 if table else 0):
            out = activation(a, b)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), a.grad, b.grad))
    for tabled, direct in zip(*results):
        assert torch.allclose(tabled, direct, rtol=1e-6, atol=1e-6) and float(direct.abs().max()) > 0


@pytest.mark.parametrize("spec", BASES)
def test_joiner_hands_its_table_codes_to_the_output_linear(spec):
    """The joiner feeds the pair table's output codes straight to the output linear: the same
    logits as dequantizing them and quantizing again on its tied input range, the same gradients."""
    torch.manual_seed(0)
    joiner = NnaAdditiveJoiner(spec, encoder_dim=12, decoder_dim=8, joiner_dim=16, vocab_size=5)
    encoder_out, decoder_out = torch.randn(3, 7, 1, 12), torch.randn(3, 1, 4, 8)
    joiner(encoder_out, decoder_out)  # calibrates (training mode)
    joiner.eval()
    results = []
    for handed_off in (True, False):
        enc = encoder_out.clone().requires_grad_()
        if handed_off:
            logits = joiner(enc, decoder_out)
        else:
            activation = joiner.activation(joiner.encoder_proj(enc), joiner.decoder_proj(decoder_out))
            logits = joiner.output_linear(activation)
        (logits * torch.linspace(-1, 1, logits.numel()).reshape(logits.shape)).sum().backward()
        results.append((logits.detach(), enc.grad))
    (logits, grad), (expected_logits, expected_grad) = results
    assert torch.equal(logits, expected_logits) and logits.shape == (3, 7, 4, 5)
    assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-6) and float(grad.abs().max()) > 0


# ---- embedding -------------------------------------------------------------------------------


def test_embedding_table_is_symmetric_per_tensor_and_blank_stays_zero():
    torch.manual_seed(0)
    embedding = nn.Embedding(10, 6, padding_idx=0)
    layer = NnaEmbedding.from_embedding(embedding, BASES[0])
    table = layer.integer_params()
    scale, zero_point = layer.scale_and_zero_point()
    assert zero_point == 0 and np.abs(table).max() == 127 and not table[0].any()
    assert torch.allclose(torch.from_numpy(table).float() * scale, embedding.weight.detach(), atol=float(scale) / 2)
    ids = torch.tensor([[0, 3, 3, 9]])
    layer.forward_integers(ids).sum().backward()
    assert not layer.weight.grad[0].any() and layer.weight.grad[3].abs().sum() > 0
    assert np.array_equal(layer.forward_integers(ids).detach().long().numpy(), ref.embedding_lookup(ids.numpy(), table))
