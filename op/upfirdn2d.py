"""upfirdn2d: upsample by zero insertion, pad, filter with a 2-D FIR kernel, downsample.

The CUDA kernel (fp32, fp16, bf16, fp64) runs for CUDA tensors; the pure-torch path computes the
same function with depthwise (transposed) convolutions and is used on CPU, under torch.compile,
when the kernel cannot be built, and when ISCS_OPS_FORCE_TORCH=1.
"""

import torch
import torch.nn.functional as F

from op._extension import load_extension, no_autocast, use_cuda_kernels


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """Upsample, FIR-filter and downsample every channel of an image batch.

    Each channel is upsampled by inserting ``up - 1`` zeros after every sample, padded with zeros
    (negative pads crop), convolved with ``kernel`` (a true convolution, i.e. correlation with the
    flipped kernel) and kept at every ``down``-th sample, on both axes.

    Args:
        x: [N, C, H, W] float tensor, any memory layout.
        kernel: [kh, kw] FIR kernel (not normalised here).
        up: integer upsampling factor >= 1 (both axes).
        down: integer downsampling factor >= 1 (both axes).
        pad: (p0, p1) applied to both axes, or (x0, x1, y0, y1); in upsampled samples.

    Returns:
        [N, C, (H*up + y0 + y1 - kh) // down + 1, (W*up + x0 + x1 - kw) // down + 1] in x's dtype.
        Gradients flow to x (the kernel is treated as a constant).
    """
    pads = _check_args(x, kernel, up, down, pad)
    if use_cuda_kernels(x):
        return _UpFirDn2d.apply(x, kernel, up, down, pads, "cuda")
    return upfirdn2d_torch(x, kernel, up, down, pads)


def upfirdn2d_torch(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pads) -> torch.Tensor:
    """The pure-torch upfirdn2d on checked arguments; pads is (x0, x1, y0, y1). Runs in x's dtype."""
    px0, px1, py0, py1 = pads
    channels = x.shape[1]
    weight = kernel.to(device=x.device, dtype=x.dtype)
    with no_autocast(x):
        transposed = _transposed_conv_padding(kernel.shape, up, down, pads)
        if transposed is not None:
            padding, output_padding = transposed
            taps = weight[None, None].repeat(channels, 1, 1, 1)
            return F.conv_transpose2d(
                x, taps, stride=up, padding=padding, output_padding=output_padding, groups=channels
            )
        if up > 1:
            n, _, h, w = x.shape
            x = F.pad(x.reshape(n, channels, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
            x = x.reshape(n, channels, h * up, w * up)
        padding = (py0, px0)
        if not (px0 == px1 >= 0 and py0 == py1 >= 0):
            x = F.pad(x, [px0, px1, py0, py1])
            padding = (0, 0)
        taps = weight.flip([0, 1])[None, None].repeat(channels, 1, 1, 1)
        return F.conv2d(x, taps, stride=down, padding=padding, groups=channels)


def _transposed_conv_padding(kernel_shape, up, down, pads):
    """(padding, output_padding) for which conv_transpose2d(stride=up) equals upfirdn2d, else None.

    Zero insertion with the kernel then equals conv_transpose2d with the unflipped kernel, whose
    implicit left pad is k-1-padding and right pad k-1-padding+output_padding.
    """
    if up == 1 or down != 1:
        return None
    px0, px1, py0, py1 = pads
    kh, kw = kernel_shape
    padding, output_padding = [], []
    for k, p0, p1 in ((kh, py0, py1), (kw, px0, px1)):
        extra = p1 + up - 1 - p0
        if not (0 <= p0 <= k - 1 and 0 <= extra < up):
            return None
        padding.append(k - 1 - p0)
        output_padding.append(extra)
    return tuple(padding), tuple(output_padding)


def _cuda_forward(x, kernel, up, down, pads):
    px0, px1, py0, py1 = pads
    return load_extension().upfirdn2d(x, kernel, up, up, down, down, px0, px1, py0, py1)


_FORWARD = {"cuda": _cuda_forward, "torch": upfirdn2d_torch}


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d with the adjoint as backward: upfirdn2d of the gradient with the flipped kernel
    and up/down swapped, so that gradients of any order use the same forward implementation."""

    @staticmethod
    def forward(ctx, x, kernel, up, down, pads, backend):
        ctx.save_for_backward(kernel)
        ctx.geometry = (x.shape[2], x.shape[3], up, down, pads, backend)
        return _FORWARD[backend](x, kernel, up, down, pads)

    @staticmethod
    def backward(ctx, grad):
        (kernel,) = ctx.saved_tensors
        in_h, in_w, up, down, (px0, _, py0, _), backend = ctx.geometry
        kh, kw = kernel.shape
        out_h, out_w = grad.shape[2], grad.shape[3]
        grad_pads = (
            kw - px0 - 1,
            in_w * up - out_w * down + px0 - up + 1,
            kh - py0 - 1,
            in_h * up - out_h * down + py0 - up + 1,
        )
        grad_x = _UpFirDn2d.apply(grad, kernel.flip([0, 1]), down, up, grad_pads, backend)
        return grad_x, None, None, None, None, None


def _check_args(x, kernel, up, down, pad):
    """Validate the arguments; return the pads as (x0, x1, y0, y1)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise TypeError(f"upfirdn2d: x must be a floating [N, C, H, W] tensor, got {_describe(x)}")
    if not isinstance(kernel, torch.Tensor) or kernel.dim() != 2 or min(kernel.shape) < 1:
        raise TypeError(f"upfirdn2d: kernel must be a non-empty [kh, kw] tensor, got {_describe(kernel)}")
    for name, factor in (("up", up), ("down", down)):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"upfirdn2d: {name} must be an integer >= 1, got {factor!r}")
    pads = tuple(pad)
    if len(pads) == 2:
        pads = (pads[0], pads[1], pads[0], pads[1])
    if len(pads) != 4 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pads):
        raise ValueError(f"upfirdn2d: pad must be 2 or 4 integers (p0, p1) or (x0, x1, y0, y1), got {pad!r}")
    px0, px1, py0, py1 = pads
    kh, kw = kernel.shape
    span_h = x.shape[2] * up + py0 + py1 - kh
    span_w = x.shape[3] * up + px0 + px1 - kw
    if span_h < 0 or span_w < 0:
        raise ValueError(
            f"upfirdn2d: input {tuple(x.shape[2:])} with up={up}, pad={pad!r} is smaller than the "
            f"kernel {tuple(kernel.shape)}; the output would be empty"
        )
    return pads


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
