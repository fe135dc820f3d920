"""Triton kernels of the cone-beam projector (same Joseph weights as the torch path).

This module imports Triton at its top, so the rest of the package imports it only inside the
functions that run on the Triton backend. One program handles a block of consecutive detector cells
of one view; each ray loops over the voxel planes it can touch (the block's union of ray ranges).
The adjoint scatters the same weights with atomic adds, so it is the exact transpose of the forward.
It adds them as 64-bit fixed-point integers, which makes the result independent of the order in
which the atomics land: float atomics would give a slightly different volume on every call, which
would break bitwise reproducibility of whole reconstructions (and agreement between the ranks of a
multi-GPU run, which each apply the operator).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK = 128


@triton.jit
def _ray_setup(vec_ptr, rows, cols, depth, height, width, BLOCK_SIZE: tl.constexpr):
    """This program's rays (view, cell offsets, mask), their Joseph parameters and the block's plane range.

    The parameters are those of physics.cone_beam._ray_params.
    """
    view = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    ray_mask = offs < rows * cols
    base = vec_ptr + view * 12
    sx = tl.load(base + 0)
    sy = tl.load(base + 1)
    sz = tl.load(base + 2)
    r = (offs // cols).to(tl.float32)
    c = (offs % cols).to(tl.float32)
    di = tl.load(base + 3) + c * tl.load(base + 6) + r * tl.load(base + 9) - sx
    dj = tl.load(base + 4) + c * tl.load(base + 7) + r * tl.load(base + 10) - sy
    dl = tl.load(base + 5) + c * tl.load(base + 8) + r * tl.load(base + 11) - sz
    xdom = tl.abs(di) >= tl.abs(dj)
    dk = tl.where(xdom, di, dj)
    ra = tl.where(xdom, dj, di) / dk
    rz = dl / dk
    sk = tl.where(xdom, sx, sy)
    a0 = tl.where(xdom, sy, sx) - sk * ra
    z0 = sz - sk * rz
    length = tl.sqrt(di * di + dj * dj + dl * dl) / tl.abs(dk)
    n_planes = tl.where(xdom, width, height)
    size_a = tl.where(xdom, height, width)
    stride_a = tl.where(xdom, width, 1)
    stride_k = tl.where(xdom, 1, width)
    # Planes where some bilinear weight can be non-zero: -1 < a < size_a and -1 < z < depth.
    ra_safe = tl.where(tl.abs(ra) > 1e-12, ra, 1e-12)
    rz_safe = tl.where(tl.abs(rz) > 1e-12, rz, 1e-12)
    a_lo = (-1.0 - a0) / ra_safe
    a_hi = (size_a.to(tl.float32) - a0) / ra_safe
    z_lo = (-1.0 - z0) / rz_safe
    z_hi = (depth - z0) / rz_safe
    lo = tl.maximum(tl.minimum(a_lo, a_hi), tl.minimum(z_lo, z_hi))
    hi = tl.minimum(tl.maximum(a_lo, a_hi), tl.maximum(z_lo, z_hi))
    n_max = tl.maximum(height, width)
    lo = tl.where(ray_mask & (lo <= hi), tl.minimum(tl.maximum(lo, -1.0), n_max + 1.0), n_max + 1.0)
    hi = tl.where(ray_mask & (lo <= hi), tl.minimum(tl.maximum(hi, -1.0), n_max + 1.0), -1.0)
    k_start = tl.maximum(tl.min(tl.floor(lo), axis=0).to(tl.int32), 0)
    k_stop = tl.minimum(tl.max(tl.floor(hi), axis=0).to(tl.int32) + 2, n_max)
    return view, offs, ray_mask, a0, ra, z0, rz, length, n_planes, size_a, stride_a, stride_k, k_start, k_stop


@triton.jit
def _corner_terms(k, a0, ra, z0, rz, n_planes, size_a, stride_a, stride_k, ray_mask, depth, plane):
    kf = k * 1.0
    a = a0 + kf * ra
    z = z0 + kf * rz
    a_floor = tl.floor(a)
    z_floor = tl.floor(z)
    fa = a - a_floor
    fz = z - z_floor
    ai = a_floor.to(tl.int32)
    zi = z_floor.to(tl.int32)
    ok = ray_mask & (k < n_planes)
    a_in0 = (ai >= 0) & (ai < size_a)
    a_in1 = (ai + 1 >= 0) & (ai + 1 < size_a)
    z_in0 = (zi >= 0) & (zi < depth)
    z_in1 = (zi + 1 >= 0) & (zi + 1 < depth)
    off = zi * plane + ai * stride_a + k * stride_k
    return off, fa, fz, ok & a_in0 & z_in0, ok & a_in1 & z_in0, ok & a_in0 & z_in1, ok & a_in1 & z_in1


@triton.jit
def _forward_kernel(x_ptr, y_ptr, vec_ptr, rows, cols, depth, height, width, scale, BLOCK_SIZE: tl.constexpr):
    view, offs, ray_mask, a0, ra, z0, rz, length, n_planes, size_a, stride_a, stride_k, k_start, k_stop = (
        _ray_setup(vec_ptr, rows, cols, depth, height, width, BLOCK_SIZE)
    )
    plane = height * width
    acc = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for k in range(k_start, k_stop):
        off, fa, fz, m00, m10, m01, m11 = _corner_terms(
            k, a0, ra, z0, rz, n_planes, size_a, stride_a, stride_k, ray_mask, depth, plane
        )
        v00 = tl.load(x_ptr + off, mask=m00, other=0.0)
        v10 = tl.load(x_ptr + off + stride_a, mask=m10, other=0.0)
        v01 = tl.load(x_ptr + off + plane, mask=m01, other=0.0)
        v11 = tl.load(x_ptr + off + plane + stride_a, mask=m11, other=0.0)
        acc += (1.0 - fz) * ((1.0 - fa) * v00 + fa * v10) + fz * ((1.0 - fa) * v01 + fa * v11)
    tl.store(y_ptr + view * rows * cols + offs, acc * length * scale, mask=ray_mask)


@triton.jit
def _adjoint_bound_kernel(
    y_ptr, bound_ptr, vec_ptr, rows, cols, depth, height, width, scale, BLOCK_SIZE: tl.constexpr
):
    """Per program: the largest |y| * length * scale of its rays (a bound on any one contribution),
    infinite where one is NaN or infinite."""
    view, offs, ray_mask, a0, ra, z0, rz, length, n_planes, size_a, stride_a, stride_k, k_start, k_stop = (
        _ray_setup(vec_ptr, rows, cols, depth, height, width, BLOCK_SIZE)
    )
    value = tl.load(y_ptr + view * rows * cols + offs, mask=ray_mask, other=0.0) * length * scale
    magnitude = tl.abs(value)
    magnitude = tl.where(magnitude < float("inf"), magnitude, float("inf"))
    tl.store(bound_ptr + view * tl.num_programs(0) + tl.program_id(0), tl.max(magnitude, axis=0))


@triton.jit
def _to_fixed(weight, fixed):
    """``weight`` in units of 1 / fixed, rounded to the nearest integer (halves away from zero)."""
    scaled = weight.to(tl.float64) * fixed
    return (scaled + tl.where(scaled >= 0, 0.5, -0.5)).to(tl.int64)


@triton.jit
def _adjoint_kernel(
    y_ptr, acc_ptr, vec_ptr, fixed_ptr, rows, cols, depth, height, width, scale, BLOCK_SIZE: tl.constexpr
):
    view, offs, ray_mask, a0, ra, z0, rz, length, n_planes, size_a, stride_a, stride_k, k_start, k_stop = (
        _ray_setup(vec_ptr, rows, cols, depth, height, width, BLOCK_SIZE)
    )
    plane = height * width
    fixed = tl.load(fixed_ptr)
    value = tl.load(y_ptr + view * rows * cols + offs, mask=ray_mask, other=0.0) * length * scale
    for k in range(k_start, k_stop):
        off, fa, fz, m00, m10, m01, m11 = _corner_terms(
            k, a0, ra, z0, rz, n_planes, size_a, stride_a, stride_k, ray_mask, depth, plane
        )
        w00 = _to_fixed(value * (1.0 - fa) * (1.0 - fz), fixed)
        w10 = _to_fixed(value * fa * (1.0 - fz), fixed)
        w01 = _to_fixed(value * (1.0 - fa) * fz, fixed)
        w11 = _to_fixed(value * fa * fz, fixed)
        tl.atomic_add(acc_ptr + off, w00, mask=m00, sem="relaxed")
        tl.atomic_add(acc_ptr + off + stride_a, w10, mask=m10, sem="relaxed")
        tl.atomic_add(acc_ptr + off + plane, w01, mask=m01, sem="relaxed")
        tl.atomic_add(acc_ptr + off + plane + stride_a, w11, mask=m11, sem="relaxed")


@triton.jit
def _fixed_to_float_kernel(acc_ptr, x_ptr, fixed_ptr, numel, BLOCK_SIZE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < numel
    acc = tl.load(acc_ptr + offs, mask=mask, other=0)
    tl.store(x_ptr + offs, (acc.to(tl.float64) / tl.load(fixed_ptr)).to(tl.float32), mask=mask)


def _check(t: torch.Tensor) -> None:
    if t.dtype != torch.float32:
        raise TypeError(
            f"the Triton backend runs in float32, got {t.dtype}; use backend='torch' for {t.dtype}"
        )


def forward(volume: torch.Tensor, vecs: torch.Tensor, det_shape, voxel_size: float) -> torch.Tensor:
    """Project ``volume`` [D, H, W] (float32, contiguous) on the views of ``vecs`` -> [V, rows, cols]."""
    _check(volume)
    rows, cols = det_shape
    depth, height, width = volume.shape
    out = torch.empty((vecs.shape[0], rows, cols), dtype=torch.float32, device=volume.device)
    grid = (triton.cdiv(rows * cols, BLOCK), vecs.shape[0])
    _forward_kernel[grid](
        volume, out, vecs.contiguous(), rows, cols, depth, height, width, float(voxel_size), BLOCK_SIZE=BLOCK
    )
    return out


def adjoint(
    proj: torch.Tensor, vecs: torch.Tensor, vol_shape, voxel_size: float, ray_bound=None, combine=None
) -> torch.Tensor:
    """Transpose of :func:`forward`: [V, rows, cols] -> [D, H, W], bitwise the same on every call.

    ``ray_bound`` (default: the rays of ``proj``) bounds the number of rays whose contributions any
    call with the same fixed-point unit adds; ``combine(t, how)``, when given, reduces in place
    over the view blocks of one operator (physics.ConeBeamCT.view_block): "max" for the largest
    contribution, then "sum" for the int64 accumulators, so the blocks together give bitwise the
    whole operator's adjoint.
    """
    _check(proj)
    views, rows, cols = proj.shape
    vecs = vecs.contiguous()
    ray_bound = views * rows * cols if ray_bound is None else ray_bound
    grid = (triton.cdiv(rows * cols, BLOCK), views)
    args = (rows, cols, *vol_shape, float(voxel_size))
    # A voxel gets at most one contribution per ray, each at most the largest one; the unit is the
    # power of two that puts ray_bound such contributions at or below 2^62, so no sum overflows
    # int64. The price: contributions far below the largest keep fewer bits (with 360 x 512^2 rays,
    # one 1e6 times smaller still has about 1e-5 relative precision).
    partial = torch.empty(grid[::-1], dtype=torch.float32, device=proj.device)
    _adjoint_bound_kernel[grid](proj, partial, vecs, *args, BLOCK_SIZE=BLOCK)
    # A NaN or infinity anywhere makes the largest contribution infinite, so every block of a split
    # operator sees it and the whole volume comes out NaN instead of silently dropping the value.
    largest = partial.amax().double().reshape(1)
    if combine is not None:
        combine(largest, "max")
    bound = largest.mul_(1.001 * ray_bound).clamp_(min=1e-250)
    fixed = torch.exp2(torch.floor(62.0 - torch.log2(bound))).clamp_(max=2.0**1000)
    fixed = torch.where(torch.isfinite(bound), fixed, math.nan)
    acc = torch.zeros(vol_shape, dtype=torch.int64, device=proj.device)
    _adjoint_kernel[grid](proj, acc, vecs, fixed, *args, BLOCK_SIZE=BLOCK)
    if combine is not None:
        combine(acc, "sum")
    out = torch.empty(vol_shape, dtype=torch.float32, device=proj.device)
    _fixed_to_float_kernel[(triton.cdiv(acc.numel(), 1024),)](acc, out, fixed, acc.numel(), BLOCK_SIZE=1024)
    return out
