"""The training-time emulation (``nnaqat.nna.ops``) against the integer reference engine: zero
mismatching integers on fuzzed inputs built to hit ties, clamps and overflow; exactness past
float32's 2**24; straight-through gradients against their documented surrogates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnaqat.nna import ops
from nnaqat.nna import reference as ref
from nnaqat.nna.lut import build_lut
from nnaqat.nna.reference import INT32_MAX, INT32_MIN
from nnaqat.nna.spec import QFormat

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
ROUNDINGS = ref.ROUNDINGS


def as_float64(values) -> torch.Tensor:
    return torch.tensor(np.asarray(values), dtype=torch.float64)


def assert_same_integers(emulated: torch.Tensor, reference: np.ndarray) -> None:
    """Zero mismatches: every emulated value is exactly the reference integer."""
    assert emulated.shape == reference.shape
    emulated = emulated.detach().double().numpy()
    mismatches = np.flatnonzero(emulated != reference)
    assert mismatches.size == 0, f"{mismatches.size} mismatches, first at {mismatches[0]}: " \
        f"{emulated.flat[mismatches[0]]} != {reference.flat[mismatches[0]]}"


# ---- strategies ------------------------------------------------------------------------------

int32s = st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX]))
multipliers = st.one_of(st.integers(2**30, INT32_MAX), st.sampled_from([0, 2**30, 3 * 2**29, INT32_MAX]))


@st.composite
def tie(draw, max_shift: int = 30, max_odd_bits: int = 31):
    """(acc, M0, shift) with ``acc * M0 = odd * 2**(30 - shift)``: an exact tie of one rounding
    by 31 - shift bits; nudged by -1/0/+1 in acc, or a shift off by one (a tie of the other
    stage of ``double``). With few odd bits the float32 product is exact (fp32_rne ties)."""
    a = draw(st.integers(max(0, 31 - max_odd_bits), 30))  # M0 = m_odd * 2**a, m_odd < 2**(31 - a)
    m_odd = 2 * draw(st.integers(2 ** (29 - a), 2 ** (30 - a) - 1)) + 1 if a < 30 else 1
    b = draw(st.integers(max(0, 30 - a - max_shift), 30))
    acc_bits = min(30 - b, max_odd_bits)
    acc_odd = 2 * draw(st.integers(-(2**acc_bits), 2**acc_bits - 1)) + 1
    shift = 30 - a - b + draw(st.sampled_from([0, 0, 0, -1, 1]))
    acc = (acc_odd << b) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    return min(max(acc, INT32_MIN), INT32_MAX), m_odd << a, min(max(shift, -31), max_shift)


def requantize_case(max_shift: int = 30):
    anything = st.tuples(int32s, multipliers, st.integers(-31, max_shift))
    return st.one_of(anything, tie(max_shift), tie(max_shift, max_odd_bits=11))


def case_arrays(cases):
    acc, multiplier, shift = (np.array(column, dtype=np.int64) for column in zip(*cases))
    return acc, multiplier, shift


# ---- requantization --------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ROUNDINGS)
@FUZZ
@given(st.lists(requantize_case(max_shift=ops.MAX_EXACT_FLOAT64_SHIFT), min_size=1, max_size=48))
def test_requantize_parity(rounding, cases):
    acc, multiplier, shift = case_arrays(cases)
    emulated = ops.requantize(as_float64(acc), torch.from_numpy(multiplier), torch.from_numpy(shift), rounding)
    assert emulated.dtype == torch.float64
    assert_same_integers(emulated, ref.requantize(acc, multiplier, shift, rounding))


def test_requantize_refuses_shifts_float64_cannot_hold():
    with pytest.raises(ValueError, match="shift"):
        ops.requantize(as_float64([1]), 2**30, ops.MAX_EXACT_FLOAT64_SHIFT + 1, "single")


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantize_parity_on_a_large_sweep(rounding):
    """Two hundred thousand vectorized cases over the whole domain; the second hundred thousand are
    exact ties, a third of them inside the 24-bit output range (the rest saturate)."""
    rng = np.random.default_rng(7)
    n = 100_000
    acc = rng.integers(INT32_MIN, INT32_MAX + 1, n)
    multiplier = rng.integers(2**30, 2**31, n)
    shift = rng.integers(-31, 31, n)
    a, b = rng.integers(0, 31, n), rng.integers(0, 16, n)
    # acc * multiplier * 2**(shift - 31) = odd * odd / 2: exactly halfway between two integers.
    tie_multiplier = np.maximum(((rng.integers(2**29, 2**30, n) * 2 + 1) >> a | 1) << a, 2**30)
    tie_acc = (rng.integers(-(2**14), 2**14, n) * 2 + 1) << b
    tie_shift = np.clip(30 - a - b, -31, 30)
    exponent = 31 - tie_shift
    product = tie_acc * tie_multiplier
    assert (np.abs(product) % 2**exponent == 2 ** (exponent - 1)).all()
    assert (np.abs(product) < 2.0 ** (23 + exponent)).mean() > 0.3
    acc, multiplier = np.concatenate([acc, tie_acc]), np.concatenate([multiplier, tie_multiplier])
    shift = np.concatenate([shift, tie_shift])
    expected = ref.requantize_output(acc, multiplier, shift, 0, 24, rounding)
    m, s = torch.from_numpy(multiplier), torch.from_numpy(shift)
    assert_same_integers(ops.requantize_output(as_float64(acc), m, s, 0, 24, rounding), expected)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@FUZZ
@given(
    st.lists(requantize_case(), min_size=1, max_size=48),
    st.integers(-130, 130),
    st.sampled_from([4, 8, 16, 24]),
)
def test_requantize_output_parity(rounding, cases, zero_point, out_bits):
    acc, multiplier, shift = case_arrays(cases)
    orders = ["after_rounding", "before_rounding"] if rounding == "fp32_rne" else ["after_rounding"]
    for order in orders:
        expected = ref.requantize_output(acc, multiplier, shift, zero_point, out_bits, rounding, order)
        m, s = torch.from_numpy(multiplier), torch.from_numpy(shift)
        emulated = ops.requantize_output(as_float64(acc), m, s, zero_point, out_bits, rounding, order)
        assert emulated.dtype == torch.float32
        assert_same_integers(emulated, expected)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@FUZZ
@given(
    st.integers(0, 20), st.integers(-128, 127), st.sampled_from([4, 8, 16]), st.sampled_from(["tie", "nudge", "exact"])
)
def test_requantize_output_parity_at_every_clamp(rounding, k, zero_point, out_bits, offset):
    """Accumulators that land exactly on, just inside and just outside both clamps, or half a
    step (a tie) or one unit off them: a multiplier of ``2**-(k + 1)`` and
    ``acc = (target - zero_point) * 2**(k + 1) +- offset``."""
    low, high = ref.int_range(out_bits)
    targets = np.array([low - 1, low, low + 1, high - 1, high, high + 1])
    delta = {"tie": 2**k, "nudge": 1, "exact": 0}[offset]
    acc = np.concatenate([(targets - zero_point) * 2 ** (k + 1) + sign * delta for sign in (-1, 1)])
    multiplier, shift = 2**30, -k  # 0.5 * 2**-k
    keep = (acc >= INT32_MIN) & (acc <= INT32_MAX)
    acc = acc[keep]
    expected = ref.requantize_output(acc, multiplier, shift, zero_point, out_bits, rounding)
    emulated = ops.requantize_output(as_float64(acc), multiplier, shift, zero_point, out_bits, rounding)
    assert_same_integers(emulated, expected)


@FUZZ
@given(st.lists(st.tuples(int32s, int32s), min_size=1, max_size=32))
def test_srdhm_parity_including_int32_min_squared(pairs):
    a, b = (np.array(column, dtype=np.int64) for column in zip(*pairs))
    a, b = np.append(a, INT32_MIN), np.append(b, INT32_MIN)
    emulated = ops.saturating_rounding_doubling_high_mul(torch.from_numpy(a), torch.from_numpy(b))
    assert_same_integers(emulated, ref.saturating_rounding_doubling_high_mul(a, b))
    assert emulated[-1].item() == INT32_MAX


# ---- accumulation ----------------------------------------------------------------------------

int8s = st.one_of(st.integers(-128, 127), st.sampled_from([-128, 127]))


@st.composite
def linear_case(draw):
    rows, k, n = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 4))
    x = np.array(draw(st.lists(int8s, min_size=rows * k, max_size=rows * k))).reshape(rows, k)
    w = np.array(draw(st.lists(int8s, min_size=n * k, max_size=n * k))).reshape(n, k)
    bias = np.array(draw(st.lists(st.integers(-(2**20), 2**20), min_size=n, max_size=n)))
    return x, w, bias, draw(st.integers(-128, 127))


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
@FUZZ
@given(linear_case(), st.sampled_from([8, 12, 16, 20, 32]))
def test_accumulate_parity_with_overflow(overflow, case, acc_bits):
    x, w, bias, zero_point = case
    expected = ref.accumulate(x, w, acc_bits, overflow, x_zero_point=zero_point, bias=bias)
    emulated = ops.accumulate(
        torch.tensor(x, dtype=torch.float32), torch.tensor(w, dtype=torch.float32), acc_bits, overflow,
        x_zero_point=zero_point, bias=torch.tensor(bias, dtype=torch.float32),
    )
    assert_same_integers(emulated, expected)


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
@FUZZ
@given(
    linear_case(), st.sampled_from([12, 16, 20, 32]), st.sampled_from(ROUNDINGS), st.booleans(),
    st.lists(st.tuples(st.integers(2**30, INT32_MAX), st.integers(-20, 0)), min_size=4, max_size=4),
    st.integers(-128, 127), st.sampled_from([4, 8, 16]),
)  # fmt: skip
def test_linear_codes_is_accumulate_then_requantize_output(
    overflow, case, acc_bits, rounding, before, fixed_points, zero_point, out_bits
):
    """The fused layer against its definition: the same integers (and the reference's) and the
    same straight-through gradients for the input, the weight and the bias."""
    x, w, bias, x_zero_point = case
    order = "before_rounding" if before and rounding == "fp32_rne" else "after_rounding"
    multiplier, shift = (torch.tensor([f[i] for f in fixed_points[: w.shape[0]]]) for i in (0, 1))
    acc_ref = ref.accumulate(x, w, acc_bits, overflow, x_zero_point=x_zero_point, bias=bias)
    expected = ref.requantize_output(acc_ref, multiplier.numpy(), shift.numpy(), zero_point, out_bits, rounding, order)
    runs = []
    for fused in (True, False):
        tensors = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x, w)]
        b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
        if fused:
            out = ops.linear_codes(*tensors, b, x_zero_point, acc_bits, overflow, multiplier, shift, zero_point,
                                   out_bits, rounding, order)  # fmt: skip
        else:
            acc = ops.accumulate(*tensors, acc_bits, overflow, x_zero_point, b)
            out = ops.requantize_output(acc, multiplier, shift, zero_point, out_bits, rounding, order)
        (out * torch.linspace(-1, 2, out.numel()).reshape(out.shape)).sum().backward()
        runs.append((out.detach(), [t.grad for t in tensors] + [b.grad]))
    assert_same_integers(runs[0][0], expected)
    assert torch.equal(runs[0][0], runs[1][0])
    for fused_grad, composed_grad in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(fused_grad.double(), composed_grad.double(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("k", [1032, 1033, 1100, 4096])
@pytest.mark.parametrize("zero_point", [0, 127])
def test_exact_linear_beyond_float32_integers(k, zero_point):
    """Full-scale int8 dot products whose sums pass 2**24, with an odd total that float32
    cannot represent: a plain float32 matmul must be wrong, the emulation exact."""
    x = torch.full((3, k), -128.0)
    w = torch.full((4, k), -128.0)
    w[1] = 127.0
    x[0, -1], w[0, -1] = 1.0, 1.0  # (k - 1) * 2**14 + 1 (before the zero point)
    x[2] = torch.randint(-128, 128, (k,), generator=torch.Generator().manual_seed(k)).float()
    expected = ref.accumulate(x.long().numpy(), w.long().numpy(), 32, "saturate", x_zero_point=zero_point)
    assert_same_integers(ops.accumulate(x, w, 32, "saturate", x_zero_point=zero_point), expected)
    assert np.abs(expected).max() > 2**24
    if zero_point == 0:
        assert expected[0, 0] % 2 == 1 and expected[0, 0] > 2**24
        naive = ((x - zero_point) @ w.T).double().numpy()
        assert naive[0, 0] != expected[0, 0]


# ---- element-wise operators ------------------------------------------------------------------

int16s = st.one_of(st.integers(-(2**15), 2**15 - 1), st.sampled_from([-(2**15), 2**15 - 1, -1, 0, 1]))


@st.composite
def mul_case(draw):
    """(a, b, shift); half the time ``a * b`` is an exact tie of the shift."""
    shift = draw(st.integers(0, 31))
    if draw(st.booleans()) or shift == 0:
        return draw(int16s), draw(int16s), shift
    j = min(shift - 1, 14)  # a * b = odd * 2**j, a tie of a shift by j + 1
    b = draw(st.sampled_from([-1, 1])) * 2**j
    return 2 * draw(st.integers(-(2**14), 2**14 - 1)) + 1, b, j + 1


@pytest.mark.parametrize("rounding", ROUNDINGS)
@FUZZ
@given(st.lists(mul_case(), min_size=1, max_size=48), st.sampled_from([8, 16]))
def test_mul_parity(rounding, cases, out_bits):
    for shift in sorted({s for _, _, s in cases}):
        a, b = (np.array([c[i] for c in cases if c[2] == shift]) for i in (0, 1))
        emulated = ops.mul(as_float64(a).float(), as_float64(b).float(), shift, out_bits, rounding)
        assert_same_integers(emulated, ref.mul(a, b, shift, out_bits, rounding))


@st.composite
def add_case(draw):
    scales = st.floats(2.0**-10, 1.0, width=32)
    size = draw(st.integers(1, 32))
    a = np.array(draw(st.lists(int8s, min_size=size, max_size=size)))
    b = np.array(draw(st.lists(int8s, min_size=size, max_size=size)))
    zero_points = [draw(st.integers(-128, 127)) for _ in range(3)]
    return a, b, zero_points, (draw(scales), draw(scales), draw(scales))


@pytest.mark.parametrize("rounding", ROUNDINGS)
@FUZZ
@given(add_case())
def test_add_parity(rounding, case):
    a, b, (a_zp, b_zp, out_zp), scales = case
    params = ref.add_params(*scales)
    expected = ref.add(a, a_zp, b, b_zp, params, out_zp, 8, rounding)
    emulated = ops.add(torch.tensor(a).float(), a_zp, torch.tensor(b).float(), b_zp, params, out_zp, 8, rounding)
    assert_same_integers(emulated, expected)


LUT_CASES = [  # (input, output, size, interpolate)
    (QFormat(3, 12), QFormat(0, 15), 513, True),  # conf/nna/int8.yaml
    (QFormat(3, 12), QFormat(0, 15), 513, False),
    (QFormat(3, 12), QFormat(0, 15), 65, True),
    (QFormat(3, 4), QFormat(0, 7), 65, False),  # conf/nna/harsh.yaml
    (QFormat(3, 4), QFormat(0, 7), 65, True),
    (QFormat(3, 4), QFormat(0, 7), 257, True),  # one input code per segment
]


@pytest.mark.parametrize("function", ["sigmoid", "tanh"])
@pytest.mark.parametrize("in_format,out_format,size,interpolate", LUT_CASES)
def test_lut_parity_on_every_input_code(function, in_format, out_format, size, interpolate):
    lut = build_lut(function, size, in_format, out_format, interpolate)
    codes = np.arange(-(2 ** (in_format.bits - 1)), 2 ** (in_format.bits - 1))  # both end points included
    assert_same_integers(ops.lut_lookup(torch.tensor(codes, dtype=torch.float32), lut), ref.lut_lookup(codes, lut))


@FUZZ
@given(
    st.lists(st.floats(-300.0, 300.0, width=32), min_size=1, max_size=48),
    st.one_of(st.floats(2.0**-10, 2.0, width=32), st.sampled_from([2.0**-4, 0.5, 1.0])),
    st.integers(-128, 127),
    st.sampled_from([4, 8, 16]),
)
def test_quantize_parity(values, scale, zero_point, bits):
    x = np.array(values, dtype=np.float32)
    x = np.concatenate([x, (np.round(x) + np.float32(0.5)) * np.float32(scale)])  # ties (exact for power-of-two scales)
    expected = ref.quantize(x, scale, zero_point, bits)
    assert_same_integers(ops.quantize(torch.from_numpy(x), scale, zero_point, bits), expected)


def test_embedding_parity():
    rng = np.random.default_rng(3)
    table, ids = rng.integers(-128, 128, (11, 6)), rng.integers(0, 11, (4, 5))
    emulated = ops.embedding_lookup(torch.from_numpy(ids), torch.tensor(table, dtype=torch.float32))
    assert_same_integers(emulated, ref.embedding_lookup(ids, table))


# ---- straight-through gradients --------------------------------------------------------------


def test_quantize_gradient_is_one_over_scale_inside_the_clamp():
    scale = 0.01
    x = torch.tensor([-2.0, -1.28, -0.4, 0.2, 1.27, 2.0], requires_grad=True)  # codes -200, -128, ..., 200
    ops.quantize(x, scale, 0, 8).sum().backward()
    inside = 1 / torch.tensor(scale, dtype=torch.float32)
    assert torch.equal(x.grad, torch.stack([torch.tensor(0.0), inside, inside, inside, inside, torch.tensor(0.0)]))
    x.grad = None
    ops.fake_quantize(x, scale, 0, 8).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 1, 1, 1, 1, 0]))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantize_gradients_are_the_real_multiplier_inside_the_clamp(rounding):
    acc = as_float64([-1000, -255, -10, 10, 253, 1000]).requires_grad_()  # x 0.5: -500 .. 500
    ops.requantize_output(acc, 2**30, 0, 0, 8, rounding).sum().backward()
    # -255 * 0.5 rounds to -127 or -128 (in range); 253 * 0.5 to 126 or 127.
    assert acc.grad.tolist() == [0.0, 0.5, 0.5, 0.5, 0.5, 0.0]
    per_channel = as_float64([[7, 7]]).requires_grad_()
    multiplier, shift = torch.tensor([2**30, 3 * 2**29]), torch.tensor([-2, 1])  # 0.125 and 1.5
    ops.requantize(per_channel, multiplier, shift, rounding).sum().backward()
    assert per_channel.grad.tolist() == [[0.125, 1.5]]


@pytest.mark.parametrize("overflow,expected_x_grad", [("saturate", [[1.0, -1.0]]), ("wrap", [[2.0, 0.0]])])
def test_accumulator_gradients(overflow, expected_x_grad):
    x = torch.tensor([[100.0, 100.0]], requires_grad=True)
    w = torch.tensor([[1.0, 1.0], [1.0, -1.0]], requires_grad=True)
    out = ops.accumulate(x, w, 8, overflow)  # 200 overflows 8 bits; 0 does not
    out.sum().backward()
    assert x.grad.tolist() == expected_x_grad  # saturation stops the first output's gradient
    expected_w_grad = [[0.0, 0.0], [100.0, 100.0]] if overflow == "saturate" else [[100.0, 100.0]] * 2
    assert w.grad.tolist() == expected_w_grad


def test_mul_gradient_is_the_scaled_product_unless_saturated():
    a = torch.tensor([100.0, 32767.0], requires_grad=True)
    b = torch.tensor([200.0, 32767.0], requires_grad=True)
    ops.mul(a, b, 4, 16, "single").sum().backward()  # 1250 and a saturated 67104769
    assert a.grad.tolist() == [200 / 16, 0.0] and b.grad.tolist() == [100 / 16, 0.0]


def test_add_gradient_is_the_product_of_its_fixed_point_multipliers():
    params = ref.add_params(0.5, 0.25, 1.0)
    a, b = torch.tensor([3.0, 127.0], requires_grad=True), torch.tensor([3.0, 127.0], requires_grad=True)
    ops.add(a, 0, b, 0, params, 0, 8, "single").sum().backward()  # 2.25 and 95.25: in range
    out_real = ops.real_multiplier(*params.out).item() * 2**params.left_shift
    assert a.grad.tolist() == [ops.real_multiplier(*params.a).item() * out_real] * 2
    assert b.grad.tolist() == [ops.real_multiplier(*params.b).item() * out_real] * 2


@pytest.mark.parametrize("function", ["sigmoid", "tanh"])
@pytest.mark.parametrize("in_format,out_format,size,interpolate", LUT_CASES[:4])
def test_lut_gradient_is_the_true_derivative(function, in_format, out_format, size, interpolate):
    lut = build_lut(function, size, in_format, out_format, interpolate)
    low, high = ref.int_range(in_format.bits)
    x = torch.linspace(low, high, 301).round().requires_grad_()
    ops.lut_lookup(x, lut).sum().backward()
    real = (x.detach() * 2.0**-in_format.frac_bits).double()
    y = torch.sigmoid(real) if function == "sigmoid" else torch.tanh(real)
    derivative = y * (1 - y) if function == "sigmoid" else 1 - y**2
    expected = derivative * 2.0 ** (out_format.frac_bits - in_format.frac_bits)
    assert torch.allclose(x.grad.double(), expected, rtol=1e-5, atol=1e-7)


def test_embedding_gradient_reaches_the_selected_rows():
    table = torch.zeros(5, 2, requires_grad=True)
    ops.embedding_lookup(torch.tensor([1, 3, 1]), table).sum().backward()
    assert table.grad.tolist() == [[0, 0], [2, 2], [0, 0], [1, 1], [0, 0]]
