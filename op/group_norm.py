"""GroupNorm, optionally after a per-channel bias and before SiLU, in one pass over the data.

NCSN++ normalises about 90 feature maps per forward, most of them right after adding the noise
embedding and right before SiLU. In eager PyTorch that is four passes (bias add, statistics,
normalisation, activation), and on channels_last tensors the library GroupNorm also converts the
layout twice. ``group_norm_act`` does it as two Triton kernels on channels_last CUDA tensors
(per-channel statistics; then normalisation and activation) where no gradient is recorded, and as
its torch twin, ``group_norm_channelwise``, everywhere else and while torch.compile traces.

Both compute the statistics per channel in fp32 (fp64 for fp64 input) and combine them exactly
per group (mean of the channel means; mean of the channel variances plus the variance of the
means), so they give the same numbers to fp32 rounding.
"""

import torch

from op._extension import triton_kernels, use_inference_kernels


def group_scale_shift(mean, var, groups, weight, bias, eps, pre_bias=None):
    """Per-channel (scale, shift) [N, C] such that x * scale + shift is GroupNorm(x + pre_bias).

    Args:
        mean, var: per-channel mean and population variance [N, C] of x (fp32 or fp64).
        groups: number of groups (dividing C).
        weight, bias: GroupNorm's affine parameters [C].
        eps: added to the group variance.
        pre_bias: optional per-channel bias [N, C] added to x before the normalisation.
    """
    n, c = mean.shape
    dtype = mean.dtype
    if pre_bias is not None:
        pre_bias = pre_bias.to(dtype).reshape(n, groups, -1)
    means = mean.view(n, groups, -1) + (0 if pre_bias is None else pre_bias)
    group_mean = means.mean(dim=2, keepdim=True)
    group_var = var.view(n, groups, -1).mean(dim=2, keepdim=True) + (means - group_mean).square().mean(
        dim=2, keepdim=True
    )
    scale = torch.rsqrt(group_var + eps) * weight.to(dtype).view(1, groups, -1)
    shift = bias.to(dtype).view(1, groups, -1) - group_mean * scale
    if pre_bias is not None:
        shift = shift + pre_bias * scale
    return scale.reshape(n, c), shift.reshape(n, c)


def group_norm_channelwise(x, groups, weight, bias, eps, silu=False, pre_bias=None):
    """SiLU (if silu) of F.group_norm(x + pre_bias[:, :, None, None]) in torch, from per-channel
    statistics, computed in fp32 (fp64 for fp64 x) and returned in x's dtype.

    Reducing over the pixels of one channel reads channels_last memory with the channels side by
    side (a reduction over a whole group would read it with a stride of C); the normalisation is
    then one per-channel scale and shift, which a compiler fuses with what follows.
    """
    n, c = x.shape[:2]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    var, mean = torch.var_mean(x.to(compute), dim=tuple(range(2, x.dim())), correction=0)
    scale, shift = group_scale_shift(mean, var, groups, weight, bias, eps, pre_bias)
    shape = (n, c) + (1,) * (x.dim() - 2)
    y = x.to(compute) * scale.view(shape) + shift.view(shape)
    return (torch.nn.functional.silu(y) if silu else y).to(x.dtype)


def group_norm_act(x, groups, weight, bias, eps, silu=False, pre_bias=None):
    """SiLU (if silu) of GroupNorm(x + pre_bias[:, :, None, None]), in x's dtype and layout.

    Args:
        x: [N, C, H, W] input.
        groups, weight, bias, eps: GroupNorm's groups (dividing C), affine parameters [C] and eps.
        silu: apply SiLU to the result.
        pre_bias: optional per-channel bias [N, C] added to x first (never materialised).

    Triton kernels where op's use_inference_kernels(x) (no gradients), else group_norm_channelwise.
    """
    if use_inference_kernels(x):
        kernels = triton_kernels("group_norm_triton")
        return kernels.group_norm_act(x, groups, weight, bias, eps, silu, pre_bias)
    return group_norm_channelwise(x, groups, weight, bias, eps, silu, pre_bias)
