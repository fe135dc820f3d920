"""The Triton kernels of op.group_norm.group_norm_act for channels_last CUDA tensors (imports Triton).

Pass 1 reads x once and writes, for each sample, each span of pixels and each channel, the span's
mean and sum of squared deviations (combined block by block with Chan's formula, in fp32). The
spans are combined per channel in torch (a fixed order: deterministic), and per group by
op.group_norm.group_scale_shift. Pass 2 reads x again and writes SiLU(x * scale + shift).
Rows of channels_last memory are pixels, each holding its C channels side by side, so both passes
read full rows: coalesced, with no layout conversion.
"""

import torch
import triton
import triton.language as tl

from op.group_norm import group_scale_shift
from utils.device import on_input_device

BLOCK_C = 128
"""Channels per program (a grid axis covers the rest)."""

BLOCK_P = 64
"""Pixels per tile in both passes."""

TARGET_PROGRAMS = 2048
"""About this many programs in the statistics pass (enough to fill a large GPU)."""


@triton.jit
def _stats_kernel(
    x_ptr, mean_ptr, m2_ptr, hw, channels, span, splits, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr
):
    sample = tl.program_id(0)
    split = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < channels
    start = split * span
    base = x_ptr + sample.to(tl.int64) * hw * channels
    count = tl.zeros([BLOCK_C], tl.float32)
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for first in range(0, span, BLOCK_P):
        rows = start + first + tl.arange(0, BLOCK_P)
        row_ok = rows < hw
        ok = row_ok[:, None] & col_ok[None, :]
        tile = tl.load(base + rows.to(tl.int64)[:, None] * channels + cols[None, :], mask=ok, other=0.0)
        tile = tile.to(tl.float32)
        # Only the last span has tiles past hw, and its first tile is never empty.
        size = tl.sum(row_ok.to(tl.float32), axis=0)
        block_mean = tl.sum(tile, axis=0) / tl.maximum(size, 1.0)
        deviation = tl.where(ok, tile - block_mean[None, :], 0.0)
        block_m2 = tl.sum(deviation * deviation, axis=0)
        total = count + size
        delta = block_mean - mean
        mean = mean + delta * (size / total)
        m2 = m2 + block_m2 + delta * delta * (count * size / total)
        count = total
    out = (sample * splits + split).to(tl.int64) * channels + cols
    tl.store(mean_ptr + out, mean, mask=col_ok)
    tl.store(m2_ptr + out, m2, mask=col_ok)


@triton.jit
def _apply_kernel(
    x_ptr, y_ptr, scale_ptr, shift_ptr, hw, channels,
    SILU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Samples and pixel tiles share axis 0 (up to 2^31 - 1 programs; axis 1 stops at 65535).
    tiles = tl.cdiv(hw, BLOCK_P)
    sample = tl.program_id(0) // tiles
    rows = (tl.program_id(0) % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < channels
    ok = (rows < hw)[:, None] & col_ok[None, :]
    scale = tl.load(scale_ptr + sample * channels + cols, mask=col_ok, other=0.0)
    shift = tl.load(shift_ptr + sample * channels + cols, mask=col_ok, other=0.0)
    offsets = sample.to(tl.int64) * hw * channels + rows.to(tl.int64)[:, None] * channels + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    y = x * scale[None, :] + shift[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=ok)


def _span_counts(hw, span, splits, device):
    """Pixels in each span [splits] (fp32), made on the device at every call: a cached tensor could
    be freed under a CUDA graph that captured its address."""
    return (hw - torch.arange(splits, device=device) * span).clamp(0, span).float()


@on_input_device
def group_norm_act(x, groups, weight, bias, eps, silu=False, pre_bias=None):
    """op.group_norm.group_norm_act on a channels_last CUDA tensor x (checked by the caller)."""
    n, c, h, w = x.shape
    hw = h * w
    channel_blocks = triton.cdiv(c, BLOCK_C)
    per_sample = max(1, TARGET_PROGRAMS // (n * channel_blocks))
    span = triton.cdiv(triton.cdiv(hw, per_sample), BLOCK_P) * BLOCK_P
    splits = triton.cdiv(hw, span)
    means = torch.empty(n, splits, c, device=x.device, dtype=torch.float32)
    m2s = torch.empty_like(means)
    _stats_kernel[(n, splits, channel_blocks)](
        x, means, m2s, hw, c, span, splits, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C
    )
    counts = _span_counts(hw, span, splits, x.device)[:, None]
    mean = (means * counts).sum(dim=1) / hw
    var = (m2s + counts * (means - mean[:, None]).square()).sum(dim=1) / hw
    scale, shift = group_scale_shift(mean, var, groups, weight, bias, eps, pre_bias)
    y = torch.empty_like(x)
    _apply_kernel[(n * triton.cdiv(hw, BLOCK_P), channel_blocks)](
        x, y, scale.contiguous(), shift.contiguous(), hw, c, SILU=bool(silu), BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C
    )
    return y
