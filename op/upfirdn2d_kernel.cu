// upfirdn2d on CUDA for fp32, fp64, fp16 and bf16: one thread per output sample, fp32 (fp64) sums.
// NCSN++'s cases (4x4 kernel; up 2, down 2, or plain filtering) on dense inputs that 32-bit offsets
// can address take a kernel with compile-time factors and taps in shared memory; the rest a generic one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <limits>
#include <type_traits>

#include "launch.cuh"

namespace {

struct Geometry {
  int64_t channels, in_h, in_w, out_h, out_w;
  int64_t x_sn, x_sc, x_sh, x_sw;
  int kernel_h, kernel_w, up_x, up_y, down_x, down_y, pad_x0, pad_y0;
  bool channels_last;
};

// Smallest t >= 0 for which base + t is a multiple of up: the first kernel tap that meets a sample.
__device__ __forceinline__ int first_tap(int64_t base, int up) {
  int r = static_cast<int>(base % up);
  if (r < 0) r += up;
  return r == 0 ? 0 : up - r;
}

template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ kernel,
                                 scalar_t* __restrict__ out, Geometry g, int64_t total) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    // The output is dense in its memory format, so i is its offset; unravel it in that order.
    int64_t rest = i, n, c, oy, ox;
    if (g.channels_last) {
      c = rest % g.channels; rest /= g.channels;
      ox = rest % g.out_w; rest /= g.out_w;
      oy = rest % g.out_h; n = rest / g.out_h;
    } else {
      ox = rest % g.out_w; rest /= g.out_w;
      oy = rest % g.out_h; rest /= g.out_h;
      c = rest % g.channels; n = rest / g.channels;
    }
    const scalar_t* plane = x + n * g.x_sn + c * g.x_sc;
    const int64_t base_y = oy * g.down_y - g.pad_y0;
    const int64_t base_x = ox * g.down_x - g.pad_x0;
    const int64_t span_y = g.in_h * g.up_y;
    const int64_t span_x = g.in_w * g.up_x;
    acc_t acc = acc_t(0);
    for (int ty = first_tap(base_y, g.up_y); ty < g.kernel_h; ty += g.up_y) {
      const int64_t my = base_y + ty;
      if (my < 0 || my >= span_y) continue;
      const scalar_t* row = plane + (my / g.up_y) * g.x_sh;
      const acc_t* taps = kernel + static_cast<int64_t>(g.kernel_h - 1 - ty) * g.kernel_w;
      for (int tx = first_tap(base_x, g.up_x); tx < g.kernel_w; tx += g.up_x) {
        const int64_t mx = base_x + tx;
        if (mx < 0 || mx >= span_x) continue;
        acc += static_cast<acc_t>(row[(mx / g.up_x) * g.x_sw]) * taps[g.kernel_w - 1 - tx];
      }
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

// Output sample i of a dense [N, C, OH, OW] (or channels_last) tensor reads the dense input through
// compile-time factors; all offsets are 32-bit, which the host checks.
struct FixedGeometry {
  int channels, in_h, in_w, out_h, out_w, pad_x0, pad_y0;
};

// Input index of position m of the upsampled axis (input size n), or -1 for an inserted zero or the padding.
template <int UP>
__device__ __forceinline__ int source_index(int m, int n) {
  if (UP > 1 && m % UP != 0) return -1;
  const int i = m / UP;
  return i >= 0 && i < n ? i : -1;
}

template <typename scalar_t, typename acc_t, int UP, int DOWN, int KH, int KW, bool CHANNELS_LAST>
__global__ void upfirdn2d_fixed_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ kernel,
                                       scalar_t* __restrict__ out, FixedGeometry g, int64_t total) {
  __shared__ acc_t taps[KH * KW];
  // Flipped once here so that the loops below correlate: tap (ty, tx) weights input row base_y + ty.
  for (int t = threadIdx.x; t < KH * KW; t += blockDim.x) taps[t] = kernel[KH * KW - 1 - t];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i64 = first; i64 < total; i64 += stride) {
    int rest = static_cast<int>(i64), c, ox, oy, plane, row_stride, col_stride;
    if (CHANNELS_LAST) {
      c = rest % g.channels; rest /= g.channels;
      ox = rest % g.out_w; rest /= g.out_w;
      oy = rest % g.out_h; rest /= g.out_h;
      plane = rest * g.in_h * g.in_w * g.channels + c;
      row_stride = g.in_w * g.channels;
      col_stride = g.channels;
    } else {
      ox = rest % g.out_w; rest /= g.out_w;
      oy = rest % g.out_h; rest /= g.out_h;
      plane = rest * g.in_h * g.in_w;
      row_stride = g.in_w;
      col_stride = 1;
    }
    const int base_y = oy * DOWN - g.pad_y0;
    const int base_x = ox * DOWN - g.pad_x0;
    acc_t acc = acc_t(0);
#pragma unroll
    for (int ty = 0; ty < KH; ++ty) {
      const int iy = source_index<UP>(base_y + ty, g.in_h);
      if (iy < 0) continue;
      const scalar_t* row = x + plane + iy * row_stride;
#pragma unroll
      for (int tx = 0; tx < KW; ++tx) {
        const int ix = source_index<UP>(base_x + tx, g.in_w);
        if (ix < 0) continue;
        acc += static_cast<acc_t>(row[ix * col_stride]) * taps[ty * KW + tx];
      }
    }
    out[i64] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t, int UP, int DOWN>
void launch_fixed(const at::Tensor& x, const at::Tensor& taps, at::Tensor& out, const FixedGeometry& g,
                  bool channels_last, int blocks, int threads, cudaStream_t stream) {
  auto launch = [&](auto layout) {
    constexpr bool kChannelsLast = decltype(layout)::value;
    upfirdn2d_fixed_kernel<scalar_t, acc_t, UP, DOWN, 4, 4, kChannelsLast><<<blocks, threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), taps.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), g, out.numel());
  };
  if (channels_last) {
    launch(std::true_type{});
  } else {
    launch(std::false_type{});
  }
}

