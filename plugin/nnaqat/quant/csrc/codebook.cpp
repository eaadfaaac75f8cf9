// S8BQAT's per-weight work in one pass each (nnaqat/quant/quantizers.py): the snap of the
// weights onto their codebook and the MRACos pull towards it.
//
// In torch operators each is a dozen passes over every quantized weight (divide by the scale,
// compare with each threshold, gather the level, the gap, the cosine...), which cost S8BQAT
// about a tenth of an fp32 training step. The definitions are nnaqat.quant.codebook.nearest_index
// and nnaqat.quant.mracos.mracos_and_grad; the tests hold these kernels to them.
//
// Weights are (C, ...) float32 with one scale for the tensor or one per output channel (the
// first axis); levels are the codebook's sorted values in int8 units, as float32.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace nnaqat {
namespace {

constexpr int64_t kGrain = 32768;
constexpr double kPi = 3.14159265358979323846;
constexpr size_t kCountedThresholds = 15;  // up to 4-bit codebooks

// A sorted codebook: its decision thresholds (midpoints, float32 as nearest_index computes them)
// and, per level, the gaps above and below it (the outermost gap beyond either end).
struct Codebook {
  std::vector<float> levels, thresholds, gap_above, gap_below;

  explicit Codebook(const at::Tensor& values) {
    const auto v = values.to(at::kFloat).contiguous();
    levels.assign(v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
    const auto n = static_cast<int64_t>(levels.size());
    TORCH_CHECK(n >= 1, "codebook: no levels");
    for (int64_t j = 0; j + 1 < n; ++j) thresholds.push_back((levels[j + 1] + levels[j]) / 2.0f);
    if (n < 2) return;
    for (int64_t j = 0; j < n; ++j) {
      gap_above.push_back(levels[std::min(j + 1, n - 1)] - levels[std::min(j, n - 2)]);
      gap_below.push_back(levels[std::max(j, int64_t(1))] - levels[std::max(j - 1, int64_t(0))]);
    }
  }

  // The nearest level's index, the number of thresholds at or below w (a weight on a threshold
  // goes to the upper level): counted for small codebooks, by binary search for large ones.
  int64_t nearest(float w) const {
    if (thresholds.size() > kCountedThresholds)
      return std::upper_bound(thresholds.begin(), thresholds.end(), w) - thresholds.begin();
    int64_t index = 0;
    for (const float t : thresholds) index += w >= t;
    return index;
  }
};

// Sums f(begin, end, scale) over the runs of weights sharing one scale, in parallel.
template <typename F>
double sum_over_channels(const at::Tensor& weights, const at::Tensor& scale, const F& f) {
  const int64_t channels = scale.numel(), numel = weights.numel();
  TORCH_CHECK(channels == 1 || (weights.dim() >= 1 && weights.size(0) == channels), "codebook: ", channels,
              " scales for weights of shape ", weights.sizes());
  const float* sp = scale.data_ptr<float>();
  if (channels == 1) {
    return at::parallel_reduce(
        0, numel, kGrain, 0.0, [&](int64_t begin, int64_t end, double sum) { return sum + f(begin, end, sp[0]); },
        std::plus<double>());
  }
  const int64_t inner = numel / channels;
  return at::parallel_reduce(
      0, channels, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)), 0.0,
      [&](int64_t begin, int64_t end, double sum) {
        for (int64_t c = begin; c < end; ++c) sum += f(c * inner, (c + 1) * inner, sp[c]);
        return sum;
      },
      std::plus<double>());
}

}  // namespace

// CodebookSnap's forward value: levels[nearest(w / scale)] * scale, float32.
at::Tensor codebook_snap(at::Tensor weights, at::Tensor scale, at::Tensor levels) {
  const auto w = weights.to(at::kFloat).contiguous();
  const auto s = scale.to(at::kFloat).contiguous();
  const Codebook book(levels);
  auto out = at::empty_like(w);
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  sum_over_channels(w, s, [&](int64_t begin, int64_t end, float channel_scale) {
    for (int64_t i = begin; i < end; ++i) op[i] = book.levels[book.nearest(wp[i] / channel_scale)] * channel_scale;
    return 0.0;
  });
  return out;
}

// The MRACos pull of S8BQAT's penalty: for u = w / scale, R(u) and the gradient of
// factor * R(w / scale) with respect to w, i.e. factor * dR/du / scale (mracos_and_grad's
// closed form). Channels whose scale is not above `floor` (an all-zero row) are not pulled.
// Returns [grad float32 (weights' shape), sum of R over the pulled weights float64 ()].
std::vector<at::Tensor> mracos_pull(at::Tensor weights, at::Tensor scale, at::Tensor levels, double factor,
                                    double floor) {
  const auto w = weights.to(at::kFloat).contiguous();
  const auto s = scale.to(at::kFloat).contiguous();
  const Codebook book(levels);
  TORCH_CHECK(book.levels.size() >= 2, "MRACos needs at least 2 centroids");
  auto grad = at::empty_like(w);
  const float* wp = w.data_ptr<float>();
  float* gp = grad.data_ptr<float>();
  const float pi = static_cast<float>(kPi), f = static_cast<float>(factor);
  const double total = sum_over_channels(w, s, [&](int64_t begin, int64_t end, float channel_scale) {
    if (!(channel_scale > floor)) {
      std::fill(gp + begin, gp + end, 0.0f);
      return 0.0;
    }
    double sum = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const float u_w = wp[i] / channel_scale;
      const int64_t index = book.nearest(u_w);
      const float e = u_w - book.levels[index];
      const float g = e < 0 ? book.gap_below[index] : book.gap_above[index];
      const float u = e / g;
      const float angle = std::min(std::max(u, -0.5f), 0.5f) * pi;
      sum += static_cast<double>(1.0f - std::cos(angle) + pi * std::max(std::fabs(u) - 0.5f, 0.0f));
      gp[i] = std::sin(angle) * pi / g / channel_scale * f;
    }
    return sum;
  });
  return {grad, at::scalar_tensor(total, at::TensorOptions().dtype(at::kDouble))};
}

}  // namespace nnaqat
