"""Triton kernels for channels_last CUDA tensors: upfirdn2d and the residual sum with a bias (imports Triton).

In channels_last memory a pixel's C channels lie side by side, so a tile of pixels x channels
reads whole rows: coalesced. cuDNN has no fast channels_last depthwise (transposed) convolution,
which is what the torch path of upfirdn2d is, and eager PyTorch adds a convolution's bias and a
residual in separate passes; these kernels do each in one memory-bound pass. fp32 accumulation,
results in the input's dtype and layout.
"""

import torch
import triton
import triton.language as tl

from utils.device import on_input_device

TILE_ELEMENTS = 8192
"""Pixels x channels per program."""


@triton.jit
def _upfirdn2d_kernel(
    x_ptr, taps_ptr, y_ptr, height, width, out_height, out_width, channels, pad_y, pad_x,
    UP: tl.constexpr, DOWN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Samples and pixel tiles share axis 0 (up to 2^31 - 1 programs; axis 1 stops at 65535).
    tiles = tl.cdiv(out_height * out_width, BLOCK_P)
    sample = tl.program_id(0) // tiles
    pixels = (tl.program_id(0) % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < channels
    pixel_ok = pixels < out_height * out_width
    oy = pixels // out_width
    ox = pixels % out_width
    x_base = x_ptr + sample.to(tl.int64) * height * width * channels
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for ty in tl.static_range(KH):
        # Row of the zero-inserted, padded input that tap ty reads; a real sample when divisible by UP.
        uy = oy * DOWN + ty - pad_y
        uy_ok = (uy >= 0) & (uy % UP == 0) & (uy < height * UP)
        iy = tl.where(uy_ok, uy, 0) // UP
        for tx in tl.static_range(KW):
            ux = ox * DOWN + tx - pad_x
            ux_ok = (ux >= 0) & (ux % UP == 0) & (ux < width * UP)
            ix = tl.where(ux_ok, ux, 0) // UP
            ok = (pixel_ok & uy_ok & ux_ok)[:, None] & col_ok[None, :]
            offsets = (iy * width + ix).to(tl.int64)[:, None] * channels + cols[None, :]
            tap = tl.load(taps_ptr + (KH - 1 - ty) * KW + (KW - 1 - tx))
            acc += tap * tl.load(x_base + offsets, mask=ok, other=0.0).to(tl.float32)
    out = sample.to(tl.int64) * out_height * out_width * channels
    out += pixels.to(tl.int64)[:, None] * channels + cols[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=pixel_ok[:, None] & col_ok[None, :])


def _blocks(channels):
    block_c = min(128, max(16, triton.next_power_of_2(channels)))
    return TILE_ELEMENTS // block_c, block_c


@on_input_device
def upfirdn2d(x, kernel, up, down, pads):
    """op.upfirdn2d on a channels_last CUDA tensor x with checked arguments; pads (x0, x1, y0, y1)."""
    px0, px1, py0, py1 = pads
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    out_h = (h * up + py0 + py1 - kh) // down + 1
    out_w = (w * up + px0 + px1 - kw) // down + 1
    y = torch.empty((n, c, out_h, out_w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    taps = kernel.to(device=x.device, dtype=torch.float32).contiguous()
    block_p, block_c = _blocks(c)
    grid = (n * triton.cdiv(out_h * out_w, block_p), triton.cdiv(c, block_c))
    _upfirdn2d_kernel[grid](
        x, taps, y, h, w, out_h, out_w, c, py0, px0,
        UP=up, DOWN=down, KH=kh, KW=kw, BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return y


@triton.jit
def _residual_kernel(x_ptr, h_ptr, bias_ptr, y_ptr, total, channels, scale, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < total
    x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + offsets % channels, mask=ok, other=0.0)
    tl.store(y_ptr + offsets, ((x + h + bias) * scale).to(y_ptr.dtype.element_ty), mask=ok)


@on_input_device
def residual_sum(x, h, bias, scale):
    """(x + h + bias[None, :, None, None]) * scale for channels_last CUDA tensors x, h of one shape."""
    y = torch.empty_like(x, memory_format=torch.channels_last)
    total = x.numel()
    _residual_kernel[(triton.cdiv(total, TILE_ELEMENTS),)](
        x, h, bias.to(torch.float32).contiguous(), y, total, x.shape[1], float(scale), BLOCK=TILE_ELEMENTS
    )
    return y
