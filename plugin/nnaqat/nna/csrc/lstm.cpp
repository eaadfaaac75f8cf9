// The emulated integer LSTM recurrence of nnaqat.nna.lstm.NnaLstm as one compiled loop over
// time, forward and backward.
//
// The step is the one of nnaqat/nna/reference_lstm.py with the integer semantics of the torch
// operators in nnaqat/nna/ops.py; the tests hold it to the NumPy reference engine bit for bit
// and its backward pass to autograd through those operators. Written with torch operators the
// step is some sixty small tensor operations, each paying the dispatcher's overhead; here the
// element-wise work of a step is one pass and only the matmul goes through ATen (BLAS).
//
// Tensors hold integer values in float32 (the Python side's convention); the arithmetic is in
// int64, or in float32/float64 where the operator's definition says so (fixed_point.h).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "fixed_point.h"

namespace nnaqat {
namespace {

constexpr double kFloat32Exact = 16777216.0;  // 2**24

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
    return {ints[0], ints[1], ints[2], ints[3], ints[4], ints[5], ints[6], ints[7],
            ints[8] != 0, ints[9] != 0, reals[0], reals[1], reals[2]};
  }
};

}  // namespace

// Forward recurrence, no gradient.
//   from_input (N, T, 4H)  float32 gate-format codes of the input's contribution
//   w_h (4H, H)            float32 recurrent weight codes;  h0, c0 (N, H) state codes
//   m_h, shift_h (4H,)     int64 fixed-point multipliers of the recurrent accumulator
//   sigmoid, tanh          float32 tables expanded to every gate code, (2**gate_bits,)
//   ints  = [h_zero_point, acc_bits, gate_bits, cell_bits, hidden_bits, m_out, shift_out,
//            rounding (0 single, 1 double, 2 tosa, 3 fp32_rne), acc_saturate, zero_point_before_rounding]
//   reals = [kept_scale, written_scale, cell_gate_scale]
// Returns [y (N, T, H), h_T, c_T, ranges] with ranges (4,) float64: min and max of o * tanh(c)
// (integer units) and of the unsaturated cell. With keep, then the records (T, N, ...) the
// backward pass reads: h_prev, acc_inside, gates_inside, ifgo, c_prev, kept_inside,
// written_inside, cell_inside, cell_gate, cell_gate_inside, squashed, h_inside, gates (masks bool).
std::vector<at::Tensor> lstm_forward(at::Tensor from_input, at::Tensor w_h, at::Tensor h0,
                                        at::Tensor c0, at::Tensor m_h, at::Tensor shift_h,
                                        at::Tensor sigmoid, at::Tensor tanh, std::vector<int64_t> ints,
                                        std::vector<double> reals, bool keep) {
  const Constants k = Constants::from(ints, reals);
  const auto x = from_input.to(at::kFloat).contiguous();
  const auto w = w_h.to(at::kFloat).contiguous();
  const int64_t N = x.size(0), T = x.size(1), G = x.size(2), H = G / 4;
  TORCH_CHECK(G == 4 * H && w.size(0) == G && w.size(1) == H, "integer_lstm: weight ", w.sizes(),
              " does not match gates ", x.sizes());
  const auto mh = m_h.to(at::kLong).contiguous(), sh = shift_h.to(at::kLong).contiguous();
  const auto sig = sigmoid.to(at::kFloat).contiguous(), tnh = tanh.to(at::kFloat).contiguous();
  TORCH_CHECK(mh.numel() == G && sh.numel() == G, "integer_lstm: one multiplier per gate unit");
  TORCH_CHECK(sig.numel() == (int64_t(1) << k.gate_bits) && tnh.numel() == sig.numel(),
              "integer_lstm: tables must hold every gate code");

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

  const auto f32 = at::TensorOptions().dtype(at::kFloat), b8 = at::TensorOptions().dtype(at::kBool);
  auto y = at::empty({N, T, H}, f32);
  auto h = h0.to(at::kFloat).contiguous().clone(), c = c0.to(at::kFloat).contiguous().clone();
  auto h_centered = at::empty({N, H}, mm_options);
  auto acc = at::empty({N, G}, mm_options);
  const int64_t kept_steps = keep ? T : 0;
  auto records = std::vector<at::Tensor>{
      at::empty({kept_steps, N, H}, f32), at::empty({kept_steps, N, G}, b8),   // h_prev, acc_inside
      at::empty({kept_steps, N, G}, b8), at::empty({kept_steps, N, G}, f32),   // gates_inside, ifgo
      at::empty({kept_steps, N, H}, f32), at::empty({kept_steps, N, H}, b8),   // c_prev, kept_inside
      at::empty({kept_steps, N, H}, b8), at::empty({kept_steps, N, H}, b8),    // written_inside, cell_inside
      at::empty({kept_steps, N, H}, f32), at::empty({kept_steps, N, H}, b8),   // cell_gate, cell_gate_inside
      at::empty({kept_steps, N, H}, f32), at::empty({kept_steps, N, H}, b8),   // squashed, h_inside
      at::empty({kept_steps, N, G}, f32)};                                        // gates
  // Scratch for the step when nothing is kept; otherwise the step writes straight into the records.
  auto scratch = std::vector<at::Tensor>{
      at::empty({N, H}, f32), at::empty({N, G}, b8), at::empty({N, G}, b8), at::empty({N, G}, f32),
      at::empty({N, H}, f32), at::empty({N, H}, b8), at::empty({N, H}, b8), at::empty({N, H}, b8),
      at::empty({N, H}, f32), at::empty({N, H}, b8), at::empty({N, H}, f32), at::empty({N, H}, b8),
      at::empty({N, G}, f32)};
  // Per-sequence running minima and maxima of o * tanh(c) and of the unsaturated cell.
  std::vector<double> ranges_of(4 * N);
  for (int64_t n = 0; n < N; ++n) {
    ranges_of[4 * n] = ranges_of[4 * n + 2] = std::numeric_limits<double>::infinity();
    ranges_of[4 * n + 1] = ranges_of[4 * n + 3] = -std::numeric_limits<double>::infinity();
  }

  const float* xp = x.data_ptr<float>();
  const int64_t* mhp = mh.data_ptr<int64_t>();
  const int64_t* shp = sh.data_ptr<int64_t>();
  const float* sigp = sig.data_ptr<float>();
  const float* tanhp = tnh.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  float* cp = c.data_ptr<float>();

  for (int64_t t = 0; t < T; ++t) {
    std::vector<at::Tensor> r(13);
    for (size_t i = 0; i < r.size(); ++i) r[i] = keep ? records[i][t] : scratch[i];
    r[0].copy_(h);
    r[4].copy_(c);
    h_centered.copy_(h);
    h_centered.sub_(static_cast<double>(k.h_zero_point));
    at::mm_out(acc, h_centered, w_t);
    const float* acc32 = in_float32 ? acc.data_ptr<float>() : nullptr;
    const double* acc64 = in_float32 ? nullptr : acc.data_ptr<double>();
    bool* acc_in = r[1].data_ptr<bool>();
    bool* gate_in = r[2].data_ptr<bool>();
    float* ifgo = r[3].data_ptr<float>();
    const float* c_prev = r[4].data_ptr<float>();
    bool* kept_in = r[5].data_ptr<bool>();
    bool* written_in = r[6].data_ptr<bool>();
    bool* cell_in = r[7].data_ptr<bool>();
    float* cell_gate = r[8].data_ptr<float>();
    bool* cell_gate_in = r[9].data_ptr<bool>();
    float* squashed = r[10].data_ptr<float>();
    bool* h_in = r[11].data_ptr<bool>();
    float* gates = r[12].data_ptr<float>();

    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        // Gates: the accumulator (saturated or wrapped), requantized, plus the input's part,
        // saturated; then the tables.
        const float* from_x = xp + (n * T + t) * G;
        for (int64_t j = 0; j < G; ++j) {
          const int64_t at = n * G + j;
          const double total = overflow(in_float32 ? static_cast<double>(acc32[at]) : acc64[at], acc_low, acc_high,
                                        wrap_span, k.acc_saturate, &acc_in[at]);
          const int64_t pre =
              static_cast<int64_t>(from_x[j]) + requantize(static_cast<int64_t>(total), mhp[j], shp[j], k.rounding);
          const double gate = saturate(static_cast<double>(pre), gate_low, gate_high, &gate_in[at]);
          gates[at] = static_cast<float>(gate);
          const int64_t position = static_cast<int64_t>(gate - gate_low);
          ifgo[at] = (j >= 2 * H && j < 3 * H) ? tanhp[position] : sigp[position];
        }
        // The cell and the hidden state, unit by unit.
        double* range = ranges_of.data() + 4 * n;
        const float* v = ifgo + n * G;
        for (int64_t u = 0; u < H; ++u) {
          const int64_t at = n * H + u;
          const double i = v[u], f = v[H + u], g = v[2 * H + u], o = v[3 * H + u];
          const double kept =
              saturate(mul_rounded(f, c_prev[at], k.kept_scale, k.rounding), cell_low, cell_high, &kept_in[at]);
          const double written =
              saturate(mul_rounded(i, g, k.written_scale, k.rounding), cell_low, cell_high, &written_in[at]);
          const double unsaturated = kept + written;
          range[2] = std::min(range[2], unsaturated);
          range[3] = std::max(range[3], unsaturated);
          const double c_new = saturate(unsaturated, cell_low, cell_high, &cell_in[at]);
          const double in_gate_format = saturate(mul_rounded(c_new, 1.0, k.cell_gate_scale, k.rounding), gate_low,
                                                 gate_high, &cell_gate_in[at]);
          const double tanh_c = tanhp[static_cast<int64_t>(in_gate_format - gate_low)];
          const double product = o * tanh_c;  // < 2**30: exact
          range[0] = std::min(range[0], product);
          range[1] = std::max(range[1], product);
          const int64_t code = requantized_code(static_cast<int64_t>(product), k.m_out, k.shift_out, k.h_zero_point,
                                                k.rounding, k.zero_point_before_rounding);
          const double h_new = saturate(static_cast<double>(code), hidden_low, hidden_high, &h_in[at]);
          cell_gate[at] = static_cast<float>(in_gate_format);
          squashed[at] = static_cast<float>(tanh_c);
          cp[at] = static_cast<float>(c_new);
          hp[at] = static_cast<float>(h_new);
          yp[(n * T + t) * H + u] = static_cast<float>(h_new);
        }
      }
    });
  }
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
//   records as lstm_forward returns them; slopes (T, N, 4H): the tables' derivatives times
//   gates_inside; squash_slope (T, N, H): tanh's derivative at the cell times the
//   cell-to-gate scale and cell_gate_inside
//   w_h (4H, H); r_h (4H,) the recurrent real multipliers; reals = [r_out, kept_scale, written_scale]
// Returns [grad_gates (T, N, 4H), grad_acc (T, N, 4H), dh (N, H), dc (N, H)].
std::vector<at::Tensor> lstm_backward(at::Tensor grad_y, at::Tensor grad_h, at::Tensor grad_c,
                                         std::vector<at::Tensor> records, at::Tensor slopes,
                                         at::Tensor squash_slope, at::Tensor w_h, at::Tensor r_h,
                                         std::vector<double> reals) {
  TORCH_CHECK(records.size() == 13 && reals.size() == 3, "integer_lstm: backward expects 13 records and 3 reals");
  const int64_t T = records[4].size(0), N = records[4].size(1), H = records[4].size(2), G = 4 * H;
  const float r_out = static_cast<float>(reals[0]), kept_scale = static_cast<float>(reals[1]),
              written_scale = static_cast<float>(reals[2]);
  const bool has_grad_y = grad_y.numel() > 0;
  const auto gy = has_grad_y ? grad_y.to(at::kFloat).contiguous() : grad_y;
  for (auto& record : records) record = record.contiguous();
  const auto slope = slopes.to(at::kFloat).contiguous(), sq_slope = squash_slope.to(at::kFloat).contiguous();
  const auto w = w_h.to(at::kFloat).contiguous();
  const auto rh = r_h.to(at::kFloat).contiguous();

  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto grad_gates = at::empty({T, N, G}, f32), grad_acc = at::empty({T, N, G}, f32);
  auto dh = grad_h.to(at::kFloat).contiguous().clone(), dc = grad_c.to(at::kFloat).contiguous().clone();
  float* dhp = dh.data_ptr<float>();
  float* dcp = dc.data_ptr<float>();
  const float* rhp = rh.data_ptr<float>();
  const float* gyp = has_grad_y ? gy.data_ptr<float>() : nullptr;
  for (int64_t t = T - 1; t >= 0; --t) {
    const bool* acc_in = records[1].data_ptr<bool>() + t * N * G;
    const float* ifgo = records[3].data_ptr<float>() + t * N * G;
    const float* c_prev = records[4].data_ptr<float>() + t * N * H;
    const bool* kept_in = records[5].data_ptr<bool>() + t * N * H;
    const bool* written_in = records[6].data_ptr<bool>() + t * N * H;
    const bool* cell_in = records[7].data_ptr<bool>() + t * N * H;
    const float* squashed = records[10].data_ptr<float>() + t * N * H;
    const bool* h_in = records[11].data_ptr<bool>() + t * N * H;
    const float* sl = slope.data_ptr<float>() + t * N * G;
    const float* sqs = sq_slope.data_ptr<float>() + t * N * H;
    float* gg = grad_gates.data_ptr<float>() + t * N * G;
    float* ga = grad_acc.data_ptr<float>() + t * N * G;
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const float* v = ifgo + n * G;
        const int64_t base = n * G;
        for (int64_t u = 0; u < H; ++u) {
          const int64_t at = n * H + u;
          const float d_h = dhp[at] + (gyp ? gyp[(n * T + t) * H + u] : 0.0f);
          const float i = v[u], f = v[H + u], g = v[2 * H + u], o = v[3 * H + u];
          const float d_product = h_in[at] ? d_h * r_out : 0.0f;
          const float d_o = d_product * squashed[at];
          const float d_c = cell_in[at] ? dcp[at] + d_product * o * sqs[at] : 0.0f;
          const float d_kept = kept_in[at] ? d_c * kept_scale : 0.0f;
          const float d_written = written_in[at] ? d_c * written_scale : 0.0f;
          gg[base + u] = d_written * g * sl[base + u];
          gg[base + H + u] = d_kept * c_prev[at] * sl[base + H + u];
          gg[base + 2 * H + u] = d_written * i * sl[base + 2 * H + u];
          gg[base + 3 * H + u] = d_o * sl[base + 3 * H + u];
          dcp[at] = d_kept * f;
        }
        for (int64_t j = 0; j < G; ++j) ga[base + j] = acc_in[base + j] ? gg[base + j] * rhp[j] : 0.0f;
      }
    });
    at::mm_out(dh, grad_acc[t], w);  // (N, 4H) @ (4H, H)
  }
  return {grad_gates, grad_acc, dh, dc};
}

}  // namespace nnaqat
