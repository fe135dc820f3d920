"""Triton kernels of the cone-beam projector (same Joseph weights as the torch path).

This module imports Triton at its top, so the rest of the package imports it only inside the
functions that run on the Triton backend.

Forward: one program per tile of detector cells of one view (neighbouring rays stay close in the
volume); each ray loops over the tile's planes. It reads two zero-padded copies of the volume, one
laid out [x, z, y] for x-dominant rays and one [y, z, x] for y-dominant rays, so that a sample's
four corners and a tile's neighbouring samples are close in memory and need no per-corner masks.

Adjoint (gather): one program per block of slices of one (row, column) of the volume. For a
circular orbit (detector rows step along z only, columns in-plane only) the rays that touch a voxel
in one view are found in closed form: the detector columns whose rays cross the voxel's plane
within one voxel of it (a projective map of the voxel's neighbours), and on each such column the
rows whose slice coordinate is within one slice (linear in the row). Each candidate's weight is
recomputed with exactly the forward's float32 operations and kept only if the forward's bilinear
test gives this voxel a weight, so the gather applies the transpose of the forward's weights (the
forward's plane range per tile is widened by a plane on each side, so that it never leaves out a
plane where that test passes, edge rays included). Each
voxel adds its contributions of one view in a fixed order, then adds that sum as a 64-bit
fixed-point integer: the result is bitwise the same on every call, and blocks of views computed
apart (``combine``) add to bitwise the whole operator's adjoint. Other geometries use the scatter
adjoint: the same weights added with 64-bit fixed-point atomics, also order independent.

Kernels use no function of Triton's standard library (tl.zeros, tl.min, ...): those are
interpreted on CPU (TRITON_INTERPRET=1) only when the interpreter was on before Triton was first
imported, while this module's own kernels are interpreted whenever it is imported with it on.

All kernels compile without floating-point contraction (``enable_fp_fusion=False``), so that the
forward, the gather and the scatter round every shared operation alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import torch
import triton
import triton.language as tl

from utils.device import on_input_device

# Forward: (rows, columns) of detector cells per program, and warps per program.
FORWARD_TILE = (8, 16)
FORWARD_WARPS = 4
# Gather: slices per program (at most; fewer, down to 16, for thin volumes), and warps per program.
GATHER_SLICES = 256
GATHER_WARPS = 2
# Per-ray value table: (rows, columns) of detector cells per program; scatter: cells per program.
RAY_TILE = (32, 32)
SCATTER_BLOCK = 128
# Voxels per program of the fixed-point to float conversion.
CONVERT_BLOCK = 1024
# The gather widens its closed-form row and column ranges by this many cells plus a relative
# margin for float32 rounding of index-space coordinates; the exact weight test drops the extras.
RANGE_SLACK = 1e-2
RANGE_SLACK_RELATIVE = 1e-6


def _compile_options(num_warps: int) -> dict:
    return {"num_warps": num_warps, "enable_fp_fusion": False}


@triton.jit
def _ray_direction(geo_ptr, view, r, c):
    """Source, and direction from the source to the centre of cell (r, c): float32 rounding is the
    same in every kernel (the gather relies on it)."""
    base = geo_ptr + view * 12
    sx = tl.load(base + 0)
    sy = tl.load(base + 1)
    sz = tl.load(base + 2)
    di = tl.load(base + 3) + (c * tl.load(base + 6) + r * tl.load(base + 9))
    dj = tl.load(base + 4) + (c * tl.load(base + 7) + r * tl.load(base + 10))
    dl = tl.load(base + 5) + (c * tl.load(base + 8) + r * tl.load(base + 11))
    return sx, sy, sz, di, dj, dl


@triton.jit
def _joseph_params(sx, sy, sz, di, dj, dl):
    """Dominant axis and Joseph parameters of rays: on plane k, in-plane coordinate
    ``sa + (k - sk) * ra`` and slice ``sz + (k - sk) * rz``; ``inv_dk`` is 1 / (step along the
    dominant axis), and the ray length per plane is ``sqrt(di^2 + dj^2 + dl^2) * |inv_dk|``."""
    xdom = tl.abs(di) >= tl.abs(dj)
    inv_dk = 1.0 / tl.where(xdom, di, dj)
    ra = tl.where(xdom, dj, di) * inv_dk
    rz = dl * inv_dk
    sk = tl.where(xdom, sx, sy)
    sa = tl.where(xdom, sy, sx)
    return xdom, inv_dk, ra, rz, sk, sa


@triton.jit
def _ray_length(di, dj, dl, inv_dk):
    return tl.sqrt(di * di + dj * dj + dl * dl) * tl.abs(inv_dk)


@triton.jit
def _minimum(a, b):
    return tl.minimum(a, b)


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _plane_range(active, sz, ra, rz, sk, sa, size_a, depth, n_max):
    """First and last-plus-one plane index over the given rays where a bilinear weight can be in the volume.

    Exactly: planes k with -1 <= a < size_a and -1 <= z < depth. The float32 ends are widened by
    one plane on each side, and rays that seem to miss by less than a plane still count, so that
    no plane where the per-sample test passes after rounding is left out (the gather relies on it).
    """
    ra_safe = tl.where(tl.abs(ra) > 1e-12, ra, 1e-12)
    rz_safe = tl.where(tl.abs(rz) > 1e-12, rz, 1e-12)
    a_lo = sk + (-1.0 - sa) / ra_safe
    a_hi = sk + (size_a.to(tl.float32) - sa) / ra_safe
    z_lo = sk + (-1.0 - sz) / rz_safe
    z_hi = sk + (depth - sz) / rz_safe
    lo = tl.maximum(tl.minimum(a_lo, a_hi), tl.minimum(z_lo, z_hi))
    hi = tl.minimum(tl.maximum(a_lo, a_hi), tl.maximum(z_lo, z_hi))
    hit = active & (lo <= hi + 1.0)
    far = n_max + 2.0
    lo = tl.where(hit, tl.minimum(tl.maximum(lo, -2.0), far), far)
    hi = tl.where(hit, tl.minimum(tl.maximum(hi, -2.0), far), -2.0)
    k_start = tl.maximum(tl.reduce(tl.floor(lo), 0, _minimum).to(tl.int32) - 1, 0)
    k_stop = tl.minimum(tl.reduce(tl.floor(hi), 0, _maximum).to(tl.int32) + 2, n_max)
    return k_start, k_stop


@triton.jit
def _sample(k, sz, ra, rz, sk, sa):
    """In-plane and slice coordinates of the rays on plane k: floors and fractions."""
    t = k * 1.0 - sk
    a = sa + t * ra
    z = sz + t * rz
    a_floor = tl.floor(a)
    z_floor = tl.floor(z)
    return a, z, a_floor, z_floor, a - a_floor, z - z_floor


@triton.jit
def _tile_cells(tile_cols, rows, cols, TILE_R: tl.constexpr, TILE_C: tl.constexpr):
    """Row and column (float32) and mask of this program's 2D tile of detector cells."""
    tile = tl.program_id(0)
    idx = tl.arange(0, TILE_R * TILE_C)
    r = (tile // tile_cols) * TILE_R + idx // TILE_C
    c = (tile % tile_cols) * TILE_C + idx % TILE_C
    return r, c, (r < rows) & (c < cols)


@triton.jit
def _forward_kernel(
    vx_ptr, vy_ptr, y_ptr, geo_ptr, tile_cols, rows, cols, depth, height, width, scale,
    TILE_R: tl.constexpr, TILE_C: tl.constexpr,
):
    view = tl.program_id(1)
    r, c, cell = _tile_cells(tile_cols, rows, cols, TILE_R, TILE_C)
    sx, sy, sz, di, dj, dl = _ray_direction(geo_ptr, view, r.to(tl.float32), c.to(tl.float32))
    xdom, inv_dk, ra, rz, sk, sa = _joseph_params(sx, sy, sz, di, dj, dl)
    size_a = tl.where(xdom, height, width)
    n_planes = tl.where(cell, tl.where(xdom, width, height), 0)
    k_start, k_stop = _plane_range(cell, sz, ra, rz, sk, sa, size_a, depth, tl.maximum(height, width))
    # The padded copies: [W, D+2, H+2] for x-dominant rays, [H, D+2, W+2] for y-dominant ones.
    stride_z = size_a + 2
    stride_k = (depth + 2) * stride_z
    base = tl.where(xdom, vx_ptr, vy_ptr)
    size_af = size_a.to(tl.float32)
    acc = tl.full([TILE_R * TILE_C], 0.0, tl.float32)
    for k in range(k_start, k_stop):
        a, z, a_floor, z_floor, fa, fz = _sample(k, sz, ra, rz, sk, sa)
        # Corners outside the volume read the zero padding; samples with no corner inside are skipped.
        inside = (a >= -1.0) & (a < size_af) & (z >= -1.0) & (z < depth) & (k < n_planes)
        ptr = base + (k * stride_k + (z_floor.to(tl.int32) + 1) * stride_z + a_floor.to(tl.int32) + 1)
        v00 = tl.load(ptr, mask=inside, other=0.0)
        v10 = tl.load(ptr + 1, mask=inside, other=0.0)
        v01 = tl.load(ptr + stride_z, mask=inside, other=0.0)
        v11 = tl.load(ptr + stride_z + 1, mask=inside, other=0.0)
        acc += (1.0 - fz) * ((1.0 - fa) * v00 + fa * v10) + fz * ((1.0 - fa) * v01 + fa * v11)
    length = _ray_length(di, dj, dl, inv_dk)
    out = y_ptr + view.to(tl.int64) * rows * cols + r * cols + c
    tl.store(out, acc * length * scale, mask=cell)


@triton.jit
def _ray_values_kernel(
    y_ptr, values_ptr, bound_ptr, geo_ptr, tile_cols, rows, cols, scale,
    TILE_R: tl.constexpr, TILE_C: tl.constexpr, STORE: tl.constexpr,
):
    """Per ray, y * length * scale, into values [V, cols, rows] if STORE (column-major per view: the
    gather reads neighbouring rows of one column); per program, the largest magnitude (infinite
    where one is NaN or infinite), a bound on any one contribution of the adjoint.

    The tile is [columns, rows], so that Triton reads y along columns and writes values along rows.
    """
    view = tl.program_id(1)
    tile = tl.program_id(0)
    r = (tile // tile_cols) * TILE_R + tl.arange(0, TILE_R)[None, :]
    c = (tile % tile_cols) * TILE_C + tl.arange(0, TILE_C)[:, None]
    cell = (r < rows) & (c < cols)
    sx, sy, sz, di, dj, dl = _ray_direction(geo_ptr, view, r.to(tl.float32), c.to(tl.float32))
    xdom, inv_dk, ra, rz, sk, sa = _joseph_params(sx, sy, sz, di, dj, dl)
    plane = view.to(tl.int64) * rows * cols
    y = tl.load(y_ptr + plane + r * cols + c, mask=cell, other=0.0)
    value = y * _ray_length(di, dj, dl, inv_dk) * scale
    if STORE:
        tl.store(values_ptr + plane + c * rows + r, value, mask=cell)
    magnitude = tl.abs(value)
    magnitude = tl.where(magnitude < float("inf"), magnitude, float("inf"))
    largest = tl.reduce(tl.reduce(magnitude, 1, _maximum), 0, _maximum)
    tl.store(bound_ptr + view * tl.num_programs(0) + tile, largest)


@triton.jit
def _to_fixed(weight, fixed):
    """``weight`` in units of 1 / fixed, rounded to the nearest integer (halves away from zero)."""
    scaled = weight.to(tl.float64) * fixed
    return (scaled + tl.where(scaled >= 0, 0.5, -0.5)).to(tl.int64)


@triton.jit
def _gather_kernel(
    values_ptr, acc_ptr, geo_ptr, fixed_ptr, n_views, rows, cols, depth, height, width, slack,
    BLOCK_L: tl.constexpr, ROWS_MAX: tl.constexpr,
):
    """Adjoint of the voxels (slices of this block, row j, column i) by gathering, view by view.

    A ray whose dominant axis is x samples plane k = i at in-plane coordinate a and slice z; voxel
    (l, j, i) gets w_a * w_z * value, w_a = 1 - frac(a) if floor(a) == j, frac(a) if
    floor(a) + 1 == j (same for z and l): exactly the forward's float32 operations and weights.
    y-dominant rays likewise on plane k = j with a compared to i.
    """
    position = tl.program_id(0)
    i = position % width
    j = position // width
    slices = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    lf = slices.to(tl.float32)
    lane = slices < depth
    fixed = tl.load(fixed_ptr)
    acc = tl.full([BLOCK_L], 0, tl.int64)
    # Pointers advance view by view (64-bit: a view's offset may pass 2^31).
    base = geo_ptr
    values = values_ptr
    for _view in range(0, n_views):
        sx = tl.load(base + 0)
        sy = tl.load(base + 1)
        sz = tl.load(base + 2)
        d0x = tl.load(base + 3)
        d0y = tl.load(base + 4)
        d0z = tl.load(base + 5)
        ux = tl.load(base + 6)
        uy = tl.load(base + 7)
        vz = tl.load(base + 11)
        total = tl.full([BLOCK_L], 0.0, tl.float32)
        for x_dominant in tl.static_range(2):
            if x_dominant == 1:
                kf = i * 1.0
                tf = j * 1.0
                # Detector column where the ray through (k, target -/+ 1) lands: a projective map.
                px = kf - sx
                py = tf - sy
                c_one = ((py - 1.0) * d0x - px * d0y) / (px * uy - (py - 1.0) * ux)
                c_two = ((py + 1.0) * d0x - px * d0y) / (px * uy - (py + 1.0) * ux)
            else:
                kf = j * 1.0
                tf = i * 1.0
                px = tf - sx
                py = kf - sy
                c_one = (py * d0x - (px - 1.0) * d0y) / ((px - 1.0) * uy - py * ux)
                c_two = (py * d0x - (px + 1.0) * d0y) / ((px + 1.0) * uy - py * ux)
            c_lo = tl.maximum(-tl.floor(slack - tl.minimum(c_one, c_two)), 0.0).to(tl.int32)
            c_hi = tl.minimum(tl.floor(tl.maximum(c_one, c_two) + slack), cols - 1.0).to(tl.int32)
            for c in range(c_lo, c_hi + 1):
                # The forward's direction: the row terms it adds are zeros on a circular orbit.
                cf = c * 1.0
                di = d0x + cf * ux
                dj = d0y + cf * uy
                xdom, inv_dk, ra, rz, sk, sa = _joseph_params(sx, sy, sz, di, dj, d0z)
                if xdom == (x_dominant == 1):
                    t = kf - sk
                    a = sa + t * ra
                    a_floor = tl.floor(a)
                    fa = a - a_floor
                    if (a_floor == tf) | (a_floor + 1.0 == tf):
                        wa = tl.where(a_floor == tf, 1.0 - fa, fa)
                        # On this plane row r has slice sz + t * (d0z + r * vz) * inv_dk, linear in r.
                        gain = t * inv_dk
                        rows_per_slice = 1.0 / (gain * vz)
                        row_at_zero = -(sz + gain * d0z) * rows_per_slice
                        r_one = (lf - 1.0) * rows_per_slice + row_at_zero
                        r_two = (lf + 1.0) * rows_per_slice + row_at_zero
                        r_lo = tl.maximum(-tl.floor(slack - tl.minimum(r_one, r_two)), 0.0)
                        r_hi = tl.minimum(tl.floor(tl.maximum(r_one, r_two) + slack), rows - 1.0)
                        r_hi = tl.where(lane, r_hi, -1.0)
                        column = values + c * rows
                        for q in tl.static_range(ROWS_MAX):
                            rf = r_lo + q
                            z = sz + t * ((d0z + rf * vz) * inv_dk)
                            z_floor = tl.floor(z)
                            fz = z - z_floor
                            use = (rf <= r_hi) & ((z_floor == lf) | (z_floor + 1.0 == lf))
                            wz = tl.where(z_floor == lf, 1.0 - fz, fz)
                            value = tl.load(column + rf.to(tl.int32), mask=use, other=0.0)
                            total += value * (wa * wz)
        # One rounding per view: views add exactly, in any grouping.
        acc += _to_fixed(total, fixed)
        base += 12
        values += rows * cols
    tl.store(acc_ptr + (slices * height + j) * width + i, acc, mask=lane)


@triton.jit
def _scatter_kernel(
    y_ptr, acc_ptr, geo_ptr, fixed_ptr, rows, cols, depth, height, width, scale, BLOCK: tl.constexpr
):
    view = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cell = offs < rows * cols
    r = offs // cols
    c = offs % cols
    sx, sy, sz, di, dj, dl = _ray_direction(geo_ptr, view, r.to(tl.float32), c.to(tl.float32))
    xdom, inv_dk, ra, rz, sk, sa = _joseph_params(sx, sy, sz, di, dj, dl)
    size_a = tl.where(xdom, height, width)
    n_planes = tl.where(cell, tl.where(xdom, width, height), 0)
    k_start, k_stop = _plane_range(cell, sz, ra, rz, sk, sa, size_a, depth, tl.maximum(height, width))
    stride_a = tl.where(xdom, width, 1)
    stride_k = tl.where(xdom, 1, width)
    plane = height * width
    fixed = tl.load(fixed_ptr)
    y = tl.load(y_ptr + view.to(tl.int64) * rows * cols + offs, mask=cell, other=0.0)
    value = y * _ray_length(di, dj, dl, inv_dk) * scale
    for k in range(k_start, k_stop):
        a, z, a_floor, z_floor, fa, fz = _sample(k, sz, ra, rz, sk, sa)
        ai = a_floor.to(tl.int32)
        zi = z_floor.to(tl.int32)
        ok = k < n_planes
        a_in0 = (ai >= 0) & (ai < size_a)
        a_in1 = (ai + 1 >= 0) & (ai + 1 < size_a)
        z_in0 = ok & (zi >= 0) & (zi < depth)
        z_in1 = ok & (zi + 1 >= 0) & (zi + 1 < depth)
        off = zi * plane + ai * stride_a + k * stride_k
        # Weights multiplied as the gather does, so that one ray per view gives bitwise its result.
        w00 = _to_fixed(value * ((1.0 - fa) * (1.0 - fz)), fixed)
        w10 = _to_fixed(value * (fa * (1.0 - fz)), fixed)
        w01 = _to_fixed(value * ((1.0 - fa) * fz), fixed)
        w11 = _to_fixed(value * (fa * fz), fixed)
        tl.atomic_add(acc_ptr + off, w00, mask=a_in0 & z_in0, sem="relaxed")
        tl.atomic_add(acc_ptr + off + stride_a, w10, mask=a_in1 & z_in0, sem="relaxed")
        tl.atomic_add(acc_ptr + off + plane, w01, mask=a_in0 & z_in1, sem="relaxed")
        tl.atomic_add(acc_ptr + off + plane + stride_a, w11, mask=a_in1 & z_in1, sem="relaxed")


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


def geometry_table(vecs: torch.Tensor) -> torch.Tensor:
    """Per-view float32 rows [V, 12] that every kernel reads, from index-space vectors [V, 12].

    Columns: source, source to the centre of cell (0, 0) (subtracted in float64), column step,
    row step.
    """
    vecs = vecs.to(torch.float64)
    src = vecs[:, 0:3]
    table = torch.cat([src, vecs[:, 3:6] - src, vecs[:, 6:12]], dim=1)
    return table.to(torch.float32).contiguous()


class GatherPlan(NamedTuple):
    """What the gather needs besides the data: the range slack and a bound on rows per voxel."""

    slack: float
    rows_max: int


def gather_plan(geo: torch.Tensor, det_shape: Tuple[int, int], vol_shape) -> "GatherPlan | None":
    """The gather's parameters for the views of ``geo`` (:func:`geometry_table`), or None when it
    does not apply: a detector whose rows have an in-plane step or whose columns a z step (not a
    circular orbit), or a source so close to the volume that the column map is not monotone on it.
    """
    rows, cols = det_shape
    depth, height, width = vol_shape
    g = geo.detach().cpu().to(torch.float64)
    src, d0, du, dv = g[:, 0:3], g[:, 3:6], g[:, 6:9], g[:, 9:12]
    if bool((du[:, 2] != 0).any() or (dv[:, 0:2] != 0).any() or (dv[:, 2] == 0).any()):
        return None
    # The column map's denominator (a cross product with the column step) must keep its sign on the
    # in-plane box one voxel beyond the volume, where the gather evaluates it.
    corners = torch.tensor([[-1, -1], [width, -1], [-1, height], [width, height]], dtype=torch.float64)
    px = corners[None, :, 0] - src[:, None, 0]
    py = corners[None, :, 1] - src[:, None, 1]
    denominator = px * du[:, None, 1] - py * du[:, None, 0]
    if not bool(((denominator > 0).all(1) | (denominator < 0).all(1)).all()):
        return None
    # Rows per slice on a plane are 1 / (t |vz|), t the fraction of the way from the source to the
    # detector: at least the source's in-plane distance to that box over its farthest cell's.
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    reach = math.hypot(width + 1, height + 1) / 2
    near = (src[:, 0:2] - centre).norm(dim=1) - reach
    far = torch.maximum(d0[:, 0:2].norm(dim=1), (d0[:, 0:2] + (cols - 1) * du[:, 0:2]).norm(dim=1))
    if bool((near <= 0).any()):
        return None
    t_min = float((near / far).min())
    extent = float(torch.cat([src.abs(), d0.abs(), (cols * du).abs(), (rows * dv).abs()], 1).max())
    step = float(torch.minimum(du[:, 0:2].norm(dim=1), dv[:, 2].abs()).min())
    slack = RANGE_SLACK + RANGE_SLACK_RELATIVE * extent / step
    span = 2.0 / (t_min * float(dv[:, 2].abs().min()))
    rows_max = int(math.floor(span * (1 + 1e-4) + 2 * slack)) + 1
    return GatherPlan(slack, rows_max)


@on_input_device
def forward(
    volume: torch.Tensor,
    vecs: torch.Tensor,
    det_shape,
    voxel_size: float,
    *,
    tile: Tuple[int, int] = FORWARD_TILE,
    num_warps: int = FORWARD_WARPS,
) -> torch.Tensor:
    """Project ``volume`` [D, H, W] (float32) on the views of ``vecs`` -> [V, rows, cols].

    ``tile`` (powers of two) and ``num_warps`` only change the speed, never the result.
    """
    _check(volume)
    rows, cols = det_shape
    depth, height, width = volume.shape
    geo = geometry_table(vecs).to(volume.device)
    # Zero-padded copies, plane-major along each dominant axis: [W, D+2, H+2] and [H, D+2, W+2].
    vol_x = torch.nn.functional.pad(volume.permute(2, 0, 1), (1, 1, 1, 1)).contiguous()
    vol_y = torch.nn.functional.pad(volume.permute(1, 0, 2), (1, 1, 1, 1)).contiguous()
    out = torch.empty((vecs.shape[0], rows, cols), dtype=torch.float32, device=volume.device)
    tile_cols = triton.cdiv(cols, tile[1])
    grid = (triton.cdiv(rows, tile[0]) * tile_cols, vecs.shape[0])
    _forward_kernel[grid](
        vol_x, vol_y, out, geo, tile_cols, rows, cols, depth, height, width, float(voxel_size),
        TILE_R=tile[0], TILE_C=tile[1], **_compile_options(num_warps),
    )
    return out


def _fixed_unit(largest: torch.Tensor, ray_bound: int, combine) -> torch.Tensor:
    """The fixed-point unit (float64 [1]) from the largest contribution of this block of views.

    A voxel gets at most one contribution per ray, each at most the largest one; the unit is the
    power of two that puts ray_bound such contributions at or below 2^62, so no sum overflows
    int64. The price: contributions far below the largest keep fewer bits (with 360 x 512^2 rays,
    one 1e6 times smaller still has about 1e-5 relative precision). A NaN or infinity anywhere makes
    the largest contribution infinite, so every block of a split operator sees it and the whole
    volume comes out NaN instead of silently dropping the value.
    """
    largest = largest.double().reshape(1)
    if combine is not None:
        combine(largest, "max")
    bound = largest.mul_(1.001 * ray_bound).clamp_(min=1e-250)
    fixed = torch.exp2(torch.floor(62.0 - torch.log2(bound))).clamp_(max=2.0**1000)
    return torch.where(torch.isfinite(bound), fixed, math.nan)


def _to_float(acc: torch.Tensor, fixed: torch.Tensor, combine) -> torch.Tensor:
    if combine is not None:
        combine(acc, "sum")
    out = torch.empty(acc.shape, dtype=torch.float32, device=acc.device)
    grid = (triton.cdiv(acc.numel(), CONVERT_BLOCK),)
    _fixed_to_float_kernel[grid](acc, out, fixed, acc.numel(), BLOCK_SIZE=CONVERT_BLOCK)
    return out


@on_input_device
def adjoint(
    proj: torch.Tensor, vecs: torch.Tensor, vol_shape, voxel_size: float, ray_bound=None, combine=None
) -> torch.Tensor:
    """Transpose of :func:`forward`: [V, rows, cols] -> [D, H, W], bitwise the same on every call.

    Gathers on a circular orbit (:func:`adjoint_gather`), scatters otherwise
    (:func:`adjoint_scatter`). ``ray_bound`` (default: the rays of ``proj``) bounds the number of
    rays whose contributions any call with the same fixed-point unit adds; ``combine(t, how)``,
    when given, reduces in place over the view blocks of one operator
    (physics.ConeBeamCT.view_block): "max" for the largest contribution, then "sum" for the int64
    accumulators, so the blocks together give bitwise the whole operator's adjoint.
    """
    _check(proj)
    geo = geometry_table(vecs).to(proj.device)
    plan = gather_plan(geo, tuple(proj.shape[1:]), tuple(vol_shape))
    if plan is None:
        return _scatter(proj, geo, vol_shape, voxel_size, ray_bound, combine)
    return _gather(proj, geo, plan, vol_shape, voxel_size, ray_bound, combine, GATHER_SLICES, GATHER_WARPS)


@on_input_device
def adjoint_gather(
    proj: torch.Tensor,
    vecs: torch.Tensor,
    vol_shape,
    voxel_size: float,
    ray_bound=None,
    combine=None,
    *,
    slices: int = GATHER_SLICES,
    num_warps: int = GATHER_WARPS,
) -> torch.Tensor:
    """:func:`adjoint` by gathering, for circular orbits only (ValueError otherwise).

    ``slices`` (a power of two, the most slices per program) and ``num_warps`` only change the
    speed, never the result.
    """
    _check(proj)
    geo = geometry_table(vecs).to(proj.device)
    plan = gather_plan(geo, tuple(proj.shape[1:]), tuple(vol_shape))
    if plan is None:
        raise ValueError(
            "adjoint_gather needs a circular orbit (detector rows stepping along z only, columns "
            "in-plane only, source clear of the volume); use adjoint_scatter"
        )
    return _gather(proj, geo, plan, vol_shape, voxel_size, ray_bound, combine, slices, num_warps)


@on_input_device
def adjoint_scatter(
    proj: torch.Tensor, vecs: torch.Tensor, vol_shape, voxel_size: float, ray_bound=None, combine=None
) -> torch.Tensor:
    """:func:`adjoint` by scattering each ray's weights with 64-bit fixed-point atomic adds (any geometry)."""
    _check(proj)
    return _scatter(proj, geometry_table(vecs).to(proj.device), vol_shape, voxel_size, ray_bound, combine)


def _ray_values(proj: torch.Tensor, geo: torch.Tensor, voxel_size: float, store: bool):
    """The largest magnitude of a ray's contribution (float32 [1]), and, if ``store``, the gather's
    per-ray values [V, cols, rows] (else None)."""
    views, rows, cols = proj.shape
    values = torch.empty((views, cols, rows) if store else (1,), dtype=torch.float32, device=proj.device)
    tile_cols = triton.cdiv(cols, RAY_TILE[1])
    grid = (triton.cdiv(rows, RAY_TILE[0]) * tile_cols, views)
    partial = torch.empty(grid[::-1], dtype=torch.float32, device=proj.device)
    _ray_values_kernel[grid](
        proj, values, partial, geo, tile_cols, rows, cols, float(voxel_size),
        TILE_R=RAY_TILE[0], TILE_C=RAY_TILE[1], STORE=store, **_compile_options(4),
    )
    return partial.amax(), values if store else None


def _gather(proj, geo, plan: GatherPlan, vol_shape, voxel_size, ray_bound, combine, slices, num_warps):
    views, rows, cols = proj.shape
    depth, height, width = vol_shape
    largest, values = _ray_values(proj.contiguous(), geo, voxel_size, store=True)
    fixed = _fixed_unit(largest, views * rows * cols if ray_bound is None else ray_bound, combine)
    acc = torch.empty((depth, height, width), dtype=torch.int64, device=proj.device)
    # At least 16 lanes: Triton handles blocks of a few elements poorly.
    block = max(min(slices, triton.next_power_of_2(depth)), 16)
    grid = (height * width, triton.cdiv(depth, block))
    _gather_kernel[grid](
        values, acc, geo, fixed, views, rows, cols, depth, height, width, plan.slack,
        BLOCK_L=block, ROWS_MAX=plan.rows_max, **_compile_options(num_warps),
    )
    return _to_float(acc, fixed, combine)


def _scatter(proj, geo, vol_shape, voxel_size, ray_bound, combine):
    views, rows, cols = proj.shape
    proj = proj.contiguous()
    largest, _ = _ray_values(proj, geo, voxel_size, store=False)
    fixed = _fixed_unit(largest, views * rows * cols if ray_bound is None else ray_bound, combine)
    acc = torch.zeros(tuple(vol_shape), dtype=torch.int64, device=proj.device)
    grid = (triton.cdiv(rows * cols, SCATTER_BLOCK), views)
    _scatter_kernel[grid](
        proj, acc, geo, fixed, rows, cols, *vol_shape, float(voxel_size), BLOCK=SCATTER_BLOCK,
        **_compile_options(4),
    )
    return _to_float(acc, fixed, combine)