// Which compile-time (up, down) pair serves a call with a 4x4 kernel, equal factors on both axes:
// 0 none, 1 filter only, 2 up 2, 3 down 2.
int fixed_case(int64_t kernel_h, int64_t kernel_w, int64_t up_x, int64_t up_y, int64_t down_x,
               int64_t down_y) {
  if (kernel_h != 4 || kernel_w != 4 || up_x != up_y || down_x != down_y) return 0;
  if (up_x == 1 && down_x == 1) return 1;
  if (up_x == 2 && down_x == 1) return 2;
  if (up_x == 1 && down_x == 2) return 3;
  return 0;
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                          int64_t pad_y0, int64_t pad_y1) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, "upfirdn2d: x must be a 4-D CUDA tensor");
  TORCH_CHECK(kernel.dim() == 2 && kernel.numel() > 0, "upfirdn2d: kernel must be a non-empty 2-D tensor");
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: factors must be >= 1");
  const c10::cuda::CUDAGuard guard(x.device());

  const int64_t n = x.size(0), channels = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t kernel_h = kernel.size(0), kernel_w = kernel.size(1);
  const int64_t span_h = in_h * up_y + pad_y0 + pad_y1 - kernel_h;
  const int64_t span_w = in_w * up_x + pad_x0 + pad_x1 - kernel_w;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, "upfirdn2d: the padded input is smaller than the kernel");
  const int64_t out_h = span_h / down_y + 1, out_w = span_w / down_x + 1;

  const bool channels_last = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({n, channels, out_h, out_w},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
  const int64_t total = out.numel();
  if (total == 0) return out;
  const at::Tensor taps = kernel.to(x.device(), at::toOpMathType(x.scalar_type())).contiguous();

  const int fixed = fixed_case(kernel_h, kernel_w, up_x, up_y, down_x, down_y);
  const at::MemoryFormat format =
      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const int64_t limit = std::numeric_limits<int32_t>::max();
  const bool small_pads = std::abs(pad_x0) < 1024 && std::abs(pad_y0) < 1024;
  if (fixed != 0 && x.numel() < limit && total < limit && small_pads) {
    const at::Tensor dense = x.contiguous(format);
    FixedGeometry f;
    f.channels = static_cast<int>(channels);
    f.in_h = static_cast<int>(in_h);
    f.in_w = static_cast<int>(in_w);
    f.out_h = static_cast<int>(out_h); f.out_w = static_cast<int>(out_w);
    f.pad_x0 = static_cast<int>(pad_x0); f.pad_y0 = static_cast<int>(pad_y0);
    const int threads = 256;
    const int blocks = iscs_ops::grid_size(total, threads, x.get_device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda_fixed", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using launcher = void (*)(const at::Tensor&, const at::Tensor&, at::Tensor&, const FixedGeometry&, bool,
                                int, int, cudaStream_t);
      const launcher launchers[] = {launch_fixed<scalar_t, acc_t, 1, 1>, launch_fixed<scalar_t, acc_t, 2, 1>,
                                    launch_fixed<scalar_t, acc_t, 1, 2>};
      launchers[fixed - 1](dense, taps, out, f, channels_last, blocks, threads, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }

  Geometry g;
  g.channels = channels; g.in_h = in_h; g.in_w = in_w; g.out_h = out_h; g.out_w = out_w;
  g.x_sn = x.stride(0); g.x_sc = x.stride(1); g.x_sh = x.stride(2); g.x_sw = x.stride(3);
  g.kernel_h = static_cast<int>(kernel_h); g.kernel_w = static_cast<int>(kernel_w);
  g.up_x = static_cast<int>(up_x); g.up_y = static_cast<int>(up_y);
  g.down_x = static_cast<int>(down_x); g.down_y = static_cast<int>(down_y);
  g.pad_x0 = static_cast<int>(pad_x0); g.pad_y0 = static_cast<int>(pad_y0);
  g.channels_last = channels_last;

  const int threads = 256;
  const int blocks = iscs_ops::grid_size(total, threads, x.get_device());
  auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    upfirdn2d_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), taps.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}
