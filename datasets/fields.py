"""Smooth random fields on tensor-product grids (cubic B-spline interpolation of control points),
piecewise-linear intensity curves and a Gaussian blur along one axis.

The phantom texture, the MRI deformation and the MRI bias field are all "a few random numbers on a
coarse control grid, interpolated smoothly onto the voxel grid". Because the voxel grid is a tensor
product of 1D coordinate vectors, the interpolation is three small matrix products, which is fast on
CPU and GPU and gives the same field whatever window of space a volume covers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def bspline_matrix(coords: torch.Tensor, start: float, step: float, num: int) -> torch.Tensor:
    """Cubic B-spline interpolation weights of points on a regular 1D control grid.

    Args:
        coords: ``[N]`` positions (any unit), on the device the matrix should live on.
        start: position of control point 0 (same unit).
        step: spacing of the control points (same unit, > 0).
        num: number of control points (>= 1); points beyond the grid use the nearest ones.

    Returns:
        ``[N, num]`` matrix ``M`` (dtype of ``coords``) such that ``M @ values`` interpolates the
        control values; every row sums to 1.
    """
    if step <= 0 or num < 1:
        raise ValueError(f"bspline_matrix: step={step}, num={num}; step > 0 and num >= 1 are accepted")
    u = ((coords - start) / step).clamp(0.0, num - 1.0)
    base = u.floor()
    f = (u - base).unsqueeze(1)
    weights = torch.cat(
        [(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], dim=1
    ) / 6.0
    index = (base.long().unsqueeze(1) + torch.arange(-1, 3, device=coords.device)).clamp(0, num - 1)
    matrix = torch.zeros(coords.shape[0], num, dtype=coords.dtype, device=coords.device)
    return matrix.scatter_add_(1, index, weights)


def interpolate_grid(values: torch.Tensor, matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Interpolate control values ``[..., Gz, Gy, Gx]`` with per-axis matrices ``[D,Gz], [H,Gy], [W,Gx]``.

    Returns:
        ``[..., D, H, W]``: the separable interpolation, computed axis by axis (x first, the
        cheapest order when the output grid is larger than the control grid).
    """
    mz, my, mx = matrices
    out = values @ mx.T
    out = (out.transpose(-1, -2) @ my.T).transpose(-1, -2)
    lead = out.shape[:-3]
    gz, h, w = out.shape[-3:]
    out = mz @ out.reshape(*lead, gz, h * w)
    return out.reshape(*lead, mz.shape[0], h, w)


def piecewise_linear(values: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Map ``values`` through the curve with knots ``(xs, ys)`` (xs increasing); the end segments extend linearly."""
    index = torch.bucketize(values.contiguous(), xs).clamp(1, xs.numel() - 1)
    x0, x1, y0, y1 = xs[index - 1], xs[index], ys[index - 1], ys[index]
    return y0 + (values - x0) * (y1 - y0) / (x1 - x0)


def blur_axis(volume: torch.Tensor, axis: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``volume`` along ``axis`` (``sigma`` in voxels, edges replicated)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, device=volume.device, dtype=volume.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    moved = volume.movedim(axis, -1)
    lines = moved.reshape(-1, 1, moved.shape[-1])
    lines = F.conv1d(F.pad(lines, (radius, radius), mode="replicate"), (kernel / kernel.sum()).view(1, 1, -1))
    return lines.reshape(moved.shape).movedim(-1, axis).contiguous()
