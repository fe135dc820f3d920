"""Cone-beam CT forward projector (Joseph's method) and its exact adjoint, on CPU and GPU.

Each ray runs from the source to the centre of one detector cell. It is sampled on every voxel
plane perpendicular to its dominant in-plane axis (x when |dx| >= |dy|, else y), with bilinear
interpolation in the two other coordinates (zero outside the volume), and the samples are summed
times the ray length per plane. ``A_adjoint`` applies the transpose of exactly these weights, so
the dot-product test holds to rounding.

Two backends compute the same numbers: a pure-torch one (any device, float32 or float64; samples
through ``grid_sample``, whose input gradient is the transposed scatter; rays that miss the volume
and planes a ray cannot touch are skipped; blocks of ``SAMPLE_BUDGET`` samples bound the memory)
and Triton kernels (CUDA, float32; the adjoint scatters with atomic adds), chosen by
``backend="auto"`` when a CUDA float32 tensor comes and Triton imports.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from physics.geometry import ConeBeamGeometry

# Samples per torch block: 2M samples keep a block's grid and temporaries near 100 MB.
SAMPLE_BUDGET = 1 << 21
# Rays whose geometry is prepared at once by the torch backend.
RAY_BUDGET = 1 << 20


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


def _torch_adjoint(proj: torch.Tensor, vecs: torch.Tensor, vol_shape, voxel_size: float) -> torch.Tensor:
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
    return out * voxel_size


def _triton_forward(volume, vecs, det_shape, voxel_size):
    from physics import _cone_triton

    return _cone_triton.forward(volume, vecs, det_shape, voxel_size)


def _triton_adjoint(proj, vecs, vol_shape, voxel_size):
    from physics import _cone_triton

    return _cone_triton.adjoint(proj, vecs, vol_shape, voxel_size)


# name -> (forward, adjoint); forward(volume [D,H,W], vecs, (rows, cols), voxel) -> [V, rows, cols].
BACKENDS: Dict[str, Tuple[Callable, Callable]] = {
    "torch": (_torch_forward, _torch_adjoint),
    "triton": (_triton_forward, _triton_adjoint),
}

_warned_no_triton = []


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        if not _warned_no_triton:
            _warned_no_triton.append(True)
            warnings.warn(
                "triton is not installed: ConeBeamCT runs its (slower) torch path on CUDA; "
                "`pip install triton` for the fast kernels",
                RuntimeWarning,
                stacklevel=4,
            )
        return False
    return True


class ConeBeamCT:
    """Cone-beam CT operator for a :class:`ConeBeamGeometry` and a subset of its views.

    Volumes are axial slice stacks ``[D, 1, H, W]`` (the sampler's layout); ``[1, D, H, W]`` and
    ``[D, H, W]`` are accepted too. Projections are ``[V, det_rows, det_cols]`` line integrals in
    (volume value x mm).

    Args:
        geometry: the acquisition geometry.
        views: LongTensor of kept view indices into ``geometry.angles`` (all when None); see
            :func:`physics.select_views`.
        device: device on which the per-view vectors are cached (any device works at call time).
        backend: ``"auto"`` (Triton kernels for CUDA float32 inputs when Triton imports, else torch),
            ``"torch"`` or ``"triton"``.
    """

    def __init__(
        self,
        geometry: ConeBeamGeometry,
        views: Optional[torch.Tensor] = None,
        device: Optional[torch.device | str] = None,
        backend: str = "auto",
    ) -> None:
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
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
        self._vecs = index_space_vectors(geometry, views).to(device)
        self._vecs_full = index_space_vectors(geometry, None).to(device)

    @property
    def volume_shape(self) -> Tuple[int, int, int]:
        """(D, H, W)."""
        return self.geometry.volume_shape

    @property
    def measurement_shape(self) -> Tuple[int, int, int]:
        """(V, det_rows, det_cols) of ``A``'s output."""
        return (self.views.numel(), self.geometry.det_rows, self.geometry.det_cols)

    def _volume(self, x: torch.Tensor) -> torch.Tensor:
        """The one place where accepted volume layouts become [D, H, W]."""
        depth, height, width = self.volume_shape
        layouts = {
            (depth, 1, height, width): lambda t: t[:, 0],
            (1, depth, height, width): lambda t: t[0],
            (depth, height, width): lambda t: t,
        }
        if not isinstance(x, torch.Tensor) or tuple(x.shape) not in layouts:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"volume must have shape [D,1,H,W]={[depth, 1, height, width]}, "
                f"[1,D,H,W] or [D,H,W]; got {got}"
            )
        return layouts[tuple(x.shape)](x)

    def _backend(self, t: torch.Tensor) -> Tuple[Callable, Callable]:
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"ConeBeamCT needs a float32 or float64 tensor, got {t.dtype}")
        name = self.backend
        if name == "auto":
            name = "triton" if t.is_cuda and t.dtype == torch.float32 and _triton_importable() else "torch"
        return BACKENDS[name]

    def _vectors(self, full: bool, like: torch.Tensor) -> torch.Tensor:
        vecs = self._vecs_full if full else self._vecs
        return vecs.to(device=like.device, dtype=like.dtype)

    def _project(self, x: torch.Tensor, full: bool) -> torch.Tensor:
        volume = self._volume(x).contiguous()
        forward, _ = self._backend(volume)
        det_shape = (self.geometry.det_rows, self.geometry.det_cols)
        return forward(volume, self._vectors(full, volume), det_shape, self.geometry.voxel_size)

    def _backproject(self, y: torch.Tensor, full: bool) -> torch.Tensor:
        n_views = self.geometry.num_views if full else self.views.numel()
        expected = (n_views, self.geometry.det_rows, self.geometry.det_cols)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"projections must have shape [V, det_rows, det_cols]={list(expected)}, got {got}"
            )
        y = y.contiguous()
        _, adjoint = self._backend(y)
        out = adjoint(y, self._vectors(full, y), self.volume_shape, self.geometry.voxel_size)
        return out.unsqueeze(1)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Project a volume on the kept views: [D,1,H,W] (or [1,D,H,W], [D,H,W]) -> [V, rows, cols]."""
        return self._project(x, full=False)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`A`: [V, rows, cols] -> [D, 1, H, W]."""
        return self._backproject(y, full=False)

    def A_full(self, x: torch.Tensor) -> torch.Tensor:
        """Project on all views of the geometry: -> [num_views, rows, cols]."""
        return self._project(x, full=True)

    def A_full_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`A_full`: [num_views, rows, cols] -> [D, 1, H, W]."""
        return self._backproject(y, full=True)

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
            x0: starting volume [D, 1, H, W] (zeros when None).
            callback: ``callback(k, x, r)`` after each iteration, r the normal-equation residual.
        """
        from physics.iterative import cgls

        return cgls(self, y, n_iter=n_iter, x0=x0, callback=callback)

    def fdk(self, y: torch.Tensor, window: str = "ram-lak", full: bool = False) -> torch.Tensor:
        """FDK reconstruction [D, 1, H, W] of projections on the kept views (all views if ``full``).

        See :func:`physics.fdk.fdk`; an approximate inverse, not ``A^T``.
        """
        from physics.fdk import fdk

        return fdk(self.geometry, y, views=None if full else self.views, window=window)
