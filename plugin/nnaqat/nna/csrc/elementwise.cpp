// Element-wise NNA operators of nnaqat/nna/ops.py and nnaqat/nna/layers.py, one pass each.
//
// The emulated model spends most of its time in a few operators applied to large tensors
// (the joiner's lattice, the LSTM's input gates): composed of torch operators each is a dozen
// passes over memory in int64 and float64. Here each is one pass. Per-channel parameters are
// (C,) vectors read at channel (i / inner) % C of the flat element index i: C = 1 for one
// value, inner = 1 along the last axis, inner = the row size along the first (ops.channel_layout).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "fixed_point.h"

namespace nnaqat {
namespace {

constexpr int64_t kGrain = 16384;

// Calls f(i, c) for every flat index i in [0, numel) and its channel c, in parallel, without
// a division per element: numel is a whole number of periods of channels * inner elements.
template <typename F>
void for_each_element(int64_t numel, int64_t channels, int64_t inner, const F& f) {
  TORCH_CHECK(channels >= 1 && inner >= 1 && numel % (channels * inner) == 0, "bad channel layout: ", numel,
              " elements, ", channels, " channels of ", inner);
  if (channels == 1) {  // one parameter: a flat loop the compiler can vectorize
    at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(i, 0);
    });
    return;
  }
  const int64_t period = channels * inner;
  at::parallel_for(0, numel / period, std::max<int64_t>(1, kGrain / period), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (inner == 1) {
        for (int64_t c = 0; c < channels; ++c) f(p * channels + c, c);
        continue;
      }
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t first = (p * channels + c) * inner;
        for (int64_t i = first; i < first + inner; ++i) f(i, c);
      }
    }
  });
}

// Calls f(pointer) with the data of a tensor: float32 as it is, anything else as float64.
template <typename F>
void with_float_data(const at::Tensor& tensor, const F& f) {
  if (tensor.scalar_type() == at::kFloat) {
    const auto p = tensor.contiguous();
    f(p.data_ptr<float>());
  } else {
    const auto p = tensor.to(at::kDouble).contiguous();
    f(p.data_ptr<double>());
  }
}

}  // namespace

// ops.quantize: x (float32, contiguous), scale (C,) float32 -> [codes float32, inside bool].
std::vector<at::Tensor> quantize_codes(at::Tensor x, at::Tensor scale, int64_t inner, int64_t zero_point,
                                          int64_t bits) {
  const auto input = x.to(at::kFloat).contiguous();
  const auto scales = scale.to(at::kFloat).contiguous();
  auto codes = at::empty_like(input);
  auto inside = at::empty(input.sizes(), at::TensorOptions().dtype(at::kBool));
  const float* xp = input.data_ptr<float>();
  const float* sp = scales.data_ptr<float>();
  float* out = codes.data_ptr<float>();
  bool* in = inside.data_ptr<bool>();
  const float low = low_of(bits), high = high_of(bits), zp = static_cast<float>(zero_point);
  for_each_element(input.numel(), scales.numel(), inner, [&](int64_t i, int64_t c) {
    out[i] = quantize(xp[i], sp[c], zp, low, high, &in[i]);
  });
  return {codes, inside};
}

// ops.requantize_output: acc (float64 integers, contiguous), multiplier and shift (C,) int64
// -> [codes float32, inside bool] (saturated to `bits`).
std::vector<at::Tensor> requantize_codes(at::Tensor acc, at::Tensor multiplier, at::Tensor shift,
                                            int64_t inner, int64_t zero_point, int64_t bits, int64_t rounding,
                                            bool zero_point_before_rounding) {
  TORCH_CHECK(rounding >= 0 && rounding <= 3, "requantize_codes: unknown rounding ", rounding);
  const auto input = acc.to(at::kDouble).contiguous();
  const auto m = multiplier.to(at::kLong).contiguous(), s = shift.to(at::kLong).contiguous();
  TORCH_CHECK(s.numel() == m.numel(), "requantize_codes: one shift per multiplier");
  auto codes = at::empty(input.sizes(), at::TensorOptions().dtype(at::kFloat));
  auto inside = at::empty(input.sizes(), at::TensorOptions().dtype(at::kBool));
  const double* ap = input.data_ptr<double>();
  const int64_t* mp = m.data_ptr<int64_t>();
  const int64_t* sp = s.data_ptr<int64_t>();
  float* out = codes.data_ptr<float>();
  bool* in = inside.data_ptr<bool>();
  const double low = low_of(bits), high = high_of(bits);
  with_rounding(rounding, [&](auto mode) {
    for_each_element(input.numel(), m.numel(), inner, [&](int64_t i, int64_t c) {
      out[i] = static_cast<float>(output_code<decltype(mode)::value>(
          static_cast<int64_t>(ap[i]), mp[c], sp[c], zero_point, zero_point_before_rounding, low, high, &in[i]));
    });
  });
  return {codes, inside};
}

