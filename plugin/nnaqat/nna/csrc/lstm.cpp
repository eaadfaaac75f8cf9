// The emulated integer LSTM recurrence of nnaqat.nna.lstm.NnaLstm as one compiled loop over
// time, forward and backward.
//
// The step is the one of nnaqat/nna/reference_lstm.py with the integer semantics of the torch
// operators in nnaqat/nna/ops.py; the tests hold it to the NumPy reference engine bit for bit
// and its backward pass to autograd through those operators. Written with torch operators the
// step is some sixty small tensor operations, each paying the dispatcher's overhead; here the
// element-wise work of a step runs in plain loops (the gates' in one the compiler vectorizes)
// and only the matmul goes through ATen (BLAS).
//
// Tensors hold integer values in float32 (the Python side's convention); the arithmetic is in
// int64, or in float32/float64 where the operator's definition says so (fixed_point.h).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "fixed_point.h"

namespace nnaqat {
namespace {

constexpr double kFloat32Exact = 16777216.0;  // 2**24

// Bits of the records' flags: where a saturation did not clip.
enum GateFlag : uint8_t { kAccInside = 1, kGateInside = 2, kInputAccInside = 4, kInputInside = 8 };
enum UnitFlag : uint8_t { kKeptInside = 1, kWrittenInside = 2, kCellInside = 4, kCellGateInside = 8, kHiddenInside = 16 };

// A gate table as the recurrence reads it: the int16 output at every gate code from the lowest
// (ops.expanded_codes, built once per table), returned indexed by the gate code itself. One
// load per lookup instead of an interpolation's chain of dependent operations.
const int16_t* gate_table(const at::Tensor& codes, int64_t gate_bits) {
  TORCH_CHECK(codes.scalar_type() == at::kShort && codes.is_contiguous() && codes.numel() == (int64_t(1) << gate_bits),
              "integer_lstm: a gate table must be contiguous int16 with every gate code (ops.expanded_codes)");
  return codes.data_ptr<int16_t>() - static_cast<int64_t>(low_of(gate_bits));
}

// The layer's integer constants (see NnaLstm in nnaqat/nna/lstm.py).
struct Constants {
  int64_t h_zero_point, acc_bits, gate_bits, cell_bits, hidden_bits, m_out, shift_out, rounding;
  bool acc_saturate, zero_point_before_rounding;
  double kept_scale;       // 2**-n_frac: f * c to the cell scale
  double written_scale;    // 2**-(2 n_frac - c_frac): i * g to the cell scale
  double cell_gate_scale;  // factor * 2**-shift: the cell to the gate format

  static Constants from(const std::vector<int64_t>& ints, const std::vector<double>& reals) {
    TORCH_CHECK(ints.size() == 10 && reals.size() == 3, "integer_lstm: expected 10 integers and 3 reals");
    TORCH_CHECK(ints[7] >= 0 && ints[7] <= 3, "integer_lstm: unknown rounding ", ints[7]);
    return {ints[0], ints[1], ints[2], ints[3], ints[4], ints[5], ints[6], ints[7], ints[8] != 0, ints[9] != 0,
            reals[0], reals[1], reals[2]};
  }
};

// out = h - zero_point, in out's type (the recurrent matmul's: float32 or float64); returns out.
inline const at::Tensor& centered(const float* h, int64_t zero_point, const at::Tensor& out) {
  const auto fill = [&](auto* to) {
    using Real = std::remove_pointer_t<decltype(to)>;
    for (int64_t i = 0; i < out.numel(); ++i) to[i] = h[i] - static_cast<Real>(zero_point);
  };
  if (out.scalar_type() == at::kFloat) fill(out.data_ptr<float>());
  else fill(out.data_ptr<double>());
  return out;
}

// What lstm_forward's threads read and write. Each thread copies it into locals: the records'
// byte stores may alias anything reached through a reference, and would reload it per element.
struct ForwardRows {
  Constants k;
  const int16_t *sigmoid_at, *tanh_at;  // gate_table's tables, indexed by the gate code
  int64_t T, H;
  double acc_low, acc_high, wrap_span, gate_low, gate_high, cell_low, cell_high, hidden_low, hidden_high;
  const float* x32;  // the input product, float32 or float64 (the other is null)
  const double* x64;
  const double* x_offset;
  const int64_t *m_in, *s_in, *m, *s;
  float *y, *h, *c;
  float *h_prev, *c_prev, *gates;
  uint8_t* gate_flags;
  float* cell_gate;
  uint8_t* unit_flags;
  int64_t step_stride_h, step_stride_g;  // of the records: 0 when one step's scratch is reused
  double* ranges;                        // (N, 4)
};

// Exact integers held in float32 or float64, as int64 (a loop the compiler vectorizes).
template <typename Real>
inline void to_int64(const Real* __restrict from, int64_t* __restrict to, int64_t count) {
  for (int64_t i = 0; i < count; ++i) to[i] = static_cast<int64_t>(from[i]);
}

// The accumulators' bounds and the gate codes' range.
struct GateBounds {
  int64_t acc_low, acc_high, acc_span, gate_low, gate_high;
  bool acc_saturate;
};

// The channels' fixed-point multipliers; for single rounding also each one's right shift
// 31 - s and rounding constant 2**(30 - s), computed once: the vectorizer gives up on a loop
// that derives them per element (it narrows the shift counts).
struct Multipliers {
  const int64_t *m, *s;
  std::vector<int64_t> right_shift, half;

