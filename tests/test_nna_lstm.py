"""``NnaLstm`` against the integer reference LSTM: zero mismatching integers on real FSDD features
and on fuzzed formats, ranges and inputs (clamps and the cell exponent's limits included);
calibration, streaming state and straight-through gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lhotse import load_manifest
from torch import nn

from nnaqat.nna import NnaSpec, QFormat, ops
from nnaqat.nna import reference as ref
from nnaqat.nna import reference_lstm as rl
from nnaqat.nna.lstm import NnaLstm
from nnaqat.nna.spec import AccumulatorFormat, LstmFormat, LutFormat, RequantizationFormat
from repo_paths import NNA_CONF

DEFAULT = NnaSpec.from_yaml(NNA_CONF / "int8.yaml")
HARSH = NnaSpec.from_yaml(NNA_CONF / "harsh.yaml")
SPECS = {
    "int8": DEFAULT,
    "harsh": HARSH,
    "double": dataclasses.replace(DEFAULT, requantization=RequantizationFormat("double")),
    "tosa": dataclasses.replace(DEFAULT, requantization=RequantizationFormat("tosa")),
    "fp32_rne-before": dataclasses.replace(DEFAULT, requantization=RequantizationFormat("fp32_rne", "before_rounding")),
    "harsh-double-wrap16": dataclasses.replace(
        HARSH, requantization=RequantizationFormat("double"), accumulator=AccumulatorFormat(16, "wrap")
    ),
}
HIDDEN = 32
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fbank(tiny_data):
    """Real connected-digit log-mel features, the first 1.5 s of utterances: (train sequences,
    dev sequences), each (1, T, 80)."""
    def load(path, n):
        return [torch.from_numpy(c.load_features()[:150])[None] for c in list(load_manifest(path))[:n]]

    return load(tiny_data.train, 4), load(tiny_data.dev, 4)


def calibrated(spec: NnaSpec, train, seed: int = 0) -> tuple[NnaLstm, nn.LSTM]:
    torch.manual_seed(seed)
    lstm = nn.LSTM(80, HIDDEN, batch_first=True)
    layer = NnaLstm.from_lstm(lstm, spec).train()
    with torch.no_grad():
        for x in train:
            layer(x)
    layer.freeze_calibration()
    return layer.eval(), lstm


def reference_run(layer: NnaLstm, x_q: torch.Tensor, state=None):
    params = layer.integer_params()
    if state is not None:
        state = tuple(s.long().numpy() for s in state)
    return rl.lstm_sequence(x_q.long().numpy(), params, layer.spec, rl.gate_luts(layer.spec), state)


def mismatches(emulated: torch.Tensor, expected: np.ndarray) -> int:
    assert emulated.shape == expected.shape
    return int(np.count_nonzero(emulated.detach().double().numpy() != expected))


@pytest.mark.parametrize("name", SPECS)
def test_emulated_lstm_equals_reference_on_real_features(name, fbank):
    train, dev = fbank
    layer, _ = calibrated(SPECS[name], train)
    spec = layer.spec
    total = compared = 0
    gate_clamped, cell_codes = 0, []
    for x in dev:
        with torch.no_grad():
            x_q = layer.quantize_input(x)
            y, (h, c) = layer.forward_integers(x_q, layer.initial_state_codes(1))
        y_ref, (h_ref, c_ref) = reference_run(layer, x_q)
        total += mismatches(y, y_ref) + mismatches(h, h_ref) + mismatches(c, c_ref)
        compared += y_ref.size + c_ref.size
        # The first step's gates (zero state: only the input contributes) reach the gate clamps.
        params = layer.integer_params()
        first = ref.linear(x_q[:, 0].long().numpy(), params.input, spec.accumulator.bits, spec.accumulator.overflow,
                           spec.lstm.gate.bits, spec.requantization.rounding, spec.requantization.zero_point)
        gate_clamped += int(np.isin(first, ref.int_range(spec.lstm.gate.bits)).sum())
        cell_codes.append(c_ref)
    print(f"[{name}] {total} mismatches over {compared} hidden and cell codes")
    assert total == 0 and compared > 10_000
    if spec.accumulator.overflow == "saturate":
        assert gate_clamped > 0
    # The calibrated cell range is used (the final cells reach a quarter of it) and holds.
    cells = np.concatenate(cell_codes)
    low, high = ref.int_range(spec.lstm.cell_bits)
    assert low <= cells.min() and cells.max() <= high and np.abs(cells).max() > high // 4


@pytest.mark.parametrize("name", ["int8", "harsh"])
def test_state_carried_across_chunks_equals_the_whole_sequence(name, fbank):
    """nn.LSTM's float state, handed back between chunks, holds the integer state exactly."""
    train, dev = fbank
    layer, _ = calibrated(SPECS[name], train)
    x = dev[0]
    with torch.no_grad():
        whole, (h, c) = layer(x)
        first, state = layer(x[:, :37])
        second, (h2, c2) = layer(x[:, 37:], state)
    assert torch.equal(torch.cat([first, second], dim=1), whole)
    assert torch.equal(h2, h) and torch.equal(c2, c)
    assert h.shape == c.shape == (1, 1, HIDDEN)