// ops.add (TFLite's ADD): a, b (float32 codes, same shape) minus their zero points, shifted
// left by `left_shift`, each requantized by its multiplier, summed, requantized to the output
// (zero point after rounding) and saturated -> [codes float32, inside bool].
// multipliers = [m_a, shift_a, m_b, shift_b, m_out, shift_out].
std::vector<at::Tensor> add_codes(at::Tensor a, at::Tensor b, int64_t a_zero_point, int64_t b_zero_point,
                                     int64_t left_shift, std::vector<int64_t> multipliers, int64_t out_zero_point,
                                     int64_t out_bits, int64_t rounding) {
  TORCH_CHECK(multipliers.size() == 6, "add_codes: expected three multipliers and shifts");
  TORCH_CHECK(rounding >= 0 && rounding <= 3, "add_codes: unknown rounding ", rounding);
  const auto ac = a.to(at::kFloat).contiguous(), bc = b.to(at::kFloat).contiguous();
  TORCH_CHECK(ac.sizes() == bc.sizes(), "add_codes: a and b must have the same shape");
  auto codes = at::empty_like(ac);
  auto inside = at::empty(ac.sizes(), at::TensorOptions().dtype(at::kBool));
  const float* ap = ac.data_ptr<float>();
  const float* bp = bc.data_ptr<float>();
  float* out = codes.data_ptr<float>();
  bool* in = inside.data_ptr<bool>();
  const int64_t headroom = int64_t(1) << left_shift;
  const auto& k = multipliers;
  const double low = low_of(out_bits), high = high_of(out_bits);
  with_rounding(rounding, [&](auto mode) {
    constexpr int64_t kMode = decltype(mode)::value;
    for_each_element(ac.numel(), 1, 1, [&](int64_t i, int64_t) {
      const int64_t a_scaled = requantize<kMode>((static_cast<int64_t>(ap[i]) - a_zero_point) * headroom, k[0], k[1]);
      const int64_t b_scaled = requantize<kMode>((static_cast<int64_t>(bp[i]) - b_zero_point) * headroom, k[2], k[3]);
      const int64_t code = requantize<kMode>(a_scaled + b_scaled, k[4], k[5]) + out_zero_point;
      out[i] = static_cast<float>(saturate(static_cast<double>(code), low, high, &in[i]));
    });
  });
  return {codes, inside};
}

// ops.accumulate after its matmul: product (..., N) (float32 or float64, exact integers) plus
// offset (N,) float64 (bias - x_zero_point * sum of the row's weights), saturated or wrapped to
// `bits` -> [acc float64, inside bool (saturation did not clip; all true when wrapping)].
std::vector<at::Tensor> accumulate_epilogue(at::Tensor product, at::Tensor offset, int64_t bits,
                                               bool saturate_overflow) {
  const auto off = offset.to(at::kDouble).contiguous();
  const int64_t outputs = off.numel();
  TORCH_CHECK(product.dim() >= 1 && product.size(-1) == outputs, "accumulate_epilogue: ", outputs,
              " offsets for outputs of shape ", product.sizes());
  auto acc = at::empty(product.sizes(), at::TensorOptions().dtype(at::kDouble));
  auto inside = at::empty(product.sizes(), at::TensorOptions().dtype(at::kBool));
  const double* op = off.data_ptr<double>();
  double* ap = acc.data_ptr<double>();
  bool* in = inside.data_ptr<bool>();
  const double low = low_of(bits), high = high_of(bits), span = std::ldexp(1.0, static_cast<int>(bits));
  with_float_data(product, [&](const auto* pp) {
    for_each_element(acc.numel(), outputs, 1, [&](int64_t i, int64_t c) {
      ap[i] = overflow(static_cast<double>(pp[i]) + op[c], low, high, span, saturate_overflow, &in[i]);
    });
  });
  return {acc, inside};
}

