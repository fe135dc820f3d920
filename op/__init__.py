"""Fused ops for NCSN++: upfirdn2d, bias + activation and GroupNorm + bias + SiLU, as GPU kernels
with a pure-torch twin.

The CUDA kernels (NCHW tensors) are compiled with torch.utils.cpp_extension (ninja) the first time a
CUDA tensor reaches them and cached by torch; nothing is compiled at import. The Triton kernels
(channels_last CUDA tensors: op.group_norm_triton, op.channels_last_triton) need no build step.
Set ISCS_OPS_FORCE_TORCH=1 to use the pure-torch path everywhere.
"""

from op._extension import FORCE_TORCH_ENV, load_extension, no_autocast, use_cuda_kernels
from op.fused_act import ACTIVATIONS, fused_bias_act, fused_leaky_relu
from op.upfirdn2d import upfirdn2d

__all__ = [
    "ACTIVATIONS",
    "FORCE_TORCH_ENV",
    "fused_bias_act",
    "fused_leaky_relu",
    "load_extension",
    "no_autocast",
    "upfirdn2d",
    "use_cuda_kernels",
]