def test_int8_lstm_is_close_to_the_float_lstm_and_the_harsh_one_is_not(fbank):
    train, dev = fbank
    errors = {}
    for name in ("int8", "harsh"):
        layer, lstm = calibrated(SPECS[name], train)
        with torch.no_grad():
            pairs = [(layer(x)[0], lstm(x)[0]) for x in dev]
        emulated, exact = torch.cat([p[0] for p in pairs], 1), torch.cat([p[1] for p in pairs], 1)
        errors[name] = float((emulated - exact).abs().mean() / exact.abs().mean())
    print(f"relative mean abs error vs float LSTM: {errors}")
    assert errors["int8"] < 0.05
    assert errors["harsh"] > 1.5 * errors["int8"]


def test_straight_through_gradients_follow_the_float_lstm(fbank):
    """Back-propagated through 8-bit emulation, the weight gradients point where the float
    LSTM's do (STE through roundings and clamps, the true derivative through the tables)."""
    train, dev = fbank
    layer, lstm = calibrated(DEFAULT, train)
    layer.train()  # frozen ranges: training mode changes nothing but gradients
    x = dev[1]
    target = torch.randn(1, x.size(1), HIDDEN, generator=torch.Generator().manual_seed(0)) * 0.3
    for module in (layer, lstm):
        ((module(x)[0] - target) ** 2).sum().backward()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"):
        g_emulated, g_float = getattr(layer, name).grad.flatten(), getattr(lstm, name).grad.flatten()
        cosine = float(torch.nn.functional.cosine_similarity(g_emulated, g_float, dim=0))
        print(f"{name}: cosine {cosine:.3f}")
        assert cosine > 0.9


def autograd_through_ops(layer: NnaLstm, x: torch.Tensor) -> torch.Tensor:
    """The documented surrogates, the slow way: the integer step composed of ``ops`` calls with
    autograd through each one's straight-through estimator. Float ``y (N, T, H)``."""
    spec, lstm, acc = layer.spec, layer.spec.lstm, layer.spec.accumulator
    rounding, order = spec.requantization.rounding, spec.requantization.zero_point
    k = layer._integers()
    n_frac, c_frac = lstm.nonlinearity.frac_bits, k.cell_frac_bits
    from_input = ops.requantize_output(ops.accumulate(layer.quantize_input(x), k.w_x, acc.bits, acc.overflow,
                                                      k.x_zero_point, k.bias),
                                       k.m_x, k.shift_x, 0, lstm.gate.bits, rounding, order)  # fmt: skip
    h, c = layer.initial_state_codes(x.size(0))
    factor, shift = layer._cell_to_gate_format(c_frac)
    outputs = []
    for t in range(x.size(1)):
        acc_h = ops.accumulate(h, k.w_h, acc.bits, acc.overflow, k.h_zero_point)
        pre = from_input[:, t].double() + ops.requantize(acc_h, k.m_h, k.shift_h, rounding)
        gates = pre.clamp(*ref.int_range(lstm.gate.bits)).float()
        i, f, g, o = gates.chunk(4, dim=-1)
        i, f, o = (ops.lut_lookup(v, layer.luts.sigmoid) for v in (i, f, o))
        g = ops.lut_lookup(g, layer.luts.tanh)
        kept = ops.mul(f, c, n_frac, lstm.cell_bits, rounding)
        written = ops.mul(i, g, 2 * n_frac - c_frac, lstm.cell_bits, rounding)
        c = (kept + written).clamp(*ref.int_range(lstm.cell_bits))
        squashed = ops.lut_lookup(ops.mul(c, torch.tensor(factor), shift, lstm.gate.bits, rounding), layer.luts.tanh)
        h = ops.requantize_output(o.double() * squashed.double(), k.m_out, k.shift_out, k.h_zero_point,
                                  lstm.hidden_bits, rounding, order)  # fmt: skip
        outputs.append(h)
    return ops.dequantize(torch.stack(outputs, 1), *layer.hidden_scale_and_zero_point())