// ops.linear_codes after its matmul: accumulate_epilogue and requantize_codes in one pass.
// product (..., N), offset (N,) as accumulate_epilogue; multiplier, shift (N,) int64 per output
// -> [codes float32, inside uint8: bit 0 the accumulator did not saturate (always set when
// wrapping), bit 1 the output clamp was inactive].
std::vector<at::Tensor> linear_codes(at::Tensor product, at::Tensor offset, int64_t acc_bits,
                                        bool saturate_overflow, at::Tensor multiplier, at::Tensor shift,
                                        int64_t zero_point, int64_t out_bits, int64_t rounding,
                                        bool zero_point_before_rounding) {
  TORCH_CHECK(rounding >= 0 && rounding <= 3, "linear_codes: unknown rounding ", rounding);
  const auto off = offset.to(at::kDouble).contiguous();
  const auto m = multiplier.to(at::kLong).contiguous(), s = shift.to(at::kLong).contiguous();
  const int64_t outputs = off.numel();
  TORCH_CHECK(product.dim() >= 1 && product.size(-1) == outputs && m.numel() == outputs && s.numel() == outputs,
              "linear_codes: ", outputs, " offsets, ", m.numel(), " multipliers for outputs of shape ", product.sizes());
  auto codes = at::empty(product.sizes(), at::TensorOptions().dtype(at::kFloat));
  auto inside = at::empty(product.sizes(), at::TensorOptions().dtype(at::kByte));
  const double* op = off.data_ptr<double>();
  const int64_t* mp = m.data_ptr<int64_t>();
  const int64_t* sp = s.data_ptr<int64_t>();
  float* out = codes.data_ptr<float>();
  uint8_t* in = inside.data_ptr<uint8_t>();
  const double acc_low = low_of(acc_bits), acc_high = high_of(acc_bits);
  const double span = std::ldexp(1.0, static_cast<int>(acc_bits));
  const double low = low_of(out_bits), high = high_of(out_bits);
  with_float_data(product, [&](const auto* pp) {
    with_rounding(rounding, [&](auto mode) {
      for_each_element(codes.numel(), outputs, 1, [&](int64_t i, int64_t c) {
        bool acc_in, out_in;
        const double acc =
            overflow(static_cast<double>(pp[i]) + op[c], acc_low, acc_high, span, saturate_overflow, &acc_in);
        out[i] = static_cast<float>(output_code<decltype(mode)::value>(
            static_cast<int64_t>(acc), mp[c], sp[c], zero_point, zero_point_before_rounding, low, high, &out_in));
        in[i] = static_cast<uint8_t>(acc_in | (out_in << 1));
      });
    });
  });
  return {codes, inside};
}

// Gradient of linear_codes' epilogue: grad * real[c] where neither clamp was active, float32.
at::Tensor linear_codes_backward(at::Tensor grad, at::Tensor inside, at::Tensor real) {
  const auto g = grad.to(at::kFloat).contiguous();
  const auto r = real.to(at::kDouble).contiguous();
  const auto mask = inside.contiguous();
  TORCH_CHECK(g.numel() == mask.numel() && g.size(-1) == r.numel(), "linear_codes_backward: shapes do not match");
  auto out = at::empty_like(g);
  const float* gp = g.data_ptr<float>();
  const double* rp = r.data_ptr<double>();
  const uint8_t* mp = mask.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  for_each_element(g.numel(), r.numel(), 1, [&](int64_t i, int64_t c) {
    op[i] = mp[i] == 3 ? static_cast<float>(static_cast<double>(gp[i]) * rp[c]) : 0.0f;
  });
  return out;
}

// Clipped straight-through gradients. masked_scale: grad * factor[channel] where inside, else
// 0, in float64 (a requantization's real multiplier; accumulators are float64).
at::Tensor masked_scale(at::Tensor grad, at::Tensor factor, int64_t inner, at::Tensor inside) {
  const auto f = factor.to(at::kDouble).contiguous();
  const auto mask = inside.contiguous();
  TORCH_CHECK(grad.numel() == mask.numel(), "masked_scale: shapes do not match");
  auto out = at::empty(grad.sizes(), at::TensorOptions().dtype(at::kDouble));
  const double* fp = f.data_ptr<double>();
  const bool* mp = mask.data_ptr<bool>();
  double* op = out.data_ptr<double>();
  with_float_data(grad, [&](const auto* gp) {
    for_each_element(out.numel(), f.numel(), inner, [&](int64_t i, int64_t c) {
      op[i] = mp[i] ? static_cast<double>(gp[i]) * fp[c] : 0.0;
    });
  });
  return out;
}

// masked_divide: grad / divisor[channel] where inside, else 0, in float32 (a quantization's scale).
at::Tensor masked_divide(at::Tensor grad, at::Tensor divisor, int64_t inner, at::Tensor inside) {
  const auto g = grad.to(at::kFloat).contiguous();
  const auto d = divisor.to(at::kFloat).contiguous();
  const auto mask = inside.contiguous();
  TORCH_CHECK(g.numel() == mask.numel(), "masked_divide: shapes do not match");
  auto out = at::empty_like(g);
  const float* gp = g.data_ptr<float>();
  const float* dp = d.data_ptr<float>();
  const bool* mp = mask.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  for_each_element(g.numel(), d.numel(), inner, [&](int64_t i, int64_t c) { op[i] = mp[i] ? gp[i] / dp[c] : 0.0f; });
  return out;
}

