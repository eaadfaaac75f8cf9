// Python bindings of the plugin's compiled kernels: the extension nnaqat._kernels (setup.py), built
// from the emulated NNA's kernels (nnaqat/nna/csrc) and S8BQAT's (nnaqat/quant/csrc).

#include <torch/extension.h>

#include <vector>

namespace nnaqat {
std::vector<torch::Tensor> lstm_forward(torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                        torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                        torch::Tensor, std::vector<int64_t>, std::vector<double>, bool);
std::vector<torch::Tensor> lstm_backward(torch::Tensor, torch::Tensor, torch::Tensor, std::vector<torch::Tensor>,
                                         torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                         torch::Tensor, torch::Tensor, std::vector<int64_t>, std::vector<double>);
std::vector<torch::Tensor> quantize_codes(torch::Tensor, torch::Tensor, int64_t, int64_t, int64_t);
std::vector<torch::Tensor> requantize_codes(torch::Tensor, torch::Tensor, torch::Tensor, int64_t, int64_t, int64_t,
                                            int64_t, bool);
std::vector<torch::Tensor> add_codes(torch::Tensor, torch::Tensor, int64_t, int64_t, int64_t, std::vector<int64_t>,
                                     int64_t, int64_t, int64_t);
std::vector<torch::Tensor> accumulate_epilogue(torch::Tensor, torch::Tensor, int64_t, bool);
std::vector<torch::Tensor> linear_codes(torch::Tensor, torch::Tensor, int64_t, bool, torch::Tensor, torch::Tensor,
                                        int64_t, int64_t, int64_t, bool);
torch::Tensor linear_codes_backward(torch::Tensor, torch::Tensor, torch::Tensor);
torch::Tensor masked_scale(torch::Tensor, torch::Tensor, int64_t, torch::Tensor);
torch::Tensor masked_divide(torch::Tensor, torch::Tensor, int64_t, torch::Tensor);
std::vector<torch::Tensor> pair_lookup(torch::Tensor, torch::Tensor, double, int64_t, double, int64_t, int64_t,
                                       torch::Tensor);
std::vector<torch::Tensor> pair_lookup_backward(torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                                torch::Tensor, double, double);
at::Tensor codebook_snap(at::Tensor, at::Tensor, at::Tensor);
std::vector<torch::Tensor> mracos_pull(torch::Tensor, torch::Tensor, torch::Tensor, double, double);
}  // namespace nnaqat

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled kernels of nnaqat: the emulated NNA's integer LSTM recurrence and one-pass "
            "element-wise operators (nnaqat.nna); S8BQAT's codebook snap and MRACos pull (nnaqat.quant)";
  m.def("lstm_forward", &nnaqat::lstm_forward, "integer LSTM recurrence, no gradient (lstm.cpp)");
  m.def("lstm_backward", &nnaqat::lstm_backward, "straight-through backward pass of lstm_forward");
  m.def("quantize_codes", &nnaqat::quantize_codes, "ops.quantize's codes and clamp mask");
  m.def("requantize_codes", &nnaqat::requantize_codes, "ops.requantize_output's codes and clamp mask");
  m.def("add_codes", &nnaqat::add_codes, "ops.add's codes and clamp mask");
  m.def("accumulate_epilogue", &nnaqat::accumulate_epilogue, "ops.accumulate after its matmul");
  m.def("linear_codes", &nnaqat::linear_codes, "ops.linear_codes after its matmul");
  m.def("linear_codes_backward", &nnaqat::linear_codes_backward, "gradient of linear_codes' epilogue");
  m.def("masked_scale", &nnaqat::masked_scale, "grad * factor[channel] where inside, float64");
  m.def("masked_divide", &nnaqat::masked_divide, "grad / divisor[channel] where inside, float32");
  m.def("pair_lookup", &nnaqat::pair_lookup, "NnaAddTanh through its pair table");
  m.def("pair_lookup_backward", &nnaqat::pair_lookup_backward, "gradients of pair_lookup");
  m.def("codebook_snap", &nnaqat::codebook_snap, "weights onto their nearest codebook level, times the scale");
  m.def("mracos_pull", &nnaqat::mracos_pull, "S8BQAT's MRACos gradient and penalty sum in one pass");
}
