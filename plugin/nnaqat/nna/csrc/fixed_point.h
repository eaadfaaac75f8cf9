// The NNA's fixed-point primitives on scalars, shared by the compiled kernels.
//
// Each function is the integer definition in nnaqat/nna/reference.py (NumPy, the ground truth)
// and in nnaqat/nna/ops.py; the tests hold the kernels to the reference bit for bit. Compile
// without FMA contraction (-ffp-contract=off): float products must round as written.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace nnaqat {

enum Rounding : int64_t { kSingle = 0, kDouble = 1, kTosa = 2, kFp32Rne = 3 };  // spec.ROUNDINGS order

constexpr int64_t kInt32Min = -(int64_t(1) << 31);
constexpr int64_t kInt32Max = (int64_t(1) << 31) - 1;

inline double low_of(int64_t bits) { return -std::ldexp(1.0, static_cast<int>(bits - 1)); }
inline double high_of(int64_t bits) { return std::ldexp(1.0, static_cast<int>(bits - 1)) - 1; }

// floor(x / 2**s), s >= 0: an arithmetic right shift (two's complement, as GCC defines it).
inline int64_t floor_shift(int64_t x, int64_t s) { return x >> s; }

// gemmlowp's SaturatingRoundingDoublingHighMul on int32 values.
inline int64_t srdhm(int64_t a, int64_t b) {
  if (a == kInt32Min && b == kInt32Min) return kInt32Max;
  return floor_shift(a * b + (int64_t(1) << 30), 31);
}

// M0 * 2**(shift - 31) as float32 (fp32_rne's multiplier).
inline float float32_multiplier(int64_t m, int64_t s) {
  return static_cast<float>(std::ldexp(static_cast<double>(m), static_cast<int>(s - 31)));
}

// reference.requantize: acc * M0 * 2**(shift - 31), rounded by the mode (shift <= 22). A
// template, so that a loop over elements is compiled for one mode with no switch inside.
template <int64_t kRounding>
[[gnu::always_inline]] inline int64_t requantize(int64_t acc, int64_t m, int64_t s) {
  static_assert(kRounding >= kSingle && kRounding <= kFp32Rne, "unknown rounding");
  if constexpr (kRounding == kSingle) {
    const int64_t total = 31 - s;
    return floor_shift(acc * m + (int64_t(1) << (total - 1)), total);
  } else if constexpr (kRounding == kDouble) {
    const int64_t shifted = std::clamp(acc * (int64_t(1) << std::max<int64_t>(s, 0)), kInt32Min, kInt32Max);
    const int64_t high = srdhm(shifted, m);
    const int64_t right = std::max<int64_t>(-s, 0);
    const int64_t magnitude = floor_shift((high < 0 ? -high : high) + ((int64_t(1) << right) >> 1), right);
    return high < 0 ? -magnitude : magnitude;  // half away from zero
  } else if constexpr (kRounding == kTosa) {
    const int64_t total = 31 - s;
    const int64_t correction = total > 31 ? (acc >= 0 ? (int64_t(1) << 30) : -(int64_t(1) << 30)) : 0;
    return floor_shift(acc * m + (int64_t(1) << (total - 1)) + correction, total);
  } else {  // fp32_rne: float32 product, half to even
    return static_cast<int64_t>(std::rint(static_cast<float>(acc) * float32_multiplier(m, s)));
  }
}

// Returns f(std::integral_constant<int64_t, rounding>{}): a loop written as a generic lambda
// is compiled once per mode and chosen here, outside it.
template <typename F>
decltype(auto) with_rounding(int64_t rounding, F&& f) {
  switch (rounding) {
    case kSingle: return f(std::integral_constant<int64_t, kSingle>{});
    case kDouble: return f(std::integral_constant<int64_t, kDouble>{});
    case kTosa: return f(std::integral_constant<int64_t, kTosa>{});
    default: return f(std::integral_constant<int64_t, kFp32Rne>{});
  }
}

// reference.requantize_output before saturation: the rounded value plus the zero point, which
// fp32_rne may add to the float product before rounding instead.
template <int64_t kRounding>
[[gnu::always_inline]] inline int64_t requantized_code(int64_t acc, int64_t m, int64_t s, int64_t zero_point,
                                                       bool zero_point_before_rounding) {
  if (kRounding == kFp32Rne && zero_point_before_rounding) {
    const float product = static_cast<float>(acc) * float32_multiplier(m, s);
    return static_cast<int64_t>(std::rint(product + static_cast<float>(zero_point)));
  }
  return requantize<kRounding>(acc, m, s) + zero_point;
}

// ops.mul_rounded: a * b * scale (scale a power of two) in float64, rounded by the mode.
template <int64_t kRounding>
[[gnu::always_inline]] inline double mul_rounded(double a, double b, double scale) {
  const double scaled = a * b * scale;
  if constexpr (kRounding == kFp32Rne) return std::rint(scaled);
  else if constexpr (kRounding == kDouble) return std::copysign(std::floor(std::fabs(scaled) + 0.5), scaled) + 0.0;
  else return std::floor(scaled + 0.5);
}

// ops.quantize before its clamp: round_half_even(x / scale) + zero_point in float32, as ONNX
// QuantizeLinear (float arithmetic only: loops of it vectorize).
inline float unclamped_code(float x, float scale, float zero_point) { return std::rint(x / scale) + zero_point; }

// Clamp to [low, high], and whether the value was inside (the clipped STE's mask).
template <typename Number>
inline Number saturate(Number value, Number low, Number high, bool* inside) {
  *inside = value >= low && value <= high;
  return std::min(std::max(value, low), high);
}

// ops.quantize: the clamped code; sets `inside` (the clamp was inactive).
inline float quantize(float x, float scale, float zero_point, float low, float high, bool* inside) {
  return saturate(unclamped_code(x, scale, zero_point), low, high, inside);
}

// reference.requantize_output: the requantized code saturated to [low, high]; sets `inside`.
template <int64_t kRounding>
[[gnu::always_inline]] inline double output_code(int64_t acc, int64_t m, int64_t s, int64_t zero_point,
                                                 bool zero_point_before_rounding, double low, double high,
                                                 bool* inside) {
  return saturate(static_cast<double>(requantized_code<kRounding>(acc, m, s, zero_point, zero_point_before_rounding)),
                  low, high, inside);
}

// An accumulator total (an exact integer in float64) into `bits` bits: saturated to [low,
// high] (setting `inside`) or wrapped around in two's complement (`inside` always true);
// span = 2**bits.
inline double overflow(double total, double low, double high, double span, bool saturate_it, bool* inside) {
  if (saturate_it) return saturate(total, low, high, inside);
  *inside = true;
  const double wrapped = std::fmod(total - low, span);
  return (wrapped < 0 ? wrapped + span : wrapped) + low;
}

// The same in int64, the mode a mask (-1 saturate, 0 wrap) applied by a select rather than a
// branch, so that a loop of it vectorizes.
inline int64_t overflow_select(int64_t total, int64_t low, int64_t high, int64_t span, int64_t saturate_mask,
                               bool* inside) {
  const int64_t clamped = std::min(std::max(total, low), high);
  const int64_t wrapped = ((total - low) & (span - 1)) + low;
  *inside = !saturate_mask || (total >= low && total <= high);
  return (clamped & saturate_mask) | (wrapped & ~saturate_mask);
}

}  // namespace nnaqat