  Multipliers(const int64_t* multiplier, const int64_t* shift, int64_t count)
      : m(multiplier), s(shift), right_shift(count), half(count) {
    for (int64_t j = 0; j < count; ++j) right_shift[j] = 31 - s[j], half[j] = int64_t(1) << (30 - s[j]);
  }
};

// requantize<kRounding> of channel j.
template <int64_t kRounding>
[[gnu::always_inline]] inline int64_t requantize_channel(int64_t acc, const int64_t* __restrict m,
                                                         const int64_t* __restrict s,
                                                         const int64_t* __restrict right_shift,
                                                         const int64_t* __restrict half, int64_t j) {
  if constexpr (kRounding == kSingle) return floor_shift(acc * m[j] + half[j], right_shift[j]);
  else return requantize<kRounding>(acc, m[j], s[j]);
}

// One sequence's gates at one step: the input's accumulator x_acc + x_offset requantized to
// gate codes (ops.linear_codes) plus the recurrent accumulator h_acc (each saturated or
// wrapped) requantized, saturated. Writes the codes (int32, and float32 for the records) and
// the flags. Written as one loop over plain arrays so that it vectorizes. (The zero point is 0:
// where it is added, before or after rounding, makes no difference.)
template <int64_t kRounding>
void gate_codes(const GateBounds& bounds, int64_t G, const int64_t* __restrict x_acc,
                const int64_t* __restrict x_offset, const Multipliers& input, const int64_t* __restrict h_acc,
                const Multipliers& recurrent, int32_t* __restrict codes, float* __restrict gates,
                uint8_t* __restrict flags) {
  const int64_t acc_low = bounds.acc_low, acc_high = bounds.acc_high, span = bounds.acc_span;
  const int64_t gate_low = bounds.gate_low, gate_high = bounds.gate_high;
  const int64_t saturate_mask = bounds.acc_saturate ? -1 : 0;
  const int64_t *const m_in = input.m, *const s_in = input.s;
  const int64_t *const shift_in = input.right_shift.data(), *const half_in = input.half.data();
  const int64_t *const m_h = recurrent.m, *const s_h = recurrent.s;
  const int64_t *const shift_h = recurrent.right_shift.data(), *const half_h = recurrent.half.data();
  for (int64_t j = 0; j < G; ++j) {
    bool input_acc_in, input_in, acc_in, gate_in;
    const int64_t input_total =
        overflow_select(x_acc[j] + x_offset[j], acc_low, acc_high, span, saturate_mask, &input_acc_in);
    const int64_t from_x = saturate(requantize_channel<kRounding>(input_total, m_in, s_in, shift_in, half_in, j),
                                    gate_low, gate_high, &input_in);
    const int64_t total = overflow_select(h_acc[j], acc_low, acc_high, span, saturate_mask, &acc_in);
    const int64_t gate = saturate(from_x + requantize_channel<kRounding>(total, m_h, s_h, shift_h, half_h, j),
                                  gate_low, gate_high, &gate_in);
    codes[j] = static_cast<int32_t>(gate);
    gates[j] = static_cast<float>(gate);
    flags[j] = static_cast<uint8_t>((acc_in ? kAccInside : 0) | (gate_in ? kGateInside : 0) |
                                    (input_acc_in ? kInputAccInside : 0) | (input_in ? kInputInside : 0));
  }
}

// Sequences [begin, end) through every step, for one rounding mode (the step's per-element
// work compiled without a switch on it). w_t (H, 4H): the recurrent weights, float32 or float64.
template <int64_t kRounding, bool kZeroPointBeforeRounding>
void forward_rows(const ForwardRows& shared, const at::Tensor& w_t, int64_t begin, int64_t end) {
  const ForwardRows p = shared;
  const Constants k = p.k;
  const int16_t *const sigmoid_at = p.sigmoid_at, *const tanh_at = p.tanh_at;
  const int64_t T = p.T, H = p.H, G = 4 * H, rows = end - begin;
  const bool in_float32 = w_t.scalar_type() == at::kFloat;
  auto h_centered = at::empty({rows, H}, w_t.options());
  auto acc = at::empty({rows, G}, w_t.options());
  std::vector<double> ifgo(G);  // one sequence's i, f, g, o
  // The gates' work is in int64 (cheaper than float64 and its conversions): bounds, the input's offsets.
  const GateBounds bounds{static_cast<int64_t>(p.acc_low), static_cast<int64_t>(p.acc_high),
                          static_cast<int64_t>(p.wrap_span), static_cast<int64_t>(p.gate_low),
                          static_cast<int64_t>(p.gate_high), k.acc_saturate};
  std::vector<int64_t> x_offset(p.x_offset, p.x_offset + G), x_acc(G), h_acc(G);
  const Multipliers input(p.m_in, p.s_in, G), recurrent(p.m, p.s, G);
  std::vector<int32_t> codes(G);
  for (int64_t t = 0; t < T; ++t) {
    float* const h_prev = p.h_prev + t * p.step_stride_h;
    float* const c_prev = p.c_prev + t * p.step_stride_h;
    std::copy(p.h + begin * H, p.h + end * H, h_prev + begin * H);
    std::copy(p.c + begin * H, p.c + end * H, c_prev + begin * H);
    at::mm_out(acc, centered(p.h + begin * H, k.h_zero_point, h_centered), w_t);
    const float* const a32 = in_float32 ? acc.data_ptr<float>() : nullptr;
    const double* const a64 = in_float32 ? nullptr : acc.data_ptr<double>();
    float* const gates = p.gates + t * p.step_stride_g;
    uint8_t* const gate_flags = p.gate_flags + t * p.step_stride_g;
    float* const cell_gate = p.cell_gate + t * p.step_stride_h;
    uint8_t* const unit_flags = p.unit_flags + t * p.step_stride_h;
    for (int64_t n = begin; n < end; ++n) {
      // Gates: the input's accumulator requantized to gate codes (ops.linear_codes), plus the
      // recurrent accumulator (saturated or wrapped) requantized, saturated; then the tables:
      // sigmoid for i, f, o and tanh for g.
      const int64_t x_row = (n * T + t) * G, acc_row = (n - begin) * G;
      if (p.x32) to_int64(p.x32 + x_row, x_acc.data(), G);
      else to_int64(p.x64 + x_row, x_acc.data(), G);
      if (a32) to_int64(a32 + acc_row, h_acc.data(), G);
      else to_int64(a64 + acc_row, h_acc.data(), G);
      gate_codes<kRounding>(bounds, G, x_acc.data(), x_offset.data(), input, h_acc.data(), recurrent, codes.data(),
                            gates + n * G, gate_flags + n * G);
      for (int64_t quarter = 0; quarter < 4; ++quarter) {
        const int16_t* const table = quarter == 2 ? tanh_at : sigmoid_at;
        for (int64_t j = quarter * H; j < (quarter + 1) * H; ++j) ifgo[j] = static_cast<double>(table[codes[j]]);
      }
      // The cell and the hidden state, unit by unit; the ranges the observers see.
      double product_min = p.ranges[4 * n], product_max = p.ranges[4 * n + 1];
      double cell_min = p.ranges[4 * n + 2], cell_max = p.ranges[4 * n + 3];
      for (int64_t u = 0; u < H; ++u) {
        const int64_t at = n * H + u;
        const double i = ifgo[u], f = ifgo[H + u], g = ifgo[2 * H + u], o = ifgo[3 * H + u];
        bool kept_in, written_in, cell_in, cell_gate_in, h_in;
        const double kept =
            saturate(mul_rounded<kRounding>(f, c_prev[at], k.kept_scale), p.cell_low, p.cell_high, &kept_in);
        const double written =
            saturate(mul_rounded<kRounding>(i, g, k.written_scale), p.cell_low, p.cell_high, &written_in);
        const double unsaturated = kept + written;
        cell_min = std::min(cell_min, unsaturated);
        cell_max = std::max(cell_max, unsaturated);
        const double c_new = saturate(unsaturated, p.cell_low, p.cell_high, &cell_in);
        const double in_gate_format = saturate(mul_rounded<kRounding>(c_new, 1.0, k.cell_gate_scale), p.gate_low,
                                               p.gate_high, &cell_gate_in);
        const auto tanh_c = static_cast<double>(tanh_at[static_cast<int64_t>(in_gate_format)]);
        const double product = o * tanh_c;  // < 2**30: exact
        product_min = std::min(product_min, product);
        product_max = std::max(product_max, product);
        const double h_new =
            output_code<kRounding>(static_cast<int64_t>(product), k.m_out, k.shift_out, k.h_zero_point,
                                   kZeroPointBeforeRounding, p.hidden_low, p.hidden_high, &h_in);
        cell_gate[at] = static_cast<float>(in_gate_format);
        unit_flags[at] = static_cast<uint8_t>((kept_in ? kKeptInside : 0) | (written_in ? kWrittenInside : 0) |
                                              (cell_in ? kCellInside : 0) | (cell_gate_in ? kCellGateInside : 0) |
                                              (h_in ? kHiddenInside : 0));
        p.c[at] = static_cast<float>(c_new);
        p.h[at] = static_cast<float>(h_new);
        p.y[(n * T + t) * H + u] = static_cast<float>(h_new);
      }
      p.ranges[4 * n] = product_min, p.ranges[4 * n + 1] = product_max;
      p.ranges[4 * n + 2] = cell_min, p.ranges[4 * n + 3] = cell_max;
    }
  }
}

}  // namespace

// Forward recurrence, no gradient.
//   product (N, T, 4H)     the input's matmul on the raw codes, x_q @ w_x.T (float32 or float64,
//                          exact; ops.product_and_offset), and offset (4H,) float64 what the
//                          accumulator adds: the input gates are ops.linear_codes of these
//                          (accumulate, requantize by m_x, shift_x to gate codes), computed here
//                          per step instead of in a pass of their own
//   w_h (4H, H)            float32 recurrent weight codes;  h0, c0 (N, H) state codes
//   m_h, shift_h (4H,)     int64 fixed-point multipliers of the recurrent accumulator
//   sigmoid, tanh          the gate tables at every gate code, (2**gate_bits,) int16 (ops.expanded_codes)
//   ints  = [h_zero_point, acc_bits, gate_bits, cell_bits, hidden_bits, m_out, shift_out,
//            rounding (0 single, 1 double, 2 tosa, 3 fp32_rne), acc_saturate, zero_point_before_rounding]
//   reals = [kept_scale, written_scale, cell_gate_scale]
// Returns [y (N, T, H), h_T, c_T, ranges] with ranges (4,) float64: min and max of o * tanh(c)
// (integer units) and of the unsaturated cell. With keep, then the records (T, N, ...) the
// backward pass reads: h_prev, c_prev, gates (the saturated gate codes), gate_flags (uint8,
// kAccInside | kGateInside | kInputAccInside | kInputInside), cell_gate (the new cell in the
// gate format), unit_flags (uint8, kKeptInside | ... | kHiddenInside). The tables' outputs are
// not kept: the backward pass looks them up again (gate_table), which halves the records' memory.
std::vector<at::Tensor> lstm_forward(at::Tensor product, at::Tensor offset, at::Tensor m_x, at::Tensor shift_x,
                                        at::Tensor w_h, at::Tensor h0, at::Tensor c0, at::Tensor m_h, at::Tensor shift_h,
                                        at::Tensor sigmoid, at::Tensor tanh, std::vector<int64_t> ints,
                                        std::vector<double> reals, bool keep) {
  const Constants k = Constants::from(ints, reals);
  TORCH_CHECK(product.dim() == 3 && (product.scalar_type() == at::kFloat || product.scalar_type() == at::kDouble),
              "integer_lstm: the input product must be (N, T, 4H) float32 or float64");
  const auto x = product.contiguous();
  const auto w = w_h.to(at::kFloat).contiguous();
  const int64_t N = x.size(0), T = x.size(1), G = x.size(2), H = G / 4;
  TORCH_CHECK(G == 4 * H && w.size(0) == G && w.size(1) == H, "integer_lstm: weight ", w.sizes(),
              " does not match gates ", x.sizes());
  const auto mh = m_h.to(at::kLong).contiguous(), sh = shift_h.to(at::kLong).contiguous();
  const auto mx = m_x.to(at::kLong).contiguous(), sx = shift_x.to(at::kLong).contiguous();
  const auto off = offset.to(at::kDouble).contiguous();
  TORCH_CHECK(mx.numel() == G && sx.numel() == G && off.numel() == G, "integer_lstm: one input multiplier per gate");
  TORCH_CHECK(mh.numel() == G && sh.numel() == G, "integer_lstm: one multiplier per gate unit");
  const int16_t *const sigmoid_at = gate_table(sigmoid, k.gate_bits), *const tanh_at = gate_table(tanh, k.gate_bits);

  const double acc_low = low_of(k.acc_bits), acc_high = high_of(k.acc_bits);
  const double wrap_span = std::ldexp(1.0, static_cast<int>(k.acc_bits));
  const double gate_low = low_of(k.gate_bits), gate_high = high_of(k.gate_bits);
  const double cell_low = low_of(k.cell_bits), cell_high = high_of(k.cell_bits);
  const double hidden_low = low_of(k.hidden_bits), hidden_high = high_of(k.hidden_bits);

  // The recurrent matmul is exact in float32 while every partial sum stays below 2**24;
  // otherwise (wide hidden codes) it runs in float64, exact to 2**53.
  const double h_max_abs = std::max(std::fabs(hidden_low - k.h_zero_point), std::fabs(hidden_high - k.h_zero_point));
  const double w_max_abs = w.numel() ? w.abs().max().item<double>() : 0.0;
  const bool in_float32 = h_max_abs * w_max_abs * static_cast<double>(H) < kFloat32Exact;
  const auto mm_options = at::TensorOptions().dtype(in_float32 ? at::kFloat : at::kDouble);
  const auto w_t = w.to(mm_options.dtype()).t().contiguous();  // (H, 4H)

  const auto f32 = at::TensorOptions().dtype(at::kFloat), u8 = at::TensorOptions().dtype(at::kByte);
  auto y = at::empty({N, T, H}, f32);
  auto h = h0.to(at::kFloat).contiguous().clone(), c = c0.to(at::kFloat).contiguous().clone();
  const int64_t kept_steps = keep ? T : 0;
  auto records = std::vector<at::Tensor>{
      at::empty({kept_steps, N, H}, f32), at::empty({kept_steps, N, H}, f32),  // h_prev, c_prev
      at::empty({kept_steps, N, G}, f32), at::empty({kept_steps, N, G}, u8),   // gates, gate_flags
      at::empty({kept_steps, N, H}, f32), at::empty({kept_steps, N, H}, u8)};  // cell_gate, unit_flags
  // When nothing is kept, every step writes its records over one step's worth of scratch.
  auto scratch = std::vector<at::Tensor>{};
  if (!keep)
    for (const auto& record : records) scratch.push_back(at::empty({N, record.size(2)}, record.options()));
  const auto step_record = [&](size_t i) { return keep ? records[i] : scratch[i]; };
  const int64_t step_stride_h = keep ? N * H : 0, step_stride_g = keep ? N * G : 0;
  // Per-sequence running minima and maxima of o * tanh(c) and of the unsaturated cell.
  std::vector<double> ranges_of(4 * N);
  for (int64_t n = 0; n < N; ++n) {
    ranges_of[4 * n] = ranges_of[4 * n + 2] = std::numeric_limits<double>::infinity();
    ranges_of[4 * n + 1] = ranges_of[4 * n + 3] = -std::numeric_limits<double>::infinity();
  }

  const ForwardRows rows{k, sigmoid_at, tanh_at, T, H, acc_low, acc_high, wrap_span, gate_low, gate_high, cell_low,
                         cell_high,
                         hidden_low, hidden_high, x.scalar_type() == at::kFloat ? x.data_ptr<float>() : nullptr,
                         x.scalar_type() == at::kFloat ? nullptr : x.data_ptr<double>(), off.data_ptr<double>(),
                         mx.data_ptr<int64_t>(), sx.data_ptr<int64_t>(), mh.data_ptr<int64_t>(), sh.data_ptr<int64_t>(),
                         y.data_ptr<float>(), h.data_ptr<float>(), c.data_ptr<float>(),
                         step_record(0).data_ptr<float>(), step_record(1).data_ptr<float>(),
                         step_record(2).data_ptr<float>(), step_record(3).data_ptr<uint8_t>(),
                         step_record(4).data_ptr<float>(), step_record(5).data_ptr<uint8_t>(), step_stride_h,
                         step_stride_g, ranges_of.data()};
  // Sequences are independent: each thread takes its share of the batch through every step with
  // a matmul of its own rows, so the steps need no synchronisation between threads.
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    if (k.zero_point_before_rounding) {
      forward_rows<kFp32Rne, true>(rows, w_t, begin, end);
    } else {
      with_rounding(k.rounding, [&](auto mode) { forward_rows<decltype(mode)::value, false>(rows, w_t, begin, end); });
    }
  });
  double product_min = std::numeric_limits<double>::infinity(), product_max = -product_min;
  double cell_min = product_min, cell_max = product_max;
  for (int64_t n = 0; n < N; ++n) {
    product_min = std::min(product_min, ranges_of[4 * n]);
    product_max = std::max(product_max, ranges_of[4 * n + 1]);
    cell_min = std::min(cell_min, ranges_of[4 * n + 2]);
    cell_max = std::max(cell_max, ranges_of[4 * n + 3]);
  }
  auto ranges = at::empty({4}, at::TensorOptions().dtype(at::kDouble));
  double* range_data = ranges.data_ptr<double>();
  range_data[0] = product_min, range_data[1] = product_max, range_data[2] = cell_min, range_data[3] = cell_max;
  std::vector<at::Tensor> out{y, h, c, ranges};
  if (keep) out.insert(out.end(), records.begin(), records.end());
  return out;
}