@pytest.mark.parametrize("name", SPECS)
def test_hand_written_backward_equals_autograd_through_the_operators(name, fbank):
    """``_Recurrence``'s backward pass is the chain rule of the ops' documented straight-through
    estimators: the same outputs and, to float32 rounding, the same gradients as autograd
    through every operator, saturations included."""
    train, dev = fbank
    layer, _ = calibrated(SPECS[name], train)
    layer.train()  # frozen ranges: training mode changes nothing but gradients
    x = torch.cat([dev[0][:, :120], dev[2][:, :120]])
    target = torch.randn(2, 120, HIDDEN, generator=torch.Generator().manual_seed(1)) * 0.3
    grads = []
    for run in (lambda x: layer(x)[0], lambda x: autograd_through_ops(layer, x)):
        layer.zero_grad()
        x_leaf = x.clone().requires_grad_()
        y = run(x_leaf)
        ((y - target) ** 2).sum().backward()
        grads.append((y.detach(), [x_leaf.grad] + [p.grad.clone() for p in layer.parameters()]))
    (y_fused, fused), (y_ops, through_ops) = grads
    assert torch.equal(y_fused, y_ops)
    for a, b in zip(fused, through_ops):
        assert float(b.abs().max()) > 0
        assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


def test_hidden_and_cell_ranges_apply_from_the_next_batch(fbank):
    train, _ = fbank
    torch.manual_seed(0)
    layer = NnaLstm(80, 8, DEFAULT).train()
    provisional = layer.cell_frac_bits()
    assert provisional == rl.cell_frac_bits(8.0, DEFAULT) == 12  # the tanh input range, [-8, 8)
    with torch.no_grad():
        layer(train[0])
    observed = float(layer.cell_observer.min_max.abs().max())
    assert layer.hidden_observer.calibrated and 0 < observed
    assert layer.cell_frac_bits() == rl.cell_frac_bits(observed, DEFAULT)
    with pytest.raises(RuntimeError, match="no data"):
        NnaLstm(80, 8, DEFAULT).eval()(train[0])


def test_a_fixed_cell_scale_holds_whatever_the_cell_range(fbank):
    train, _ = fbank
    spec = NnaSpec.from_yaml(NNA_CONF / "harsh-cell4-fixed.yaml")
    torch.manual_seed(0)
    layer = NnaLstm(80, 8, spec).train()
    assert layer.cell_frac_bits() == 1
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(10.0)  # cells far beyond the fixed format's [-4, 4)
        layer(train[0])
    observed = float(layer.cell_observer.min_max.abs().max())
    assert observed > 4
    assert layer.cell_frac_bits() == layer.integer_params().cell_frac_bits == rl.cell_frac_bits(observed, spec) == 1
    calibrated = NnaSpec.from_yaml(NNA_CONF / "harsh-cell4.yaml")
    assert rl.cell_frac_bits(observed, calibrated) <= 0


@pytest.mark.parametrize(
    "max_abs, frac_bits",
    [(0.9, 15), (1.0, 15), (1.01, 14), (4.0, 13), (5.0, 12), (300.0, 6), (1e-3, 24), (0.0, 30), (1e9, -1)],
)
def test_cell_frac_bits_hand_worked(max_abs, frac_bits):
    """int16 cell: 15 - ceil(log2 max|c|) fractional bits, within [-1, 30] for Q3.12/Q0.15
    (i * g's shift 30 - f in 0..31; the rescale to Q3.12 multiplies by at most 2**14)."""
    assert DEFAULT.lstm.cell_frac_bit_limits() == (-1, 30)
    assert rl.cell_frac_bits(max_abs, DEFAULT) == frac_bits


# ---- fuzzing ---------------------------------------------------------------------------------

