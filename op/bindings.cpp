// Python bindings of the fused CUDA kernels (upfirdn2d, bias + activation).
#include <torch/extension.h>

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                          int64_t pad_y0, int64_t pad_y1);

at::Tensor fused_bias_act_cuda(const at::Tensor& x, const at::Tensor& bias, int64_t act, double alpha,
                               double gain);

at::Tensor fused_bias_act_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                        const at::Tensor& bias, int64_t act, double alpha, double gain);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d_cuda,
        "upfirdn2d(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1)");
  m.def("fused_bias_act", &fused_bias_act_cuda, "fused_bias_act(x, bias, act, alpha, gain)");
  m.def("fused_bias_act_backward", &fused_bias_act_backward_cuda,
        "fused_bias_act_backward(grad, x, bias, act, alpha, gain) -> grad of x");
}
