"""Optional astra-toolbox baselines (FDK_CUDA, SIRT3D_CUDA) on the same geometry object.

astra is imported inside these functions only. They run when astra imports and reports CUDA
(:func:`astra_cuda_available`); the projector's own FDK and SIRT run everywhere else. Geometry is
passed as astra ``cone_vec`` rows from :meth:`ConeBeamGeometry.view_vectors` in units of the voxel
size, and astra's projection layout [rows, V, cols] is converted from and to ours [V, rows, cols].
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

from physics.geometry import ConeBeamGeometry
from physics.iterative import check_iterations, check_min_value

_warned = []


def astra_cuda_available() -> bool:
    """True when astra imports and can use a CUDA device; warns once with the reason otherwise."""
    try:
        import astra

        if astra.use_cuda():
            return True
        reason = "astra reports no usable CUDA device"
    except Exception as err:  # astra raises several error types when its CUDA libraries are missing.
        reason = f"astra cannot be used: {type(err).__name__}: {err}"
    if not _warned:
        _warned.append(True)
        warnings.warn(f"{reason}; using the built-in FDK/SIRT baselines", RuntimeWarning, stacklevel=2)
    return False


def astra_geometries(geometry: ConeBeamGeometry, views: Optional[torch.Tensor]):
    """astra (``cone_vec`` projection geometry, volume geometry) dicts for ``geometry`` and ``views``."""
    import astra

    depth, height, width = geometry.volume_shape
    vectors = (geometry.view_vectors(views) / geometry.voxel_size).numpy()
    proj_geom = astra.create_proj_geom("cone_vec", geometry.det_rows, geometry.det_cols, vectors)
    vol_geom = astra.create_vol_geom(height, width, depth)
    return proj_geom, vol_geom


def _run(
    geometry: ConeBeamGeometry,
    y: torch.Tensor,
    views: Optional[torch.Tensor],
    algorithm: str,
    n_iter: int,
    options: Optional[dict] = None,
) -> torch.Tensor:
    import astra

    proj_geom, vol_geom = astra_geometries(geometry, views)
    # astra integrates in voxel units; our projections are in mm.
    sino = np.ascontiguousarray(
        (y.detach().double().cpu().numpy() / geometry.voxel_size).transpose(1, 0, 2), dtype=np.float32
    )
    proj_id = astra.data3d.create("-proj3d", proj_geom, sino)
    vol_id = astra.data3d.create("-vol", vol_geom, 0.0)
    try:
        cfg = astra.astra_dict(algorithm)
        cfg["ProjectionDataId"] = proj_id
        cfg["ReconstructionDataId"] = vol_id
        cfg["option"] = dict(options or {})
        alg_id = astra.algorithm.create(cfg)
        try:
            astra.algorithm.run(alg_id, n_iter)
        finally:
            astra.algorithm.delete(alg_id)
        volume = astra.data3d.get(vol_id)
    finally:
        astra.data3d.delete([proj_id, vol_id])
    return torch.from_numpy(volume).to(device=y.device, dtype=y.dtype).unsqueeze(1)


def fdk_astra(
    geometry: ConeBeamGeometry, y: torch.Tensor, views: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """astra's FDK_CUDA reconstruction [D, 1, H, W] of projections y [V, rows, cols] on ``views``."""
    return _run(geometry, y, views, "FDK_CUDA", 1)


def sirt_astra(
    geometry: ConeBeamGeometry,
    y: torch.Tensor,
    n_iter: int,
    views: Optional[torch.Tensor] = None,
    min_value: Optional[float] = 0.0,
) -> torch.Tensor:
    """astra's SIRT3D_CUDA reconstruction [D, 1, H, W] after ``n_iter`` iterations from zeros.

    Args:
        min_value: astra's ``MinConstraint`` (the iterate is clipped below at it after every
            update), as :func:`physics.sirt` does; None leaves it unconstrained.
    """
    check_iterations(n_iter, minimum=1)
    min_value = check_min_value(min_value)
    # y is rescaled to astra's voxel units, so the volume's values, and the bound, are ours.
    options = {} if min_value is None else {"MinConstraint": min_value}
    return _run(geometry, y, views, "SIRT3D_CUDA", n_iter, options)
