// Bias + activation (and its backward) on CUDA for fp32, fp64, fp16 and bf16, in fp32 (fp64) arithmetic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "launch.cuh"

namespace {

// Activation codes match op/fused_act.py ACTIVATIONS: 0 linear, 1 relu, 2 lrelu, 3 silu, 4 elu.
template <typename acc_t>
__device__ __forceinline__ acc_t activate(acc_t v, int act, acc_t alpha) {
  switch (act) {
    case 1: return v > acc_t(0) ? v : acc_t(0);
    case 2: return v > acc_t(0) ? v : v * alpha;
    case 3: return v / (acc_t(1) + exp(-v));
    case 4: return v > acc_t(0) ? v : alpha * (exp(v) - acc_t(1));
    default: return v;
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t activate_grad(acc_t v, int act, acc_t alpha) {
  switch (act) {
    case 1: return v > acc_t(0) ? acc_t(1) : acc_t(0);
    case 2: return v > acc_t(0) ? acc_t(1) : alpha;
    case 3: {
      const acc_t s = acc_t(1) / (acc_t(1) + exp(-v));
      return s * (acc_t(1) + v * (acc_t(1) - s));
    }
    case 4: return v > acc_t(0) ? acc_t(1) : alpha * exp(v);
    default: return acc_t(1);
  }
}

// x, grad and the result share one dense layout; the channel of offset i is (i / channel_stride) % channels.
template <typename scalar_t, typename acc_t, bool backward>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias,
                                const scalar_t* __restrict__ grad, scalar_t* __restrict__ out,
                                int64_t total, int64_t channels, int64_t channel_stride, int act,
                                acc_t alpha, acc_t gain) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    acc_t v = static_cast<acc_t>(x[i]);
    if (bias != nullptr) v += static_cast<acc_t>(bias[(i / channel_stride) % channels]);
    if (backward) {
      out[i] = static_cast<scalar_t>(static_cast<acc_t>(grad[i]) * gain * activate_grad(v, act, alpha));
    } else {
      out[i] = static_cast<scalar_t>(activate(v, act, alpha) * gain);
    }
  }
}

at::MemoryFormat dense_format(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

at::Tensor launch(const at::Tensor& x_in, const at::Tensor& bias_in, const at::Tensor* grad_in,
                  int64_t act, double alpha, double gain) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() >= 2, "fused_bias_act: x must be a CUDA tensor with >= 2 dims");
  TORCH_CHECK(bias_in.numel() == 0 || (bias_in.dim() == 1 && bias_in.size(0) == x_in.size(1)),
              "fused_bias_act: bias must have x.size(1) entries");
  TORCH_CHECK(act >= 0 && act <= 4, "fused_bias_act: unknown activation code");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat format = dense_format(x_in);
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor bias = bias_in.to(x.scalar_type()).contiguous();
  at::Tensor grad;
  if (grad_in != nullptr) {
    TORCH_CHECK(grad_in->sizes() == x_in.sizes(), "fused_bias_act: grad and x differ in shape");
    grad = grad_in->to(x.scalar_type()).contiguous(format);
  }
  at::Tensor out = at::empty_like(x, x.options().memory_format(format));
  const int64_t total = x.numel();
  if (total == 0) return out;
  const int64_t channels = x.size(1);
  const int64_t channel_stride = format == at::MemoryFormat::ChannelsLast ? 1 : x.numel() / (x.size(0) * channels);

  const int threads = 256;
  const int blocks = iscs_ops::grid_size(total, threads, x.get_device());
  auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_bias_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bias_ptr = bias.numel() > 0 ? bias.data_ptr<scalar_t>() : nullptr;
    if (grad_in != nullptr) {
      bias_act_kernel<scalar_t, acc_t, true><<<blocks, threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), bias_ptr, grad.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total,
          channels, channel_stride, static_cast<int>(act), static_cast<acc_t>(alpha), static_cast<acc_t>(gain));
    } else {
      bias_act_kernel<scalar_t, acc_t, false><<<blocks, threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), bias_ptr, nullptr, out.data_ptr<scalar_t>(), total, channels,
          channel_stride, static_cast<int>(act), static_cast<acc_t>(alpha), static_cast<acc_t>(gain));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

at::Tensor fused_bias_act_cuda(const at::Tensor& x, const at::Tensor& bias, int64_t act, double alpha,
                               double gain) {
  return launch(x, bias, nullptr, act, alpha, gain);
}

at::Tensor fused_bias_act_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                        const at::Tensor& bias, int64_t act, double alpha, double gain) {
  return launch(x, bias, &grad, act, alpha, gain);
}