LSTM_FORMATS = [  # (gate, nonlinearity, cell bits, hidden bits, lut size, interpolate)
    (QFormat(3, 12), QFormat(0, 15), 16, 8, 513, True),
    (QFormat(3, 4), QFormat(0, 7), 8, 8, 65, False),
    (QFormat(4, 11), QFormat(0, 11), 12, 8, 257, True),
    (QFormat(2, 5), QFormat(0, 7), 8, 6, 33, True),
    (QFormat(3, 12), QFormat(0, 15), 10, 16, 65, False),
]


@st.composite
def fuzzed_specs(draw) -> NnaSpec:
    gate, nonlinearity, cell_bits, hidden_bits, size, interpolate = draw(st.sampled_from(LSTM_FORMATS))
    rounding = draw(st.sampled_from(ref.ROUNDINGS))
    order = draw(st.sampled_from(["after_rounding", "before_rounding"])) if rounding == "fp32_rne" else "after_rounding"
    accumulator = draw(st.sampled_from([AccumulatorFormat(32, "saturate"), AccumulatorFormat(16, "saturate"),
                                        AccumulatorFormat(14, "wrap")]))  # fmt: skip
    low, high = LstmFormat(gate, nonlinearity).cell_frac_bit_limits()
    cell_frac_bits = draw(st.one_of(st.none(), st.integers(low, high)))  # calibrated or fixed
    return dataclasses.replace(
        DEFAULT,
        lstm=LstmFormat(gate, nonlinearity, cell_bits, hidden_bits, cell_frac_bits),
        lut=LutFormat(size, interpolate),
        requantization=RequantizationFormat(rounding, order),
        accumulator=accumulator,
    )


ranges = st.tuples(st.floats(-20, 0), st.floats(0.01, 20))


@FUZZ
@given(
    spec=fuzzed_specs(),
    dims=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 12), st.integers(1, 6)),
    weight_gain=st.sampled_from([0.05, 1.0, 20.0]),
    input_range=ranges,
    hidden_range=st.tuples(st.floats(-1, 0), st.floats(0.001, 1)),
    cell_max_abs=st.sampled_from([1e-4, 0.3, 1.0, 5.0, 1e4, 1e9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_emulated_lstm_equals_reference_fuzzed(spec, dims, weight_gain, input_range, hidden_range, cell_max_abs, seed):
    """Any formats, any calibrated ranges (the cell exponent at both of its limits included, or
    fixed by the spec), any input and state codes up to the clamps."""
    batch, steps, inputs, hidden = dims
    torch.manual_seed(seed % 2**31)
    layer = NnaLstm(inputs, hidden, spec)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(weight_gain)
    for observer, (low, high) in ((layer.input_observer, input_range), (layer.hidden_observer, hidden_range),
                                  (layer.cell_observer, (-cell_max_abs, cell_max_abs))):  # fmt: skip
        observer.min_max.copy_(torch.tensor([low, high]))
        observer.calibrated.fill_(True)
    layer.freeze_calibration()
    layer.eval()
    rng = np.random.default_rng(seed)
    x_low, x_high = ref.int_range(spec.activations.bits)
    h_low, h_high = ref.int_range(spec.lstm.hidden_bits)
    c_low, c_high = ref.int_range(spec.lstm.cell_bits)
    x_q = rng.integers(x_low, x_high + 1, (batch, steps, inputs))
    x_q[rng.random(x_q.shape) < 0.1] = x_high  # clamps of the input
    h0 = rng.integers(h_low, h_high + 1, (batch, hidden))
    c0 = rng.integers(c_low, c_high + 1, (batch, hidden))
    c0[:, 0] = c_high
    as_float = lambda a: torch.from_numpy(a).float()  # noqa: E731
    with torch.no_grad():
        y, (h, c) = layer.forward_integers(as_float(x_q), (as_float(h0), as_float(c0)))
    y_ref, (h_ref, c_ref) = rl.lstm_sequence(x_q, layer.integer_params(), spec, rl.gate_luts(spec), (h0, c0))
    assert mismatches(y, y_ref) == 0 and mismatches(h, h_ref) == 0 and mismatches(c, c_ref) == 0
    low, high = spec.lstm.cell_frac_bit_limits()
    assert low <= layer.integer_params().cell_frac_bits <= high
    assert spec.lstm.cell_frac_bits in (None, layer.integer_params().cell_frac_bits)