// NnaAddTanh through its pair tables: a, b (float32, same shape) are quantized (ops.quantize
// with their scales and zero points) and the op's output code read from `value` ((2**bits)**2,
// indexed by (a_q - low) * 2**bits + (b_q - low); bits <= 8). Returns [codes float32, pair
// uint16, inside uint8: bit 0 a's quantization did not clamp, bit 1 b's].
std::vector<at::Tensor> pair_lookup(at::Tensor a, at::Tensor b, double a_scale, int64_t a_zero_point,
                                       double b_scale, int64_t b_zero_point, int64_t bits, at::Tensor value) {
  const auto ac = a.to(at::kFloat).contiguous(), bc = b.to(at::kFloat).contiguous();
  TORCH_CHECK(ac.sizes() == bc.sizes(), "pair_lookup: a and b must have the same shape");
  TORCH_CHECK(bits >= 1 && bits <= 8, "pair_lookup: a pair index needs 2 * bits <= 16 bits, got bits = ", bits);
  const auto table = value.to(at::kFloat).contiguous();
  const int64_t codes = int64_t(1) << bits;
  TORCH_CHECK(table.numel() == codes * codes, "pair_lookup: the table must hold every pair of codes");
  auto out = at::empty_like(ac);
  auto pair = at::empty(ac.sizes(), at::TensorOptions().dtype(at::kUInt16));
  auto inside = at::empty(ac.sizes(), at::TensorOptions().dtype(at::kByte));
  const float* ap = ac.data_ptr<float>();
  const float* bp = bc.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  float* op = out.data_ptr<float>();
  uint16_t* pp = pair.data_ptr<uint16_t>();
  uint8_t* ip = inside.data_ptr<uint8_t>();
  const float sa = static_cast<float>(a_scale), sb = static_cast<float>(b_scale);
  const float low = low_of(bits), high = high_of(bits);
  const float a_zp = static_cast<float>(a_zero_point), b_zp = static_cast<float>(b_zero_point);
  constexpr int64_t kBlock = 512;
  at::parallel_for(0, ac.numel(), kGrain, [&](int64_t begin, int64_t end) {
    float a_raw[kBlock], b_raw[kBlock];
    for (int64_t first = begin; first < end; first += kBlock) {
      const int64_t count = std::min(kBlock, end - first);
      for (int64_t i = 0; i < count; ++i) {  // vectorized
        a_raw[i] = unclamped_code(ap[first + i], sa, a_zp);
        b_raw[i] = unclamped_code(bp[first + i], sb, b_zp);
      }
      for (int64_t i = 0; i < count; ++i) {
        bool a_in, b_in;
        const float a_q = saturate(a_raw[i], low, high, &a_in), b_q = saturate(b_raw[i], low, high, &b_in);
        const auto index = static_cast<uint16_t>(static_cast<int64_t>(a_q - low) * codes + static_cast<int64_t>(b_q - low));
        pp[first + i] = index;
        ip[first + i] = static_cast<uint8_t>(a_in | (b_in << 1));
        op[first + i] = tp[index];
      }
    }
  });
  return {out, pair, inside};
}

// Gradients of pair_lookup: grad * grad_table[pair] * factor where that input did not clamp,
// for a (grad_a table, a_factor = 1 / a_scale) and b. Returns [grad_a, grad_b] float32.
std::vector<at::Tensor> pair_lookup_backward(at::Tensor grad, at::Tensor pair, at::Tensor inside,
                                                at::Tensor grad_a_table, at::Tensor grad_b_table,
                                                double a_factor, double b_factor) {
  const auto g = grad.to(at::kFloat).contiguous();
  const auto ga_table = grad_a_table.to(at::kFloat).contiguous(), gb_table = grad_b_table.to(at::kFloat).contiguous();
  TORCH_CHECK(pair.scalar_type() == at::kUInt16 && pair.numel() == g.numel() && inside.numel() == g.numel(),
              "pair_lookup_backward: expects pair_lookup's pair and inside");
  auto grad_a = at::empty_like(g), grad_b = at::empty_like(g);
  const float* gp = g.data_ptr<float>();
  const uint16_t* pp = pair.data_ptr<uint16_t>();
  const uint8_t* ip = inside.data_ptr<uint8_t>();
  const float* gat = ga_table.data_ptr<float>();
  const float* gbt = gb_table.data_ptr<float>();
  float* ga = grad_a.data_ptr<float>();
  float* gb = grad_b.data_ptr<float>();
  const float fa = static_cast<float>(a_factor), fb = static_cast<float>(b_factor);
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      ga[i] = (ip[i] & 1) ? gp[i] * gat[pp[i]] * fa : 0.0f;
      gb[i] = (ip[i] & 2) ? gp[i] * gbt[pp[i]] * fb : 0.0f;
    }
  });
  return {grad_a, grad_b};
}

}  // namespace nnaqat
