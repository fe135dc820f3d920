// Launch helpers shared by the fused kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace iscs_ops {

// Enough blocks to fill the device several times over; each kernel's grid-stride loop covers the rest.
inline int grid_size(int64_t total, int threads, int device) {
  int multiprocessors = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
  const int64_t wanted = (total + threads - 1) / threads;
  return static_cast<int>(std::min<int64_t>(wanted, static_cast<int64_t>(multiprocessors) * 32));
}

}  // namespace iscs_ops
