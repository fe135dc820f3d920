"""Cone-beam CT geometry: one validated value that every backend (torch, Triton, FDK, astra) reads.

Conventions are astra's 3D cone-beam ones (``cone`` / ``cone_vec``), lengths in mm:

* The volume [D, H, W] is centred at the origin with cubic voxels of ``voxel_size``; x runs along
  the columns (W), y along the rows (H) and z along the slices (D), each increasing with its index,
  so voxel (l, j, i) sits at ``((i - (W-1)/2) s, (j - (H-1)/2) s, (l - (D-1)/2) s)``.
* At angle theta the source sits at ``(sin t, -cos t, 0) * source_distance`` and the centre of the
  flat detector at ``(-sin t, cos t, 0) * detector_distance``; detector columns step along
  ``(cos t, sin t, 0) * det_spacing`` and rows along ``(0, 0, 1) * det_spacing``.
* Projections are laid out [V, det_rows, det_cols].
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Sequence, Tuple

import numpy as np
import torch

NUM_FULL_VIEWS = 360


def _full_circle(num_views: int) -> Tuple[float, ...]:
    return tuple(float(a) for a in np.linspace(0.0, 2.0 * math.pi, num_views, endpoint=False))


def _require_positive(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _require_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ConeBeamGeometry:
    """Circular-orbit cone-beam geometry with a flat detector (astra ``cone`` conventions).

    Args:
        volume_shape: (D, H, W) voxels: slices (z), rows (y), columns (x).
        voxel_size: edge of the cubic voxel in mm.
        det_rows, det_cols: detector cells along z (rows) and in-plane (columns).
        det_spacing: cell pitch in mm (square cells).
        source_distance: source to rotation axis, mm.
        detector_distance: rotation axis to detector, mm.
        angles: projection angles in radians (default: 360 views over 2 pi, endpoint excluded).

    Raises:
        ValueError: on non-positive sizes or distances, non-finite or empty angles, a source inside
            the volume, or a detector that does not cover the volume's shadow at every angle.
    """

    volume_shape: Tuple[int, int, int]
    voxel_size: float = 1.0
    det_rows: int = 512
    det_cols: int = 512
    det_spacing: float = 2.0
    source_distance: float = 700.0
    detector_distance: float = 500.0
    angles: Tuple[float, ...] = field(default_factory=lambda: _full_circle(NUM_FULL_VIEWS))

    def __post_init__(self) -> None:
        shape = self.volume_shape
        if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 3:
            raise ValueError(f"volume_shape must be a sequence (D, H, W) of 3 integers, got {shape!r}")
        for name, n in zip(("D", "H", "W"), shape):
            _require_count(f"volume_shape {name}", n)
        _require_count("det_rows", self.det_rows)
        _require_count("det_cols", self.det_cols)
        for name in ("voxel_size", "det_spacing", "source_distance", "detector_distance"):
            _require_positive(name, getattr(self, name))
        try:
            angles = torch.as_tensor(self.angles, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"angles must be a sequence of radians, got {type(self.angles).__name__}: {err}"
            ) from None
        angle_tuple = tuple(float(a) for a in angles)
        if len(angle_tuple) == 0 or not all(math.isfinite(a) for a in angle_tuple):
            raise ValueError(
                f"angles must be a non-empty sequence of finite radians, got {len(angle_tuple)} values "
                f"including {[a for a in angle_tuple if not math.isfinite(a)][:3]}"
            )
        normalised = dict(
            volume_shape=tuple(int(n) for n in shape),
            voxel_size=float(self.voxel_size),
            det_rows=int(self.det_rows),
            det_cols=int(self.det_cols),
            det_spacing=float(self.det_spacing),
            source_distance=float(self.source_distance),
            detector_distance=float(self.detector_distance),
            angles=angle_tuple,
        )
        for key, value in normalised.items():
            object.__setattr__(self, key, value)
        self._check_coverage()

    def _check_coverage(self) -> None:
        depth, height, width = self.volume_shape
        # Coverage is asked of the voxel centres: every voxel is then sampled by some ray.
        radius = 0.5 * self.voxel_size * math.hypot(height - 1, width - 1)
        if 0.5 * self.voxel_size * math.hypot(height, width) >= self.source_distance:
            raise ValueError(
                f"source_distance {self.source_distance} mm must exceed the volume's in-plane "
                f"half-diagonal (the source would sit inside the volume {self.volume_shape})"
            )
        # The widest shadow comes from the rays tangent to the cylinder through the outermost centres.
        half_u = self.source_detector_distance * radius / math.sqrt(self.source_distance**2 - radius**2)
        half_v = (
            self.source_detector_distance
            * 0.5
            * (depth - 1)
            * self.voxel_size
            / (self.source_distance - radius)
        )
        need_cols = 2.0 * half_u / self.det_spacing
        need_rows = 2.0 * half_v / self.det_spacing
        if self.det_cols < need_cols - 1e-9 or self.det_rows < need_rows - 1e-9:
            raise ValueError(
                f"detector {self.det_rows}x{self.det_cols} cells of {self.det_spacing} mm does not cover the "
                f"volume {self.volume_shape}: needs at least {math.ceil(need_rows - 1e-9)} rows x "
                f"{math.ceil(need_cols - 1e-9)} columns at these distances"
            )

    @classmethod
    def for_volume(cls, volume_shape: Sequence[int], num_views: int = NUM_FULL_VIEWS) -> "ConeBeamGeometry":
        """The reference demo's geometry for a volume of any size.

        Distances (700 / 500 mm), voxel size 1 and the cell spacing 2 mm stay fixed, so the
        magnification and the number of detector cells per projected voxel are those of the demo;
        the cell count scales with the volume (512 x 512 at 256^3, 256 x 256 at 128^3), so the
        detector covers the same multiple of the volume's width.

        Args:
            volume_shape: (D, H, W).
            num_views: views evenly spaced over 2 pi (endpoint excluded).
        """
        _require_count("num_views", num_views)
        shape = tuple(volume_shape)
        if len(shape) != 3:
            raise ValueError(f"volume_shape must be (D, H, W), got {volume_shape!r}")
        cols = 2 * max(shape[1], shape[2])
        rows = 2 * max(shape)
        return cls(volume_shape=shape, det_rows=rows, det_cols=cols, angles=_full_circle(int(num_views)))

    @property
    def num_views(self) -> int:
        """Number of angles of the full acquisition."""
        return len(self.angles)

    @property
    def source_detector_distance(self) -> float:
        """Source to detector distance in mm."""
        return self.source_distance + self.detector_distance

    def view_vectors(self, views: torch.Tensor | None = None) -> torch.Tensor:
        """astra ``cone_vec`` rows for the chosen views, float64 [V, 12], in mm.

        Columns: source (3), detector centre (3), step between columns (3), step between rows (3).
        """
        angles = torch.tensor(self.angles, dtype=torch.float64)
        if views is not None:
            angles = angles[views.cpu()]
        sin, cos = torch.sin(angles), torch.cos(angles)
        zero = torch.zeros_like(angles)
        return torch.stack(
            [
                sin * self.source_distance,
                -cos * self.source_distance,
                zero,
                -sin * self.detector_distance,
                cos * self.detector_distance,
                zero,
                cos * self.det_spacing,
                sin * self.det_spacing,
                zero,
                zero,
                zero,
                zero + self.det_spacing,
            ],
            dim=1,
        )


def _lact_views(degree: float, num_full: int) -> torch.Tensor:
    if not (0 < degree <= 360):
        raise ValueError(f"LACT degree (angular coverage) must be in (0, 360], got {degree!r}")
    count = int(math.floor(num_full * degree / 360.0 + 0.5))
    if count < 1:
        raise ValueError(
            f"LACT degree {degree!r} keeps no view out of {num_full}; use at least {360.0 / num_full / 2:g}"
        )
    return torch.arange(count, dtype=torch.long)


def _svct_views(degree: float, num_full: int) -> torch.Tensor:
    if float(degree) != int(degree) or not (1 <= degree <= num_full):
        raise ValueError(
            f"SVCT degree (number of views) must be an integer in [1, {num_full}], got {degree!r}"
        )
    # Floor of evenly spaced positions, as the reference selects its sparse views.
    positions = np.linspace(0, num_full, int(degree), endpoint=False)
    return torch.as_tensor(np.floor(positions).astype(np.int64))


VIEW_SELECTIONS = {"LACT": _lact_views, "SVCT": _svct_views}


def select_views(task: str, degree: float, num_full: int = NUM_FULL_VIEWS) -> torch.Tensor:
    """Indices of the views kept out of ``num_full`` evenly spaced ones.

    Args:
        task: ``"LACT"`` (limited angle: ``degree`` is the covered arc in degrees, (0, 360]; keeps the
            first ``round(num_full * degree / 360)`` views, halves rounded up) or ``"SVCT"`` (sparse view:
            ``degree`` is the number of views, 1..num_full, spread evenly as ``floor(linspace(0, num_full, degree))``).
        degree: see ``task``.
        num_full: views of the full scan.

    Returns:
        LongTensor of kept view indices, increasing.
    """
    if task not in VIEW_SELECTIONS:
        raise ValueError(f"task must be one of {sorted(VIEW_SELECTIONS)}, got {task!r}")
    _require_count("num_full", num_full)
    if (
        isinstance(degree, bool)
        or not isinstance(degree, (int, float, np.integer, np.floating))
        or not math.isfinite(degree)
    ):
        raise ValueError(f"degree must be a finite number, got {degree!r}")
    return VIEW_SELECTIONS[task](degree, num_full)
