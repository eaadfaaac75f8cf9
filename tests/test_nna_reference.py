"""The integer reference engine's operators against their published definitions, hand-worked
cases and ONNX Runtime."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from nnaqat.nna import reference as ref
from nnaqat.nna.lut import FUNCTIONS, build_lut
from nnaqat.nna.reference import INT32_MAX, INT32_MIN
from nnaqat.nna.spec import QFormat

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)
M_HALF = 2**30  # M0 of 0.5 (with shift 0)
M_THREE_QUARTERS = 3 * 2**29  # M0 of 0.75

# (acc, M0, shift) -> {rounding: result}. The real product is acc * M0 * 2**(shift - 31).
HAND_WORKED = [
    # 3 * 0.5 = 1.5, a positive tie: every mode rounds up (fp32_rne: 2 is even).
    ((3, M_HALF, 0), {"single": 2, "double": 2, "tosa": 2, "fp32_rne": 2}),
    # -3 * 0.5 = -1.5. single/tosa: floor(-1.5 + 0.5) = -1. double: shift 0 means no
    # RoundingDivideByPOT, so SRDHM alone rounds: floor((-3 * 2**30 + 2**30) / 2**31) = -1
    # (ties toward +inf, like ARM SQRDMULH). fp32_rne: -2 is even.
    ((-3, M_HALF, 0), {"single": -1, "double": -1, "tosa": -1, "fp32_rne": -2}),
    # 2.5: up for the fixed-point modes, down to even 2 for fp32_rne.
    ((5, M_HALF, 0), {"single": 3, "double": 3, "tosa": 3, "fp32_rne": 2}),
    # -2.5: single/double/tosa floor(-2.5 + 0.5) = -2; fp32_rne -2 (even).
    ((-5, M_HALF, 0), {"single": -2, "double": -2, "tosa": -2, "fp32_rne": -2}),
    # -6 * 0.25 = -1.5 with the tie in the right shift. single: (-6 * 2**30 + 2**31) >> 32 = -1.
    # double: SRDHM(-6, 2**30) = -3 exactly, RoundingDivideByPOT(-3, 1) = -2 (away from zero).
    # tosa: round = 2**31 - 2**30 for a negative value: (-6 * 2**30 + 2**30) >> 32 = floor(-1.25) = -2.
    ((-6, M_HALF, -1), {"single": -1, "double": -2, "tosa": -2, "fp32_rne": -2}),
    # +1.5 the same way: 2 everywhere (double: RDBPOT(3, 1) = 2; tosa: (6 + 3) * 2**30 >> 32 = 2).
    ((6, M_HALF, -1), {"single": 2, "double": 2, "tosa": 2, "fp32_rne": 2}),
    # 10 * 0.25 = 2.5: single 3; double RDBPOT(5, 1) = 3; tosa (10 + 3) * 2**30 >> 32 = 3; fp32 2.
    ((10, M_HALF, -1), {"single": 3, "double": 3, "tosa": 3, "fp32_rne": 2}),
    # -2.5: single -2; double RDBPOT(-5, 1) = -3; tosa (-10 + 1) * 2**30 >> 32 = floor(-2.25) = -3.
    ((-10, M_HALF, -1), {"single": -2, "double": -3, "tosa": -3, "fp32_rne": -2}),
    # 1 * 0.375: double rounding goes wrong. SRDHM(1, 3 * 2**29) = floor(1.25) = 1, then
    # RDBPOT(1, 1) = 1 (0.5 away from zero); tosa (3 * 2**29 + 3 * 2**30) >> 32 = floor(1.125) = 1.
    # One rounding gives 0.
    ((1, M_THREE_QUARTERS, -1), {"single": 0, "double": 1, "tosa": 1, "fp32_rne": 0}),
    # A zero multiplier.
    ((12345, 0, 0), {"single": 0, "double": 0, "tosa": 0, "fp32_rne": 0}),
    # Largest shift: real 2**29, 3 * 2**29 = 1610612736 exactly. double shifts left first:
    # 3 * 2**30 saturates to 2**31 - 1, and SRDHM(2**31 - 1, 2**30) = floor(2**61 / 2**31) = 2**30.
    ((3, M_HALF, 30), {"single": 1610612736, "double": 1073741824, "tosa": 1610612736, "fp32_rne": 1610612736}),
    # Smallest shift: -2**31 * 2**30 * 2**-62 = -0.5. single: floor(0) = 0. double:
    # SRDHM = -2**30 exactly, RDBPOT(-2**30, 31) = -1 (away). tosa: (-2**61 + 2**61 - 2**30) >> 62 = -1.
    # fp32_rne: -0.5 to even is 0.
    ((INT32_MIN, M_HALF, -31), {"single": 0, "double": -1, "tosa": -1, "fp32_rne": 0}),
    # -(2**31 - 1) / 2**31 = -0.99999999953 rounds to -1 in every mode (fp32_rne: the float32
    # multiplier rounds to 2**-31 and the product is exactly -1).
    ((INT32_MIN, INT32_MAX, -31), {"single": -1, "double": -1, "tosa": -1, "fp32_rne": -1}),
]


@pytest.mark.parametrize("rounding", ref.ROUNDINGS)
@pytest.mark.parametrize("case,expected", HAND_WORKED, ids=[str(c) for c, _ in HAND_WORKED])
def test_requantize_hand_worked(case, expected, rounding):
    acc, multiplier, shift = case
    result = ref.requantize(np.array([acc]), multiplier, shift, rounding)
    assert result.dtype == np.int64 and result.tolist() == [expected[rounding]]


def test_requantize_positive_shift_double_saturates_its_left_shift():
    # (2**30 + 1) * 1.5 = 1610612737.5 rounds up; double saturates its left shift first.
    acc, multiplier, shift = 2**30 + 1, 3 * 2**29, 1
    assert ref.requantize(acc, multiplier, shift, "single").item() == 1610612738
    assert ref.requantize(acc, multiplier, shift, "tosa").item() == 1610612738
    # SRDHM(2**31 - 1, 3 * 2**29) = floor(3 * 2**29 - 0.75 + 0.5) = 1610612735
    assert ref.requantize(acc, multiplier, shift, "double").item() == 1610612735


@pytest.mark.parametrize(
    "a,b,expected",
    [
        (INT32_MIN, INT32_MIN, INT32_MAX),  # the one overflow: +1.0 is not in Q0.31
        (INT32_MIN, INT32_MAX, -(2**31) + 1),  # -(2**31 - 1) exactly
        (INT32_MAX, INT32_MAX, 2**31 - 2),  # 2**31 - 2 + 2**-31
        (3, 2**30, 2),  # 1.5, tie up
        (-3, 2**30, -1),  # -1.5, tie toward +inf
        (-5, 2**30, -2),  # -2.5, tie toward +inf
        (0, INT32_MIN, 0),
    ],
)
def test_srdhm_hand_worked(a, b, expected):
    assert ref.saturating_rounding_doubling_high_mul(a, b).item() == expected


@pytest.mark.parametrize(
    "x,exponent,expected",
    [
        (5, 1, 3), (-5, 1, -3), (-6, 2, -2), (7, 2, 2), (-7, 2, -2), (-5, 2, -1), (9, 0, 9),
        (INT32_MIN, 31, -1), (2**30, 31, 1),
    ],  # fmt: skip
)
def test_rounding_divide_by_pot_ties_away_from_zero(x, exponent, expected):
    assert ref.rounding_divide_by_pot(x, exponent).item() == expected


@pytest.mark.parametrize(
    "real,expected",
    [
        (0.0, (0, 0)),
        (0.5, (2**30, 0)),
        (1.0, (2**30, 1)),
        (0.75, (3 * 2**29, 0)),
        (0.1, (1717986918, -3)),  # 0.8 * 2**31 = 1717986918.4
        (1 - 2**-40, (2**30, 1)),  # the mantissa rounds up to 2**31
        (2.0**-32, (2**30, -31)),  # smallest representable
        (2.0**-33, (0, 0)),  # would shift out entirely
        (2.0**30, (INT32_MAX, 30)),  # saturates
    ],
)
def test_quantize_multiplier_hand_worked(real, expected):
    assert tuple(ref.quantize_multiplier(real)) == expected


def test_quantize_multiplier_rejects_negative_and_nan():
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and >= 0"):
            ref.quantize_multiplier(bad)


@FUZZ
@given(st.floats(min_value=2.0**-32, max_value=2.0**30, exclude_max=True, width=32))
def test_quantize_multiplier_is_exact_for_float32_reals(real):
    # A float32 has a 24-bit mantissa: Q0.31 holds it exactly, and M0 is normalised.
    multiplier, shift = ref.quantize_multiplier(real)
    assert 2**30 <= multiplier < 2**31 and -31 <= shift <= 30
    assert Fraction(multiplier) * Fraction(2) ** (shift - 31) == Fraction(real)
    assert ref.multiplier_as_float32(multiplier, shift) == np.float32(real)


@FUZZ
@given(st.floats(min_value=2.0**-31, max_value=2.0**29))
def test_quantize_multiplier_error_is_half_a_q031_step(real):
    multiplier, shift = ref.quantize_multiplier(real)
    error = abs(Fraction(multiplier) * Fraction(2) ** (shift - 31) - Fraction(real))
    assert error <= Fraction(2) ** (shift - 32)


def test_requantize_checks_its_domain():
    with pytest.raises(ValueError, match="acc"):
        ref.requantize(np.array([2**31]), M_HALF, 0, "single")
    with pytest.raises(ValueError, match="multiplier"):
        ref.requantize(np.array([1]), 2**30 - 1, 0, "single")
    with pytest.raises(ValueError, match="shift"):
        ref.requantize(np.array([1]), M_HALF, 31, "single")
    with pytest.raises(ValueError, match="rounding"):
        ref.requantize(np.array([1]), M_HALF, 0, "nearest")
    with pytest.raises(TypeError, match="integers"):
        ref.requantize(np.array([1.0]), M_HALF, 0, "single")


# Hypothesis inputs for the definitional checks: anything in the domain, plus exact ties.
multipliers = st.one_of(st.integers(2**30, INT32_MAX), st.sampled_from([0, 2**30, 3 * 2**29, INT32_MAX]))


@st.composite
def requantize_cases(draw):
    """(acc, M0, shift); half the time an exact tie of the single rounding."""
    if draw(st.booleans()):
        return draw(st.integers(INT32_MIN, INT32_MAX)), draw(multipliers), draw(st.integers(-31, 30))
    # acc * M0 = odd * 2**(a + b) is a tie of a shift right by a + b + 1 = 31 - shift.
    a, b = draw(st.integers(0, 30)), draw(st.integers(0, 30))
    m_odd = draw(st.integers(2 ** (29 - a), 2 ** (30 - a) - 1)) * 2 + 1 if a < 30 else 1
    acc_odd = draw(st.integers(-(2 ** (30 - b)), 2 ** (30 - b) - 1)) * 2 + 1
    return acc_odd << b, m_odd << a, 30 - a - b


def exact_real(acc: int, multiplier: int, shift: int) -> Fraction:
    return Fraction(acc * multiplier) * Fraction(2) ** (shift - 31)


def round_half_away(x: Fraction) -> int:
    magnitude = math.floor(abs(x) + Fraction(1, 2))
    return magnitude if x >= 0 else -magnitude


@FUZZ
@given(requantize_cases())
def test_single_rounding_is_one_rounding_ties_up(case):
    assert ref.requantize(case[0], *case[1:], "single").item() == math.floor(exact_real(*case) + Fraction(1, 2))


@FUZZ
@given(requantize_cases())
def test_double_rounding_is_srdhm_then_divide_away_from_zero(case):
    acc, multiplier, shift = case
    shifted = min(max(acc * 2 ** max(shift, 0), INT32_MIN), INT32_MAX)  # saturating left shift
    high = math.floor(Fraction(shifted * multiplier, 2**31) + Fraction(1, 2))  # SRDHM
    expected = round_half_away(Fraction(high, 2 ** max(-shift, 0)))
    assert ref.requantize(acc, multiplier, shift, "double").item() == expected


@FUZZ
@given(requantize_cases())
def test_tosa_double_round_equals_gemmlowp_unless_the_left_shift_saturates(case):
    # TOSA's +-2**30 correction reproduces SRDHM-then-RDBPOT in one 64-bit rounding.
    acc, multiplier, shift = case
    tosa = ref.requantize(acc, multiplier, shift, "tosa").item()
    if abs(acc * 2 ** max(shift, 0)) <= INT32_MAX:
        assert tosa == ref.requantize(acc, multiplier, shift, "double").item()
    else:  # TOSA has no left shift to saturate: it rounds the exact product once.
        assert tosa == math.floor(exact_real(*case) + Fraction(1, 2))


@FUZZ
@given(requantize_cases())
def test_fp32_rne_rounds_the_float32_product_half_to_even(case):
    acc, multiplier, shift = case
    float_multiplier = Fraction(float(ref.multiplier_as_float32(multiplier, shift)))
    product = Fraction(float(np.float32(acc))) * float_multiplier
    float32_product = Fraction(float(np.float32(float(product))))
    # Python's round() of a Fraction is half to even.
    assert ref.requantize(acc, multiplier, shift, "fp32_rne").item() == round(float32_product)


@pytest.mark.parametrize("rounding", ref.ROUNDINGS)
def test_requantize_output_zero_point_after_rounding_then_clamp(rounding):
    acc = np.array([3, -3, 400, -400])  # x 0.5: 1.5, -1.5, 200, -200
    expected_rounded = ref.requantize(acc, M_HALF, 0, rounding)
    out = ref.requantize_output(acc, M_HALF, 0, 5, 8, rounding)
    assert out.tolist() == [expected_rounded[0] + 5, expected_rounded[1] + 5, 127, -128]


def test_zero_point_order_matters_for_half_to_even():
    # -1.5 + 3: after rounding, rne(-1.5) + 3 = 1; before rounding, rne(1.5) = 2.
    args = (np.array([-3]), M_HALF, 0, 3, 8, "fp32_rne")
    assert ref.requantize_output(*args).item() == 1
    assert ref.requantize_output(*args, zero_point_order="before_rounding").item() == 2
    # An even zero point cannot tell the orders apart.
    assert ref.requantize_output(np.array([-3]), M_HALF, 0, 4, 8, "fp32_rne", "before_rounding").item() == 2
    with pytest.raises(ValueError, match="not defined"):
        ref.requantize_output(np.array([-3]), M_HALF, 0, 3, 8, "single", "before_rounding")


def test_accumulate_saturates_or_wraps():
    x, w = np.array([[100, 100]]), np.array([[1, 1], [-1, -1]])
    assert ref.accumulate(x, w, 8, "saturate").tolist() == [[127, -128]]
    assert ref.accumulate(x, w, 8, "wrap").tolist() == [[200 - 256, -200 + 256]]
    # Zero point subtracted first: (100 + 28) * 2 = 256, which wraps to 0.
    assert ref.accumulate(x, w[:1], 8, "wrap", x_zero_point=-28).tolist() == [[0]]
    assert ref.accumulate(x, w, 32, "saturate", bias=np.array([5, -5])).tolist() == [[205, -205]]


def test_saturate_and_wrap_at_int32():
    assert ref.saturate(np.array([2**31, -(2**31) - 1]), 32).tolist() == [INT32_MAX, INT32_MIN]
    assert ref.wrap(np.array([2**31, -(2**31) - 1, 5]), 32).tolist() == [INT32_MIN, INT32_MAX, 5]


def test_add_rescales_then_saturates():
    same = ref.add_params(1 / 16, 1 / 16, 1 / 16)  # 0.5, 0.5 and 2**-19
    assert same.a == (2**30, 0) and same.out == (2**30, -18)
    a, b = np.array([3, 100, -100]), np.array([4, 100, -100])
    assert ref.add(a, 0, b, 0, same, 0, 8, "single").tolist() == [7, 127, -128]
    # Zero points: (8 - 5) + (1 + 3) = 7, plus 2.
    assert ref.add(np.array([8]), 5, np.array([1]), -3, same, 2, 8, "single").tolist() == [9]
    mixed = ref.add_params(0.5, 0.25, 1.0)
    a, b = np.array([3, 1, -1]), np.array([3, 4, -4])  # 1.5 + 0.75 = 2.25; 0.5 + 1 = 1.5; -1.5
    assert ref.add(a, 0, b, 0, mixed, 0, 8, "single").tolist() == [2, 2, -1]
    assert ref.add(a, 0, b, 0, mixed, 0, 8, "double").tolist() == [2, 2, -2]
    assert ref.add(a, 0, b, 0, mixed, 0, 8, "fp32_rne").tolist() == [2, 2, -2]


@pytest.mark.parametrize(
    "a,b,shift,expected",
    [
        # 3 / 2 = 1.5 and -1.5, 5 / 2 = 2.5 and -2.5: per mode [single, double, tosa, fp32_rne]
        (3, 1, 1, [2, 2, 2, 2]),
        (-3, 1, 1, [-1, -2, -1, -2]),
        (5, 1, 1, [3, 3, 3, 2]),
        (-5, 1, 1, [-2, -3, -2, -2]),
        (-32768, -32768, 15, [32767] * 4),  # 2**30 / 2**15 = 32768 saturates
        (-32768, 32767, 15, [-32767] * 4),
        (7, -3, 0, [-21] * 4),
    ],
)
def test_mul_rounds_by_mode_and_saturates(a, b, shift, expected):
    assert [ref.mul(a, b, shift, 16, r).item() for r in ref.ROUNDINGS] == expected


LUT_CASES = [  # (input, output, size, interpolate)
    (QFormat(3, 12), QFormat(0, 15), 513, True),  # conf/nna/int8.yaml
    (QFormat(3, 12), QFormat(0, 15), 513, False),
    (QFormat(3, 4), QFormat(0, 7), 65, False),  # conf/nna/harsh.yaml
    (QFormat(3, 4), QFormat(0, 7), 65, True),
]
MAX_SECOND_DERIVATIVE = {"sigmoid": 0.0963, "tanh": 0.7699}
MAX_FIRST_DERIVATIVE = {"sigmoid": 0.25, "tanh": 1.0}


@pytest.mark.parametrize("function", ["sigmoid", "tanh"])
@pytest.mark.parametrize("in_format,out_format,size,interpolate", LUT_CASES)
def test_lut_accuracy_and_monotonicity_on_every_input(function, in_format, out_format, size, interpolate):
    lut = build_lut(function, size, in_format, out_format, interpolate)
    x = np.arange(-(2 ** (in_format.bits - 1)), 2 ** (in_format.bits - 1))
    y = ref.lut_lookup(x, lut)
    assert np.all(np.diff(y) >= 0)
    low, high = ref.int_range(out_format.bits)
    true = np.clip(FUNCTIONS[function](x / 2.0**in_format.frac_bits) * 2.0**out_format.frac_bits, low, high)
    step = 16.0 / (size - 1)  # segment width in real input units
    if interpolate:  # chord error h**2/8 max|f''|, plus three half-LSB roundings
        bound = step**2 / 8 * MAX_SECOND_DERIVATIVE[function] * 2.0**out_format.frac_bits + 1.5
    else:  # nearest entry: at most half a segment away, plus the entry's rounding
        bound = step / 2 * MAX_FIRST_DERIVATIVE[function] * 2.0**out_format.frac_bits + 0.5
    assert np.abs(y - true).max() <= bound


def test_lut_end_points_and_centre():
    sigmoid = build_lut("sigmoid", 513, QFormat(3, 12), QFormat(0, 15), True)
    tanh = build_lut("tanh", 513, QFormat(3, 12), QFormat(0, 15), True)
    # round(sigmoid(-8) * 2**15) = round(10.99) = 11; the last entry, round(sigmoid(8) * 2**15) = 32757
    assert sigmoid.table[0] == 11 and sigmoid.table[-1] == 32757
    assert ref.lut_lookup(np.array([-32768, 0, 32767]), sigmoid).tolist() == [11, 16384, 32757]
    # tanh(+-8) * 2**15 is +-32767.99: clamped to int16.
    assert ref.lut_lookup(np.array([-32768, 0, 32767]), tanh).tolist() == [-32768, 0, 32767]
    harsh = build_lut("sigmoid", 65, QFormat(3, 4), QFormat(0, 7), False)
    # int8 code 1 (1/16) is a quarter segment from entry 32 (input 0): sigmoid(0) * 128 = 64.
    # Code 2 is mid-segment, a tie, which takes the right entry round(sigmoid(0.25) * 128) = 72.
    assert ref.lut_lookup(np.array([-128, 1, 2, 127]), harsh).tolist() == [0, 64, 72, 127]
    with pytest.raises(ValueError, match="Q3.4"):
        ref.lut_lookup(np.array([128]), harsh)


def test_lut_sizes_are_checked():
    for size in (64, 2, 2**9 + 1):
        with pytest.raises(ValueError, match="2\\*\\*n \\+ 1"):
            build_lut("tanh", size, QFormat(3, 4), QFormat(0, 7), True)


def test_embedding_lookup():
    table = np.arange(12).reshape(4, 3) - 6
    assert ref.embedding_lookup(np.array([[3, 0]]), table).tolist() == [[[3, 4, 5], [-6, -5, -4]]]
    with pytest.raises(ValueError, match="ids"):
        ref.embedding_lookup(np.array([4]), table)


# ---- ONNX Runtime conformance ----------------------------------------------------------------


def run_onnx(node: helper.NodeProto, inputs: dict, output_type: int) -> np.ndarray:
    """Runs a one-node graph on ONNX Runtime's CPU provider."""
    graph = helper.make_graph(
        [node],
        "conformance",
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            for name, value in inputs.items()
        ],
        [helper.make_tensor_value_info(node.output[0], output_type, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def test_accumulate_matches_onnxruntime_matmul_integer():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (6, 1100)).astype(np.int8)  # K > 1032: past float32's exact range
    w = rng.integers(-127, 128, (5, 1100)).astype(np.int8)
    x[0], w[0] = -128, -127  # the largest products, all of one sign
    x[1], w[1] = -128, -128
    x[1, -1], w[1, -1] = 1, 1  # 1099 * 2**14 + 1: odd, above 2**24
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zero_point"], ["y"])
    for zero_point in (0, 3, -128):
        inputs = {"a": x, "b": np.ascontiguousarray(w.T), "a_zero_point": np.array(zero_point, np.int8)}
        expected = run_onnx(node, inputs, TensorProto.INT32)
        assert np.array_equal(ref.accumulate(x, w, 32, "saturate", x_zero_point=zero_point), expected)
        if zero_point == 0:
            assert expected[1, 1] == 1099 * 2**14 + 1


@pytest.mark.parametrize("b_scale", [1.0, 0.25, 0.0018870363], ids=["ties", "pot", "arbitrary"])
@pytest.mark.parametrize("y_zero_point", [0, 1, -3, 4])
def test_fp32_rne_requantization_matches_onnxruntime_qlinear_matmul(b_scale, y_zero_point):
    rng = np.random.default_rng(1)
    x = rng.integers(-9, 9, (40, 16)).astype(np.int8)  # small sums: many unclamped exact ties
    w = rng.integers(-9, 9, (30, 16)).astype(np.int8)
    x_scale, y_scale, x_zero_point = np.float32(0.25), np.float32(0.5), -5
    if b_scale < 0.01:
        x = rng.integers(-128, 128, (40, 64)).astype(np.int8)
        w = rng.integers(-127, 128, (30, 64)).astype(np.int8)
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    inputs = {
        "a": x, "as": np.array(x_scale), "az": np.array(x_zero_point, np.int8),
        "b": np.ascontiguousarray(w.T), "bs": np.array(b_scale, np.float32), "bz": np.array(0, np.int8),
        "ys": np.array(y_scale), "yz": np.array(y_zero_point, np.int8),
    }  # fmt: skip
    expected = run_onnx(node, inputs, TensorProto.INT8)
    # ONNX Runtime's multiplier x_scale * b_scale / y_scale is exact in float32 here.
    multiplier = ref.quantize_multiplier(float(x_scale * np.float32(b_scale) / y_scale))
    acc = ref.accumulate(x, w, 32, "saturate", x_zero_point=x_zero_point)
    got = ref.requantize_output(acc, *multiplier, y_zero_point, 8, "fp32_rne")
    assert np.array_equal(got, expected)
    if b_scale == 1.0:  # x 0.5: odd accumulators are ties, on which the other modes disagree
        assert not np.array_equal(ref.requantize_output(acc, *multiplier, y_zero_point, 8, "single"), expected)
        if y_zero_point % 2:
            before = ref.requantize_output(acc, *multiplier, y_zero_point, 8, "fp32_rne", "before_rounding")
            assert not np.array_equal(before, expected)


def test_quantize_matches_onnxruntime_quantize_linear():
    # float32 inputs on which x / 0.1f and x * (1 / 0.1f) round to different integers
    # (found by scanning every float32 in [1.5, 4)).
    x = np.array([1.55, 1.9499999, 2.35, 3.2500002, 3.9499998, -1.55, -2.35, 1000.0, -1000.0], np.float32)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    expected = run_onnx(node, {"x": x, "s": np.array(0.1, np.float32), "z": np.array(1, np.int8)}, TensorProto.INT8)
    assert np.array_equal(ref.quantize(x, 0.1, 1, 8), expected)
    reciprocal = np.clip(np.rint(x * (np.float32(1) / np.float32(0.1))) + 1, -128, 127)
    assert np.all(reciprocal[:7] != expected[:7])