// Backward recurrence: the chain rule of the operators' straight-through estimators, step by
// step from the last (see _Recurrence in nnaqat/nna/lstm.py).
//   grad_y (N, T, H) or an empty tensor; grad_h, grad_c (N, H) float32
//   records as lstm_forward returns them; sigmoid, tanh: the gate tables as lstm_forward takes them;
//   sigmoid_slope, tanh_slope: the tables' derivatives at every gate code, (2**gate_bits,) float32
//   w_h (4H, H); r_x, r_h (4H,) the input's and the recurrent real multipliers
//   ints = [gate_bits]
//   reals = [r_out, kept_scale, written_scale, cell_gate_scale]
// Returns [grad_product (N, T, 4H), grad_acc (T, N, 4H), dh (N, H), dc (N, H)]: the gradients
// of lstm_forward's input product and of the recurrent accumulators (in step order).
std::vector<at::Tensor> lstm_backward(at::Tensor grad_y, at::Tensor grad_h, at::Tensor grad_c,
                                         std::vector<at::Tensor> records, at::Tensor sigmoid, at::Tensor tanh,
                                         at::Tensor sigmoid_slope, at::Tensor tanh_slope, at::Tensor w_h,
                                         at::Tensor r_x, at::Tensor r_h, std::vector<int64_t> ints,
                                         std::vector<double> reals) {
  TORCH_CHECK(records.size() == 6 && ints.size() == 1 && reals.size() == 4,
              "integer_lstm: backward expects 6 records, 1 integer and 4 reals");
  const int64_t T = records[0].size(0), N = records[0].size(1), H = records[0].size(2), G = 4 * H;
  const float r_out = static_cast<float>(reals[0]), kept_scale = static_cast<float>(reals[1]),
              written_scale = static_cast<float>(reals[2]), cell_gate_scale = static_cast<float>(reals[3]);
  const bool has_grad_y = grad_y.numel() > 0;
  const auto gy = has_grad_y ? grad_y.to(at::kFloat).contiguous() : grad_y;
  for (auto& record : records) record = record.contiguous();
  const int64_t gate_bits = ints[0];
  const int16_t *const sigmoid_table = gate_table(sigmoid, gate_bits), *const tanh_table = gate_table(tanh, gate_bits);
  const auto sig_slope = sigmoid_slope.to(at::kFloat).contiguous(), tanh_sl = tanh_slope.to(at::kFloat).contiguous();
  TORCH_CHECK(sig_slope.numel() == (int64_t(1) << gate_bits) && tanh_sl.numel() == sig_slope.numel(),
              "integer_lstm: slope tables must hold every gate code");
  // A table's derivative at a gate code: sigmoid's for i, f, o and tanh's for g.
  const auto gate_low = static_cast<int64_t>(low_of(gate_bits));
  const float* sigmoid_at = sig_slope.data_ptr<float>() - gate_low;
  const float* tanh_at = tanh_sl.data_ptr<float>() - gate_low;
  const auto w = w_h.to(at::kFloat).contiguous();
  const auto rh = r_h.to(at::kFloat).contiguous();
  const auto rx = r_x.to(at::kDouble).contiguous();
  TORCH_CHECK(rh.numel() == G && rx.numel() == G, "integer_lstm: one real multiplier per gate");

  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto grad_product = at::empty({N, T, G}, f32), grad_acc = at::empty({T, N, G}, f32);
  auto dh = grad_h.to(at::kFloat).contiguous().clone(), dc = grad_c.to(at::kFloat).contiguous().clone();
  float* dhp = dh.data_ptr<float>();
  float* dcp = dc.data_ptr<float>();
  const float* rhp = rh.data_ptr<float>();
  const double* rxp = rx.data_ptr<double>();
  const float* gyp = has_grad_y ? gy.data_ptr<float>() : nullptr;
  // As in the forward pass, each thread takes its share of the batch through every step.
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    // Locals, not the closure's references: the loops' stores could alias those, which would
    // then be reloaded per element.
    float* __restrict const dh_data = dhp;
    float* __restrict const dc_data = dcp;
    const float *const r_h_data = rhp, *const gy_data = gyp, *const sigmoid_slope_at = sigmoid_at,
                *const tanh_slope_at = tanh_at;
    const double* const r_x_data = rxp;
    const float r_hidden = r_out, kept = kept_scale, written = written_scale, squash_scale = cell_gate_scale;
    const int64_t n_rows = N, steps = T, units = H, gate_count = G;
    const int16_t *const sigmoid_value = sigmoid_table, *const tanh_value = tanh_table;
    std::vector<float> gg(gate_count);  // one sequence's gate gradients
    const std::vector<float> no_grad_y(units);
    auto dh_rows = dh.narrow(0, begin, end - begin);  // contiguous: the matmul writes into dh
    for (int64_t t = steps - 1; t >= 0; --t) {
      const float* c_prev = records[1].data_ptr<float>() + t * n_rows * units;
      const float* gates = records[2].data_ptr<float>() + t * n_rows * gate_count;
      const uint8_t* gate_flags = records[3].data_ptr<uint8_t>() + t * n_rows * gate_count;
      const float* cell_gate = records[4].data_ptr<float>() + t * n_rows * units;
      const uint8_t* unit_flags = records[5].data_ptr<uint8_t>() + t * n_rows * units;
      float* ga = grad_acc.data_ptr<float>() + t * n_rows * gate_count;
      for (int64_t n = begin; n < end; ++n) {
        const int64_t base = n * gate_count;
        float* __restrict const gp = grad_product.data_ptr<float>() + (n * steps + t) * gate_count;
        const float* __restrict const gy_row = gy_data ? gy_data + (n * steps + t) * units : no_grad_y.data();
        float* __restrict const gate_grads = gg.data();
        // The tables' outputs and slopes at this step's gate codes (slopes zero where the gate
        // saturated). Every lookup is made (all codes are in the tables) and masked after, with
        // no branch on the flags.
        const float* const gate_row = gates + base;
        const uint8_t* const gate_flag_row = gate_flags + base;
        const auto value = [gate_row](const int16_t* table, int64_t j) {
          return static_cast<float>(table[static_cast<int64_t>(gate_row[j])]);
        };
        const auto slope = [gate_row, gate_flag_row](int64_t j, const float* table) {
          const float at_code = table[static_cast<int64_t>(gate_row[j])];
          return (gate_flag_row[j] & kGateInside) ? at_code : 0.0f;
        };
        for (int64_t u = 0; u < units; ++u) {
          const int64_t at = n * units + u;
          const uint8_t flags = unit_flags[at];
          const float d_h = dh_data[at] + gy_row[u];
          const float i = value(sigmoid_value, u), f = value(sigmoid_value, units + u),
                      g = value(tanh_value, 2 * units + u), o = value(sigmoid_value, 3 * units + u);
          const auto cell_code = static_cast<int64_t>(cell_gate[at]);
          const auto squashed = static_cast<float>(tanh_value[cell_code]);
          const float d_product = (flags & kHiddenInside) ? d_h * r_hidden : 0.0f;
          const float d_o = d_product * squashed;
          const float tanh_slope = tanh_slope_at[cell_code];
          const float squash_slope = (flags & kCellGateInside) ? tanh_slope * squash_scale : 0.0f;
          const float d_c_in = dc_data[at] + d_product * o * squash_slope;
          const float d_c = (flags & kCellInside) ? d_c_in : 0.0f;
          const float d_kept = (flags & kKeptInside) ? d_c * kept : 0.0f;
          const float d_written = (flags & kWrittenInside) ? d_c * written : 0.0f;
          gate_grads[u] = d_written * g * slope(u, sigmoid_slope_at);
          gate_grads[units + u] = d_kept * c_prev[at] * slope(units + u, sigmoid_slope_at);
          gate_grads[2 * units + u] = d_written * i * slope(2 * units + u, tanh_slope_at);
          gate_grads[3 * units + u] = d_o * slope(3 * units + u, sigmoid_slope_at);
          dc_data[at] = d_kept * f;
        }
        constexpr uint8_t kInputBothInside = kInputAccInside | kInputInside;
        float* __restrict const ga_row = ga + base;
        for (int64_t j = 0; j < gate_count; ++j) {
          const uint8_t flags = gate_flag_row[j];
          const float through_recurrent = gate_grads[j] * r_h_data[j];
          // As ops.linear_codes' backward: the real multiplier in float64 where neither clamp was active.
          const auto through_input = static_cast<float>(static_cast<double>(gate_grads[j]) * r_x_data[j]);
          ga_row[j] = (flags & kAccInside) ? through_recurrent : 0.0f;
          gp[j] = (flags & kInputBothInside) == kInputBothInside ? through_input : 0.0f;
        }
      }
      at::mm_out(dh_rows, grad_acc[t].narrow(0, begin, end - begin), w);  // (rows, 4H) @ (4H, H)
    }
  });
  return {grad_product, grad_acc, dh, dc};
}

}  // namespace nnaqat
