"""Bias addition and activation in one pass: out = act(x + bias) * gain.

The CUDA kernel (fp32, fp16, bf16, fp64) runs for CUDA tensors; the pure-torch path computes the
same function (in fp32 for 16-bit inputs, rounded once, as the kernel does) everywhere else.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from op._extension import load_extension, use_cuda_kernels


class Activation(NamedTuple):
    """One activation: its code in the CUDA kernel, its torch form f(v, alpha), default alpha and gain."""

    code: int
    fn: Callable
    alpha: float
    gain: float


ACTIVATIONS = {
    "linear": Activation(0, lambda v, alpha: v, 0.0, 1.0),
    "relu": Activation(1, lambda v, alpha: F.relu(v), 0.0, math.sqrt(2.0)),
    "lrelu": Activation(2, lambda v, alpha: F.leaky_relu(v, alpha), 0.2, math.sqrt(2.0)),
    "silu": Activation(3, lambda v, alpha: F.silu(v), 0.0, math.sqrt(2.0)),
    "elu": Activation(4, lambda v, alpha: F.elu(v, alpha), 1.0, 1.0),
}
"""Supported activations; default gains follow the StyleGAN2 convention (sqrt 2 for rectifiers)."""


def fused_bias_act(x: torch.Tensor, bias=None, act: str = "linear", alpha=None, gain=None) -> torch.Tensor:
    """act(x + bias) * gain in one pass.

    Args:
        x: [N, C, ...] float tensor (contiguous or channels_last for the CUDA kernel; others are copied).
        bias: optional [C] tensor added along dim 1 (cast to x's dtype).
        act: one of ACTIVATIONS: "linear", "relu", "lrelu", "silu", "elu".
        alpha: negative slope (lrelu) or scale (elu); None takes the activation's default.
        gain: output scale; None takes the activation's default.

    Returns:
        Tensor of x's shape and dtype. Differentiable once in x and bias on the CUDA path, to any
        order on the torch path.
    """
    spec = ACTIVATIONS.get(act)
    if spec is None:
        raise ValueError(f"fused_bias_act: unknown act {act!r}; accepted: {', '.join(ACTIVATIONS)}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise TypeError(f"fused_bias_act: x must be a floating tensor with at least 2 dims, got {x!r:.80}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != x.shape[1]):
        raise ValueError(
            f"fused_bias_act: bias must have shape [{x.shape[1]}] (x's dim 1), got {tuple(bias.shape)}"
        )
    alpha = spec.alpha if alpha is None else float(alpha)
    gain = spec.gain if gain is None else float(gain)
    if use_cuda_kernels(x):
        return _FusedBiasAct.apply(x, bias, spec.code, alpha, gain)
    return fused_bias_act_torch(x, bias, spec, alpha, gain)


def fused_leaky_relu(x: torch.Tensor, bias=None, negative_slope: float = 0.2, scale: float = math.sqrt(2.0)):
    """leaky_relu(x + bias, negative_slope) * scale (StyleGAN2's fused_leaky_relu); see fused_bias_act."""
    return fused_bias_act(x, bias, "lrelu", negative_slope, scale)


def fused_bias_act_torch(x, bias, spec: Activation, alpha: float, gain: float) -> torch.Tensor:
    """The pure-torch fused_bias_act on checked arguments."""
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    v = x.to(compute)
    if bias is not None:
        v = v + bias.to(x.dtype).to(compute).reshape(1, -1, *([1] * (x.dim() - 2)))
    return (spec.fn(v, alpha) * gain).to(x.dtype)


class _FusedBiasAct(torch.autograd.Function):
    """CUDA fused_bias_act; backward recomputes x + bias and applies the activation's derivative."""

    @staticmethod
    def forward(ctx, x, bias, code, alpha, gain):
        ext = load_extension()
        b = bias.to(x.dtype) if bias is not None else x.new_empty(0)
        ctx.save_for_backward(x, b)
        ctx.params = (code, alpha, gain, None if bias is None else bias.dtype)
        return ext.fused_bias_act(x, b, code, alpha, gain)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, b = ctx.saved_tensors
        code, alpha, gain, bias_dtype = ctx.params
        backward = load_extension().fused_bias_act_backward
        if bias_dtype is None:
            return backward(grad, x, b, code, alpha, gain), None, None, None, None
        # The bias gradient sums the per-element gradients before they are rounded to x's dtype,
        # as the torch path's autograd does, so the kernel runs in the compute dtype here.
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        full = backward(grad.to(compute), x.to(compute), b.to(compute), code, alpha, gain)
        dims = [d for d in range(full.dim()) if d != 1]
        return full.to(x.dtype), full.sum(dim=dims).to(bias_dtype), None, None, None
