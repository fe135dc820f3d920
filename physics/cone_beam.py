"""Cone-beam CT forward projector (Joseph's method) and its exact adjoint, on CPU and GPU.

Each ray runs from the source to the centre of one detector cell. It is sampled on every voxel
plane perpendicular to its dominant in-plane axis (x when |dx| >= |dy|, else y), with bilinear
interpolation in the two other coordinates (zero outside the volume), and the samples are summed
times the ray length per plane. ``A_adjoint`` applies the transpose of exactly these weights, so
the dot-product test holds to rounding.

Two backends compute the same numbers: a pure-torch one (any device, float32 or float64; samples
through ``grid_sample``, whose input gradient is the transposed scatter; rays that miss the volume
and planes a ray cannot touch are skipped; blocks of ``SAMPLE_BUDGET`` samples bound the memory)
and Triton kernels (CUDA, float32; the adjoint gathers: each voxel adds the weights of its rays,
found in closed form on a circular orbit, view by view as 64-bit fixed-point integers, so it gives
bitwise the same volume on every call and view blocks add exactly; other orbits scatter with
fixed-point atomic adds, equally reproducible), chosen by ``backend="auto"`` when a CUDA float32
tensor comes and Triton imports. (The torch path's CUDA adjoint, the gradient of ``grid_sample``,
adds floats atomically and is reproducible only to rounding.)

On CPU the torch backend caches, per operator, view set (kept or all views) and dtype, a
:class:`SamplingPlan`: the same weights as two sparse matrices, built on first use and applied with
scipy in a few threads, 15-30x faster than sampling anew at the CPU demo's size. A plan is kept
only if it fits the operator's ``plan_budget`` bytes (``PLAN_BUDGET`` by default); a larger one is
not built and that view set is sampled on the fly as above, as are inputs that require grad.
Without scipy the on-the-fly path runs, with one warning.
"""

from __future__ import annotations

import copy
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from physics.geometry import ConeBeamGeometry
from physics.operator import check_shape

# Samples per torch block: 2M samples keep a block's grid and temporaries near 100 MB.
SAMPLE_BUDGET = 1 << 21
# Samples whose plan entries are computed at once: small enough for the temporaries to stay in cache.
PLAN_BLOCK = 1 << 16
# Rays whose geometry is prepared at once by the torch backend.
RAY_BUDGET = 1 << 20
# Bytes one cached sampling plan may take by default: 1 GiB holds the 90 views of a 32x128x128
# volume on its 256x256 demo detector (about 0.56 GB in float32), not its 360 (about 2.2 GB).
PLAN_BUDGET = 1 << 30
# A plan is split into about this many pieces of consecutive views, applied in parallel threads.
PLAN_PIECES = 8


