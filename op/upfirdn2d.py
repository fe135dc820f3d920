"""upfirdn2d: upsample by zero insertion, pad, filter with a 2-D FIR kernel, downsample.

Four paths compute the same function (``PATHS``):

- ``cuda``: the CUDA kernel (fp32, fp16, bf16, fp64), for NCHW CUDA tensors in eager mode;
- ``triton``: a Triton kernel (fp32, fp16, bf16) for channels_last CUDA tensors in eager mode
  (op.channels_last_triton), where cuDNN's depthwise convolutions are slow;
- ``torch``: depthwise (transposed) convolutions, on CPU, when no kernel can run, and when
  ISCS_OPS_FORCE_TORCH=1;
- ``taps``: a sum of shifted, strided slices of the input (one per kernel tap, polyphase for
  upsampling), chosen while torch.compile traces: it is pure pointwise work, which the compiler
  fuses with its neighbours into one memory-bound kernel, where a depthwise convolution would be
  an opaque (and in channels_last bf16, slow) library call.
"""

import math

import torch
import torch.nn.functional as F

from op._extension import (
    is_compiling,
    load_extension,
    no_autocast,
    triton_kernels,
    use_channels_last_kernels,
    use_cuda_kernels,
)


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
    return PATHS[choose_path(x)](x, kernel, up, down, pads)


def choose_path(x: torch.Tensor) -> str:
    """The key of ``PATHS`` that upfirdn2d takes for x: taps while tracing; for channels_last CUDA
    tensors (the fast eager network's layout) the Triton kernel, else torch (never the CUDA
    kernel, which is slow on that layout and needs a build); else cuda or torch."""
    if is_compiling():
        return "taps"
    if x.is_cuda and x.is_contiguous(memory_format=torch.channels_last):
        return "triton" if use_channels_last_kernels(x) else "torch"
    return "cuda" if use_cuda_kernels(x) else "torch"


def _is_channels_last(x: torch.Tensor) -> bool:
    """x is channels_last and not also contiguous (as tensors with one channel or pixel are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def upfirdn2d_torch(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pads) -> torch.Tensor:
    """The pure-torch upfirdn2d on checked arguments; pads is (x0, x1, y0, y1). Runs in x's dtype."""
    if x.is_cuda and _is_channels_last(x):
        # cuDNN's grouped convolution is several times slower on channels_last than on NCHW input.
        out = upfirdn2d_torch(x.contiguous(), kernel, up, down, pads)
        return out.contiguous(memory_format=torch.channels_last)
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


class _AxisPlan:
    """How one axis of upfirdn2d reads its input: output phases, each a list of (tap, input offset).

    Output sample ``up * j + r`` (phase r; ``down * j`` when up is 1) is the sum over the phase's
    taps t of ``flipped_kernel[t] * x[j * step + offset]``, where only the taps that meet an
    inserted sample (not a zero) are listed. The input is zero-padded by ``before`` and ``after``
    so that every slice lies inside it.
    """

    def __init__(self, length: int, k: int, up: int, down: int, p0: int, p1: int):
        self.size = (length * up + p0 + p1 - k) // down + 1
        self.step = down
        self.count = math.ceil(self.size / up)
        self.phases = [
            [(t, (r + t - p0) // up) for t in range(k) if (r + t - p0) % up == 0] for r in range(up)
        ]
        offsets = [offset for phase in self.phases for _, offset in phase] or [0]
        self.before = max(0, -min(offsets))
        self.after = max(0, max(offsets) + (self.count - 1) * down + 1 - length)

    def window(self, offset: int) -> slice:
        start = self.before + offset
        return slice(start, start + (self.count - 1) * self.step + 1, self.step)


def upfirdn2d_taps(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pads) -> torch.Tensor:
    """upfirdn2d on checked arguments as a sum of shifted, strided slices of x; runs in x's dtype.

    Upsampling works phase by phase (only the kernel taps that meet real samples), and the phases
    are interleaved by stack and reshape; with both up and down above 1 the zeros are inserted
    first. Every step is indexing or pointwise, so a compiler fuses the whole op.
    """
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if up > 1 and down > 1:
        n, c, h, w = x.shape
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
        up = 1
    px0, px1, py0, py1 = pads
    kh, kw = kernel.shape
    rows = _AxisPlan(x.shape[2], kh, up, down, py0, py1)
    cols = _AxisPlan(x.shape[3], kw, up, down, px0, px1)
    taps = kernel.to(device=x.device, dtype=x.dtype).flip([0, 1])
    with no_autocast(x):
        padded = F.pad(x, [cols.before, cols.after, rows.before, rows.after])
        phase_rows = []
        for row_phase in rows.phases:
            phase_cols = []
            for col_phase in cols.phases:
                terms = [
                    taps[ty, tx] * padded[:, :, rows.window(oy), cols.window(ox)]
                    for ty, oy in row_phase
                    for tx, ox in col_phase
                ]
                empty = x.new_zeros(x.shape[0], x.shape[1], rows.count, cols.count)
                phase_cols.append(sum(terms[1:], terms[0]) if terms else empty)
            phase_rows.append(torch.stack(phase_cols, dim=-1))
        out = torch.stack(phase_rows, dim=3).reshape(
            x.shape[0], x.shape[1], rows.count * up, cols.count * up
        )[:, :, : rows.size, : cols.size]
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


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


def _triton_forward(x, kernel, up, down, pads):
    # Gradients reach here in any layout; the kernel reads channels_last only.
    if use_channels_last_kernels(x):
        return triton_kernels("channels_last_triton").upfirdn2d(x, kernel, up, down, pads)
    return upfirdn2d_torch(x, kernel, up, down, pads)


_FORWARD = {"cuda": _cuda_forward, "torch": upfirdn2d_torch, "triton": _triton_forward}


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


PATHS = {
    "cuda": lambda x, kernel, up, down, pads: _UpFirDn2d.apply(x, kernel, up, down, pads, "cuda"),
    "triton": lambda x, kernel, up, down, pads: _UpFirDn2d.apply(x, kernel, up, down, pads, "triton"),
    "torch": upfirdn2d_torch,
    "taps": upfirdn2d_taps,
}
"""path name -> f(x, kernel, up, down, pads (x0, x1, y0, y1)) on checked arguments."""


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