def index_space_vectors(geometry: ConeBeamGeometry, views: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-view ray vectors in voxel-index coordinates, float64 [V, 12].

    Columns: source (i, j, l), centre of detector cell (0, 0), step to the next column, step to
    the next row; (i, j, l) are continuous column, row and slice indices of the volume.
    """
    depth, height, width = geometry.volume_shape
    vec = geometry.view_vectors(views)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2, (depth - 1) / 2], dtype=torch.float64)
    scale = 1.0 / geometry.voxel_size
    src = vec[:, 0:3] * scale + centre
    du = vec[:, 6:9] * scale
    dv = vec[:, 9:12] * scale
    det0 = (
        vec[:, 3:6] * scale + centre - 0.5 * (geometry.det_cols - 1) * du - 0.5 * (geometry.det_rows - 1) * dv
    )
    return torch.cat([src, det0, du, dv], dim=1)


def _ray_params(vecs: torch.Tensor, det_shape: Tuple[int, int], vol_shape: Tuple[int, int, int]):
    """Joseph parameters of every ray of the given views (flattened view-major, then row, column).

    Along a ray sampled at integer plane index k: in-plane index ``a0 + k * ra``, slice index
    ``z0 + k * rz``; each sample counts ``length`` (ray length per plane, in voxels).
    """
    rows, cols = det_shape
    depth, height, width = vol_shape
    dtype, device = vecs.dtype, vecs.device
    r = torch.arange(rows, dtype=dtype, device=device).view(1, rows, 1)
    c = torch.arange(cols, dtype=dtype, device=device).view(1, 1, cols)
    src = [vecs[:, i].view(-1, 1, 1) for i in range(3)]
    dirs = [
        (
            vecs[:, 3 + i].view(-1, 1, 1)
            + c * vecs[:, 6 + i].view(-1, 1, 1)
            + r * vecs[:, 9 + i].view(-1, 1, 1)
            - src[i]
        ).reshape(-1)
        for i in range(3)
    ]
    di, dj, dl = dirs
    si, sj, sl = [s.expand(-1, rows, cols).reshape(-1) for s in src]
    xdom = di.abs() >= dj.abs()
    dk = torch.where(xdom, di, dj)
    ra = torch.where(xdom, dj, di) / dk
    rz = dl / dk
    sk = torch.where(xdom, si, sj)
    a0 = torch.where(xdom, sj, si) - sk * ra
    z0 = sl - sk * rz
    length = torch.sqrt(di * di + dj * dj + dl * dl) / dk.abs()
    return a0, ra, z0, rz, length, xdom


def _plane_ranges(params, vol_shape: Tuple[int, int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per ray, the interval of plane indices where some bilinear weight can be non-zero.

    The interval is empty (lo > hi) for rays that miss the volume.
    """
    a0, ra, z0, rz, _, xdom = params
    depth, height, width = vol_shape
    size_a = torch.where(xdom, height, width).to(a0.dtype)
    n_planes = torch.where(xdom, width, height).to(a0.dtype)
    bounds_lo, bounds_hi = [torch.zeros_like(a0)], [n_planes - 1]
    for start, slope, size in ((a0, ra, size_a), (z0, rz, depth)):
        safe = torch.where(slope.abs() > 1e-12, slope, torch.full_like(slope, 1e-12))
        t1, t2 = (-1.0 - start) / safe, (size - start) / safe
        bounds_lo.append(torch.minimum(t1, t2))
        bounds_hi.append(torch.maximum(t1, t2))
    lo = torch.stack(bounds_lo).amax(0)
    hi = torch.stack(bounds_hi).amin(0)
    return lo, hi


def _sample_grid(params, k: torch.Tensor, vol_shape: Tuple[int, int, int]) -> torch.Tensor:
    """``grid_sample`` coordinates [1, n, K, 1, 3] of the rays' samples on planes ``k``.

    On its own plane each sample has an integer index, so trilinear interpolation reduces to the
    bilinear Joseph weights; out-of-volume samples read the zero padding.
    """
    a0, ra, z0, rz, _, xdom = params
    depth, height, width = vol_shape
    a = a0[:, None] + k * ra[:, None]
    z = z0[:, None] + k * rz[:, None]
    kk = k.expand_as(a)
    xd = xdom[:, None]
    col, row = torch.where(xd, kk, a), torch.where(xd, a, kk)
    # align_corners=False maps index i of a size-n axis to (2 i + 1) / n - 1, valid for n = 1 too.
    grid = torch.stack(
        [(2 * col + 1) / width - 1, (2 * row + 1) / height - 1, (2 * z + 1) / depth - 1], dim=-1
    )
    return grid[None, :, :, None, :]


def _torch_blocks(
    vecs: torch.Tensor, det_shape, vol_shape
) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (ray indices, ray lengths, sample grid) over the rays of ``vecs`` that meet the volume."""
    rays_per_view = det_shape[0] * det_shape[1]
    n_planes = max(vol_shape[1], vol_shape[2])
    views_per_chunk = max(1, RAY_BUDGET // rays_per_view)
    rays_per_block = max(1, SAMPLE_BUDGET // n_planes)
    for v0 in range(0, vecs.shape[0], views_per_chunk):
        params = _ray_params(vecs[v0 : v0 + views_per_chunk], det_shape, vol_shape)
        lo, hi = _plane_ranges(params, vol_shape)
        hit = torch.nonzero(lo <= hi).squeeze(1)
        for b0 in range(0, hit.numel(), rays_per_block):
            rays = hit[b0 : b0 + rays_per_block]
            block = tuple(p[rays] for p in params)
            k_start = max(int(torch.floor(lo[rays].min())), 0)
            k_stop = min(int(torch.floor(hi[rays].max())) + 2, n_planes)
            k = torch.arange(k_start, k_stop, dtype=vecs.dtype, device=vecs.device)
            yield rays + v0 * rays_per_view, block[4], _sample_grid(block, k, vol_shape)


def _grid_sample(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(volume[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _torch_forward(volume: torch.Tensor, vecs: torch.Tensor, det_shape, voxel_size: float) -> torch.Tensor:
    out = torch.zeros(vecs.shape[0] * det_shape[0] * det_shape[1], dtype=volume.dtype, device=volume.device)
    for rays, length, grid in _torch_blocks(vecs, det_shape, tuple(volume.shape)):
        out[rays] = _grid_sample(volume, grid).sum(dim=(0, 1, 3, 4)) * length
    return out.view(vecs.shape[0], *det_shape) * voxel_size


def _torch_adjoint(
    proj: torch.Tensor, vecs: torch.Tensor, vol_shape, voxel_size: float, ray_bound=None, combine=None
) -> torch.Tensor:
    # Float sums: ray_bound (the Triton adjoint's fixed-point range) has no use here.
    det_shape = tuple(proj.shape[1:])
    flat_proj = proj.reshape(-1)
    out = torch.zeros(vol_shape, dtype=proj.dtype, device=proj.device)
    volume = out[None, None]
    for rays, length, grid in _torch_blocks(vecs, det_shape, vol_shape):
        weights = (flat_proj[rays] * length)[None, None, :, None, None].expand(1, 1, -1, grid.shape[2], 1)
        # grid_sample's input gradient scatters with the transpose of its interpolation weights.
        grad, _ = torch.ops.aten.grid_sampler_3d_backward(
            weights.contiguous(), volume, grid, 0, 0, False, [True, False]
        )
        out += grad[0, 0]
    out = out * voxel_size
    if combine is not None:
        combine(out, "sum")
    return out


# ---------------------------------------------------------------- cached sampling plan (CPU)


class _Columns(NamedTuple):
    """In-plane layout of the (view, detector column) pairs of some views, n = views * cols of them.

    Detector rows step along z only, so all rays of one column cross the same in-plane voxels.
    """

    coord: torch.Tensor  # [n, K] in-plane coordinate a on plane k < K = max(H, W)
    inside: torch.Tensor  # [n, K] -1 < a < size along a, and k a plane of the volume
    xdom: torch.Tensor  # [n] x-dominant
    first: torch.Tensor  # [n] first inside plane (inside planes are consecutive: a is monotone in k)
    count: torch.Tensor  # [n] number of inside planes


class _Rays(NamedTuple):
    """The r rays of some views that sample the volume: which planes they sample, and their z lines."""

    total: int  # number of rays of the views, hitting or not
    index: torch.Tensor  # [r] position in (view, row, column) order
    column: torch.Tensor  # [r] index of its (view, column) pair
    first: torch.Tensor  # [r] first sampled plane (float64, integer valued)
    count: torch.Tensor  # [r] number of sampled planes
    z0: torch.Tensor  # [r] slice coordinate on plane k is z0 + k rz
    rz: torch.Tensor
    length: torch.Tensor  # [r] ray length per plane, in voxels


def _columns(vecs: torch.Tensor, cols: int, vol_shape) -> _Columns:
    """The (view, column) pairs of the views of ``vecs``, view-major."""
    _, height, width = vol_shape
    a0, ra, _, _, _, xdom = _ray_params(vecs, (1, cols), vol_shape)
    k = torch.arange(max(height, width), dtype=vecs.dtype)
    coord = a0[:, None] + k * ra[:, None]
    size_a = torch.where(xdom, height, width)[:, None]
    n_planes = torch.where(xdom, width, height)[:, None]
    inside = (coord > -1) & (coord < size_a) & (k < n_planes)
    count = inside.sum(1)
    first = torch.where(count > 0, inside.to(torch.uint8).argmax(1), 0)
    return _Columns(coord, inside, xdom, first, count)


def _rays(vecs: torch.Tensor, det_shape, vol_shape, columns: _Columns) -> _Rays:
    """A ray samples the inside planes of its column where its slice coordinate lies in (-1, D)."""
    rows, cols = det_shape
    _, _, z0, rz, length, _ = _ray_params(vecs, det_shape, vol_shape)
    column = (torch.arange(vecs.shape[0])[:, None, None] * cols + torch.arange(cols)).expand(-1, rows, -1)
    column = column.reshape(-1)
    safe = torch.where(rz.abs() > 1e-12, rz, torch.full_like(rz, 1e-12))
    t1, t2 = (-1.0 - z0) / safe, (vol_shape[0] - z0) / safe
    col_first = columns.first[column].to(z0.dtype)
    first = torch.maximum(torch.floor(torch.minimum(t1, t2)) + 1, col_first)
    last = torch.minimum(torch.ceil(torch.maximum(t1, t2)) - 1, col_first + columns.count[column] - 1)
    count = (last - first + 1).clamp_min(0).long()
    index = torch.nonzero(count).squeeze(1)
    kept = (column, first, count, z0, rz, length)
    return _Rays(count.numel(), index, *(t.index_select(0, index) for t in kept))


def _index_dtype(largest: int) -> torch.dtype:
    """Index type of a sparse matrix whose shape, entry count and indices reach at most ``largest``."""
    return torch.int32 if largest < 2**31 else torch.int64


def _along_z_nbytes(n_rays: int, n_planes: int, n_samples: int, depth: int, dtype: torch.dtype) -> int:
    """Bytes of the stage-2 matrix that :func:`_along_z_matrix` builds (2 entries per sample)."""
    index = _index_dtype(max(n_rays, 2 * n_samples, n_planes * (depth + 2))).itemsize
    return 2 * n_samples * (dtype.itemsize + index) + (n_rays + 1) * index


def _csr(data: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor, shape: Tuple[int, int]):
    """scipy CSR matrix of rows with ``counts`` entries each, sharing the tensors' memory."""
    import scipy.sparse

    indptr = torch.zeros(shape[0] + 1, dtype=indices.dtype)
    torch.cumsum(counts, 0, out=indptr[1:])
    return scipy.sparse.csr_matrix((data.numpy(), indices.numpy(), indptr.numpy()), shape=shape)


def _in_plane_matrix(columns: _Columns, vol_shape, dtype: torch.dtype):
    """Stage 1, [planes, H*W]: on each inside plane of each column, its two in-plane bilinear weights."""
    _, height, width = vol_shape
    cell, k = torch.nonzero(columns.inside, as_tuple=True)
    coord = columns.coord[cell, k]
    low = torch.floor(coord)
    frac = coord - low
    pair = torch.stack([low, low + 1], 1).long()
    valid = (pair >= 0) & (pair < torch.where(columns.xdom[cell], height, width)[:, None])
    voxel = torch.where(columns.xdom[cell, None], pair * width + k[:, None], k[:, None] * width + pair)
    weights = torch.stack([1 - frac, frac], 1)
    index = _index_dtype(max(2 * k.numel(), height * width))
    return _csr(weights[valid].to(dtype), voxel[valid].to(index), valid.sum(1), (k.numel(), height * width))


def _along_z_matrix(columns: _Columns, rays: _Rays, depth: int, scale: float, dtype: torch.dtype):
    """Stage 2, [rays, planes*(D+2)]: each ray's linear weights in z on its planes, times its length.

    Stage 1's output has D+2 entries per plane, slices -1..D with the outer two zero, so a sample
    in (-1, D) has both neighbours there; clamping keeps samples that rounding puts on the border.
    """
    n_rays, n_planes = rays.total, int(columns.count.sum())
    ends = torch.cumsum(rays.count, 0)
    n_samples = int(rays.count.sum())
    index = _index_dtype(max(n_rays, 2 * n_samples, n_planes * (depth + 2)))
    data = torch.empty(n_samples, 2, dtype=dtype)
    indices = torch.empty(n_samples, 2, dtype=index)
    # Per ray: row of its column's plane 0 in stage 1's output; the plane of sample s of the piece is
    # s + shift (float64 is exact for these integers).
    plane_row = (torch.cumsum(columns.count, 0) - columns.count - columns.first)[rays.column].double()
    shift = rays.first - (ends - rays.count)
    weight = rays.length * scale
    bounds = torch.searchsorted(ends, torch.arange(0, n_samples, PLAN_BLOCK), right=True).tolist()
    for r0, r1 in zip(bounds, bounds[1:] + [rays.count.numel()], strict=True):
        s0, s1 = int(ends[r0] - rays.count[r0]), int(ends[r1 - 1])
        ray = torch.repeat_interleave(torch.arange(r0, r1), rays.count[r0:r1], output_size=s1 - s0)
        k = torch.arange(s0, s1, dtype=torch.float64).add_(shift.index_select(0, ray))
        z = rays.z0.index_select(0, ray).addcmul_(k, rays.rz.index_select(0, ray))
        low = torch.floor(z).clamp_(-1, depth - 1)
        frac = z.sub_(low).clamp_(0, 1)
        w = weight.index_select(0, ray)
        data[s0:s1, 1] = frac * w
        data[s0:s1, 0] = frac.neg_().add_(1).mul_(w)
        col = plane_row.index_select(0, ray).add_(k).mul_(depth + 2).add_(low).add_(1)
        indices[s0:s1, 0] = col
        indices[s0:s1, 1] = col.add_(1)
    entries = torch.zeros(n_rays, dtype=torch.long).index_copy_(0, rays.index, 2 * rays.count)
    return _csr(data.view(-1), indices.view(-1), entries, (n_rays, n_planes * (depth + 2)))


class _PlanPiece:
    """The two stages of a few consecutive views, and the slice of the flat projections they fill."""

    def __init__(self, in_plane, along_z, first_ray: int) -> None:
        self.in_plane = in_plane
        self.along_z = along_z
        self.rays = slice(first_ray, first_ray + along_z.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for m in (self.in_plane, self.along_z) for a in (m.data, m.indices, m.indptr))


def _map_pieces(fn: Callable, pieces: List[_PlanPiece]) -> Iterator:
    """``fn(piece)`` for each piece, in order, run on torch's CPU threads (scipy releases the GIL)."""
    workers = min(torch.get_num_threads(), len(pieces))
    if workers <= 1:
        yield from map(fn, pieces)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(fn, pieces)


class SamplingPlan:
    """The torch path's Joseph weights of one set of views as cached sparse matrices (CPU, scipy).

    All rays of one view and detector column cross the same in-plane voxels (detector rows step
    along z only), so the weight of a sample, bilinear in (in-plane coordinate a, slice z), factors
    into two stages:

    1. ``P = M X``: X is the volume as [H*W, D+2] columns along z (zero-padded by one slice at
       each end); row (view, column, plane k) of M holds the two in-plane weights of a on plane k.
    2. ``y = Z vec(P)``: row (view, row, column) of Z holds, for each plane the ray samples, its two
       linear weights in z times the ray length per plane and the voxel size.

    ``A^T`` applies ``M^T`` after ``Z^T``, so it is the exact transpose of ``A``; the sums run in
    another order than the on-the-fly path's, so results agree with it to rounding. Weights are
    computed in float64 and stored in the plan's dtype, indices as int32 (int64 past 2^31). The
    views are split into pieces of consecutive views applied in parallel threads; a piece's P is a
    temporary. The memory is 16 bytes (float32; 24 for float64) per sample of a ray on a plane,
    about 0.56 GB for 90 views of a 32x128x128 volume on its 256x256 demo detector.

    Build with :meth:`build`; ``nbytes`` is the memory held.
    """

    def __init__(self, pieces: List[_PlanPiece], vol_shape: Tuple[int, int, int], dtype: torch.dtype):
        self.pieces = pieces
        self.vol_shape = vol_shape
        self.dtype = dtype

    @classmethod
    def build(
        cls,
        vecs: torch.Tensor,
        det_shape: Tuple[int, int],
        vol_shape: Tuple[int, int, int],
        voxel_size: float,
        dtype: torch.dtype,
        budget: int,
    ) -> Optional["SamplingPlan"]:
        """The plan of the views of ``vecs`` (:func:`index_space_vectors`), or None if over ``budget`` bytes.

        The size is counted before anything is built, so an oversized plan costs one pass over
        the rays' geometry.
        """
        vecs = vecs.detach().to(device="cpu", dtype=torch.float64)
        rows, cols = det_shape
        depth = vol_shape[0]
        n_views = vecs.shape[0]
        per_piece = max(1, min(RAY_BUDGET // (rows * cols), math.ceil(n_views / PLAN_PIECES)))
        starts = range(0, n_views, per_piece)
        # Size every piece before building stage 2, the bulk, so an oversized plan stops early.
        stage1, nbytes = [], 0
        for v0 in starts:
            chunk = vecs[v0 : v0 + per_piece]
            columns = _columns(chunk, cols, vol_shape)
            rays = _rays(chunk, det_shape, vol_shape, columns)
            in_plane = _in_plane_matrix(columns, vol_shape, dtype)
            stage1.append((in_plane, columns._replace(coord=None, inside=None), rays))
            nbytes += sum(a.nbytes for a in (in_plane.data, in_plane.indices, in_plane.indptr))
            n_samples = int(rays.count.sum())
            nbytes += _along_z_nbytes(rays.total, int(columns.count.sum()), n_samples, depth, dtype)
            if nbytes > budget:
                return None
        pieces = []
        for v0, (in_plane, columns, rays) in zip(starts, stage1, strict=True):
            along_z = _along_z_matrix(columns, rays, depth, voxel_size, dtype)
            pieces.append(_PlanPiece(in_plane, along_z, v0 * rows * cols))
        return cls(pieces, vol_shape, dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held by the plan's matrices."""
        return sum(piece.nbytes for piece in self.pieces)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Project a CPU volume [D, H, W] of the plan's dtype: flat projections [V * rows * cols]."""
        depth, height, width = self.vol_shape
        padded = torch.zeros(height, width, depth + 2, dtype=self.dtype)
        padded[:, :, 1:-1] = volume.permute(1, 2, 0)
        columns = padded.view(height * width, depth + 2).numpy()
        out = np.empty(self.pieces[-1].rays.stop, dtype=columns.dtype)

        def project(piece: _PlanPiece) -> np.ndarray:
            return piece.along_z @ (piece.in_plane @ columns).reshape(-1)

        for piece, values in zip(self.pieces, _map_pieces(project, self.pieces), strict=True):
            out[piece.rays] = values
        return torch.from_numpy(out)

    def adjoint(self, proj: torch.Tensor) -> torch.Tensor:
        """Transpose of :meth:`forward`: CPU projections (any shape, V * rows * cols entries) -> [D, H, W]."""
        depth, height, width = self.vol_shape
        flat = proj.reshape(-1).numpy()

        def backproject(piece: _PlanPiece) -> np.ndarray:
            return piece.in_plane.T @ (piece.along_z.T @ flat[piece.rays]).reshape(-1, depth + 2)

        # Summed in piece order, so the result does not depend on the number of threads.
        grads = _map_pieces(backproject, self.pieces)
        total = next(grads)
        for grad in grads:
            total += grad
        volume = torch.from_numpy(total).view(height, width, depth + 2)[:, :, 1:-1]
        return volume.permute(2, 0, 1).contiguous()


def _triton_forward(volume, vecs, det_shape, voxel_size):
    from physics import _cone_triton

    return _cone_triton.forward(volume, vecs, det_shape, voxel_size)


def _triton_adjoint(proj, vecs, vol_shape, voxel_size, ray_bound=None, combine=None):
    from physics import _cone_triton

    return _cone_triton.adjoint(proj, vecs, vol_shape, voxel_size, ray_bound, combine)


Combine = Callable[[torch.Tensor, str], None]
"""``combine(t, how)``: reduce ``t`` in place over the view blocks of an operator, how = "sum" | "max"."""

# name -> (forward, adjoint); forward(volume [D,H,W], vecs, (rows, cols), voxel) -> [V, rows, cols];
# adjoint(proj, vecs, (D, H, W), voxel, ray_bound, combine) -> [D, H, W], where ray_bound sets the
# Triton adjoint's fixed-point unit and combine adds the view blocks of ConeBeamCT.view_block.
BACKENDS: Dict[str, Tuple[Callable, Callable]] = {
    "torch": (_torch_forward, _torch_adjoint),
    "triton": (_triton_forward, _triton_adjoint),
}

# Optional modules that could not be imported (each is warned about once).
_missing_modules = set()


def _importable(module: str, consequence: str) -> bool:
    """Whether ``module`` imports; the first failure warns with ``consequence`` (what runs instead)."""
    try:
        __import__(module)
    except ImportError:
        if module not in _missing_modules:
            _missing_modules.add(module)
            warnings.warn(
                f"{module} is not installed: {consequence}; `pip install {module}` for the fast path",
                RuntimeWarning,
                stacklevel=5,
            )
        return False
    return True


# Volume layouts: name -> (its shape for a volume of (D, H, W) voxels, how the name reads in messages).
# Each is a reshape of [D, H, W] that only inserts unit axes, so converting between them moves no data.
LAYOUTS: Dict[str, Tuple[Callable[[int, int, int], Tuple[int, ...]], str]] = {
    "stack": (lambda d, h, w: (d, 1, h, w), "[D,1,H,W]"),
    "volume": (lambda d, h, w: (d, h, w), "[D,H,W]"),
}


class ConeBeamCT:
    """Cone-beam CT operator for a :class:`ConeBeamGeometry` and a subset of its views.

    Projections are ``[V, det_rows, det_cols]`` line integrals in (volume value x mm). Volumes come
    in the one layout declared when the operator is built (see ``LAYOUTS``): ``"stack"``, the
    sampler's stack of axial slices ``[D, 1, H, W]`` (the default), or ``"volume"``, ``[D, H, W]``.
    ``A`` accepts that layout only, and ``A_adjoint``, ``A_dagger`` and :meth:`fdk` return it, so
    ``A_adjoint(A(x)).shape == x.shape``. A layout fixed at construction, rather than one guessed
    from each input, is the only way the adjoint (which sees projections, not the volume) can
    return the caller's layout without hidden state.

    Args:
        geometry: the acquisition geometry.
        views: LongTensor of kept view indices into ``geometry.angles`` (all when None); see
            :func:`physics.select_views`.
        device: device on which the per-view vectors are cached (any device works at call time).
        backend: ``"auto"`` (Triton kernels for CUDA float32 inputs when Triton imports, else torch),
            ``"torch"`` or ``"triton"``.
        plan_budget: bytes that the torch backend's cached :class:`SamplingPlan` of one view set
            (kept or all views) and dtype may take on CPU; a larger plan is not built and those views
            are sampled on the fly. 0 never caches.
        layout: the volume layout, a key of ``LAYOUTS``.
    """

    # A_dagger is a few CG iterations on the normal equations, not the exact pseudo-inverse.
    dagger_is_exact = False

    def __init__(
        self,
        geometry: ConeBeamGeometry,
        views: Optional[torch.Tensor] = None,
        device: Optional[torch.device | str] = None,
        backend: str = "auto",
        plan_budget: int = PLAN_BUDGET,
        layout: str = "stack",
    ) -> None:
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
        if isinstance(plan_budget, bool) or not isinstance(plan_budget, int) or plan_budget < 0:
            raise ValueError(f"plan_budget must be an integer number of bytes >= 0, got {plan_budget!r}")
        all_views = torch.arange(geometry.num_views)
        if views is None:
            views = all_views
        views = torch.as_tensor(views).reshape(-1).long().cpu()
        if views.numel() == 0 or views.min() < 0 or views.max() >= geometry.num_views:
            raise ValueError(
                f"views must be a non-empty set of indices in [0, {geometry.num_views}), got "
                f"{views.tolist()[:8]}{'...' if views.numel() > 8 else ''}"
            )
        self.geometry = geometry
        self.views = views
        self.backend = backend
        self.layout = layout
        self.plan_budget = plan_budget
        self._vecs = index_space_vectors(geometry, views).to(device)
        self._vecs_full = index_space_vectors(geometry, None).to(device)
        # Rays of the largest view set this operator's adjoint may sum over; it sets the Triton
        # adjoint's fixed-point unit, which must be the same for an operator and its view blocks.
        self._ray_bound = max(geometry.num_views, views.numel()) * geometry.det_rows * geometry.det_cols
        self._combine: Optional[Combine] = None
        self.view_range: Tuple[int, int] = (0, views.numel())
        # (all views?, dtype) -> cached plan, or None where it did not fit the budget.
        self._plans: Dict[Tuple[bool, torch.dtype], Optional[SamplingPlan]] = {}

    @property
    def volume_shape(self) -> Tuple[int, int, int]:
        """(D, H, W) voxels of the geometry, whatever the layout."""
        return self.geometry.volume_shape

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """The shape of a volume in this operator's layout: what ``A`` takes and ``A_adjoint`` returns."""
        return LAYOUTS[self.layout][0](*self.volume_shape)

    @property
    def measurement_shape(self) -> Tuple[int, int, int]:
        """(V, det_rows, det_cols) of ``A``'s output."""
        return (self.views.numel(), self.geometry.det_rows, self.geometry.det_cols)

    @property
    def is_view_block(self) -> bool:
        """Whether this is a :meth:`view_block` of a larger operator (its adjoint sums over blocks)."""
        return self._combine is not None

    def _volume(self, x: torch.Tensor) -> torch.Tensor:
        """The input volume in this operator's layout, checked, as [D, H, W]."""
        others = ", ".join(
            f"layout={name!r} for {text}" for name, (_, text) in LAYOUTS.items() if name != self.layout
        )
        check_shape(
            x,
            self.input_shape,
            f"ConeBeamCT(layout={self.layout!r}) takes volumes {LAYOUTS[self.layout][1]}",
            f"build the operator with {others}",
        )
        return x.reshape(self.volume_shape)

    def _in_layout(self, volume: torch.Tensor) -> torch.Tensor:
        """A volume [D, H, W] (or any reshape of it) in this operator's layout."""
        return volume.reshape(self.input_shape)

    @property
    def plan_nbytes(self) -> int:
        """Bytes held by this operator's cached sampling plans (0 when none is cached)."""
        return sum(plan.nbytes for plan in self._plans.values() if plan is not None)

    def _backend(self, t: torch.Tensor) -> str:
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"ConeBeamCT needs a float32 or float64 tensor, got {t.dtype}")
        name = self.backend
        if name == "auto":
            name = (
                "triton"
                if t.is_cuda
                and t.dtype == torch.float32
                and _importable("triton", "ConeBeamCT runs its (slower) torch path on CUDA")
                else "torch"
            )
        return name

    def _plan(self, full: bool, t: torch.Tensor) -> Optional[SamplingPlan]:
        """The cached plan of these views for the torch backend on ``t``, or None to sample on the fly."""
        if (
            t.device.type != "cpu"
            or t.requires_grad
            or self.plan_budget == 0
            or not _importable("scipy", "ConeBeamCT samples every projection anew on CPU (slower)")
        ):
            return None
        key = (full, t.dtype)
        if key not in self._plans:
            det_shape = (self.geometry.det_rows, self.geometry.det_cols)
            vecs = self._vecs_full if full else self._vecs
            self._plans[key] = SamplingPlan.build(
                vecs, det_shape, self.volume_shape, self.geometry.voxel_size, t.dtype, self.plan_budget
            )
        return self._plans[key]

    def _vectors(self, full: bool, like: torch.Tensor) -> torch.Tensor:
        vecs = self._vecs_full if full else self._vecs
        return vecs.to(device=like.device, dtype=like.dtype)

    def _project(self, x: torch.Tensor, full: bool) -> torch.Tensor:
        volume = self._volume(x).contiguous()
        backend = self._backend(volume)
        n_views = self.geometry.num_views if full else self.views.numel()
        det_shape = (self.geometry.det_rows, self.geometry.det_cols)
        plan = self._plan(full, volume) if backend == "torch" else None
        if plan is not None:
            return plan.forward(volume).view(n_views, *det_shape)
        forward, _ = BACKENDS[backend]
        return forward(volume, self._vectors(full, volume), det_shape, self.geometry.voxel_size)

    def _backproject(self, y: torch.Tensor, full: bool) -> torch.Tensor:
        n_views = self.geometry.num_views if full else self.views.numel()
        expected = (n_views, self.geometry.det_rows, self.geometry.det_cols)
        check_shape(y, expected, "ConeBeamCT takes projections [V, det_rows, det_cols]")
        y = y.contiguous()
        backend = self._backend(y)
        combine = None if full else self._combine
        plan = self._plan(full, y) if backend == "torch" else None
        if plan is not None:
            out = plan.adjoint(y)
            if combine is not None:
                combine(out, "sum")
            return self._in_layout(out)
        _, adjoint = BACKENDS[backend]
        vecs = self._vectors(full, y)
        out = adjoint(y, vecs, self.volume_shape, self.geometry.voxel_size, self._ray_bound, combine)
        return self._in_layout(out)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Project a volume (``input_shape``) on the kept views -> [V, rows, cols]."""
        return self._project(x, full=False)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`A`: [V, rows, cols] -> a volume in the operator's layout."""
        return self._backproject(y, full=False)

    def A_full(self, x: torch.Tensor) -> torch.Tensor:
        """Project a volume (``input_shape``) on all views of the geometry -> [num_views, rows, cols]."""
        return self._project(x, full=True)

    def A_full_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`A_full`: [num_views, rows, cols] -> a volume in the operator's layout."""
        return self._backproject(y, full=True)

    def sums_views_exactly(self, y: torch.Tensor) -> bool:
        """Whether the adjoint for projections like ``y`` adds views in integer (fixed-point) arithmetic.

        True on the Triton backend: its rounded contributions add exactly in any order, so the blocks
        of :meth:`view_block` together give bitwise the whole operator's adjoint.
        """
        return self._backend(y) == "triton"

    def view_block(self, start: int, stop: int, combine: "Combine") -> "ConeBeamCT":
        """This operator on its kept views ``start:stop`` only, with an adjoint summed over all blocks.

        For splitting the data-consistency work over processes (``utils.distributed.view_parallel``):
        each process holds one block of the views and the matching block ``y[start:stop]`` of the
        measurement; ``A`` gives the block's projections, and ``A_adjoint`` (so also ``A_dagger``)
        returns the adjoint of the whole operator applied to the whole measurement, the blocks being
        added by ``combine``. Not for FDK or the full-view methods, which stay per block.

        Args:
            start, stop: the block, ``0 <= start < stop <= V``.
            combine: ``combine(t, how)`` reduces ``t`` in place over all blocks, ``how`` being
                ``"sum"`` or ``"max"`` (an all-reduce over the processes). The Triton adjoint
                combines int64 fixed-point sums and the maximum that sets their unit, so the result
                is bitwise that of the whole operator; the torch backend combines float volumes
                (equal to rounding).
        """
        n_views = self.views.numel()
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= n_views):
            raise ValueError(f"view_block: need 0 <= start < stop <= {n_views}, got {start}, {stop}")
        # A copy that shares the geometry and the full-view vectors; the parent's vectors are sliced,
        # as recomputing them could round differently.
        block = copy.copy(self)
        block.views = self.views[start:stop]
        block._vecs = self._vecs[start:stop]
        block._plans = {}
        block._combine = combine
        block.view_range = (start, stop)
        return block

    def A_dagger(
        self,
        y: torch.Tensor,
        n_iter: int = 10,
        x0: Optional[torch.Tensor] = None,
        callback: Optional[Callable] = None,
    ) -> torch.Tensor:
        """Least-squares solution of ``A x = y`` by CG on ``A^T A x = A^T y`` (:func:`physics.cgls`).

        Args:
            y: projections [V, rows, cols].
            n_iter: CG iterations.
            x0: starting volume in the operator's layout (zeros when None).
            callback: ``callback(k, x, r)`` after each iteration, r the normal-equation residual.

        Returns:
            The volume in the operator's layout.
        """
        from physics.iterative import cgls

        return cgls(self, y, n_iter=n_iter, x0=x0, callback=callback)

    def fdk(self, y: torch.Tensor, window: str = "ram-lak", full: bool = False) -> torch.Tensor:
        """FDK reconstruction, in the operator's layout, of projections on the kept views (all if ``full``).

        See :func:`physics.fdk.fdk`; an approximate inverse, not ``A^T``.
        """
        from physics.fdk import fdk

        return self._in_layout(fdk(self.geometry, y, views=None if full else self.views, window=window))
