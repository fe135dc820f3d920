"""Figures of a run: mid-slice panels (PNG) and an optional GIF that scrolls through the slices.

matplotlib (rendered with Agg) and Pillow are imported inside the functions that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from utils.metrics import PLANES

# Each plane shows array axes (rows, columns); its pixel aspect is spacing[rows] / spacing[columns].
_PLANE_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}


def _mid_slice(volume: np.ndarray, plane: str) -> np.ndarray:
    axis = PLANES[plane]
    return np.take(volume, volume.shape[axis] // 2, axis=axis)


def _aspect(spacing_xyz: Sequence[float], plane: str) -> float:
    spacing_zyx = tuple(spacing_xyz)[::-1]
    rows, cols = _PLANE_AXES[plane]
    return float(spacing_zyx[rows] / spacing_zyx[cols])


def _height_ratio(shape: Sequence[int], spacing_xyz: Sequence[float], plane: str) -> float:
    """Physical height / width of a plane's image, floored so that thin slabs stay legible."""
    rows, cols = _PLANE_AXES[plane]
    return max(0.2, _aspect(spacing_xyz, plane) * shape[rows] / shape[cols])


def save_slices_figure(
    path: Path,
    gt: np.ndarray,
    panels: Mapping[str, np.ndarray],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    captions: Optional[Mapping[str, str]] = None,
) -> Path:
    """Axial, coronal and sagittal mid-slices (rows) of GT, each panel volume, and |recon - GT|.

    Args:
        path: PNG file to write.
        gt: ground truth ``[D, H, W]``.
        panels: name -> volume ``[D, H, W]`` in display order (e.g. the main baseline, then
            ``"recon"``); the error column shows ``|last panel - GT|``.
        spacing: voxel spacing ``(x, y, z)`` in mm, for the pixel aspect ratios.
        captions: optional name -> text under the column title (e.g. PSNR/SSIM).

    Returns:
        ``path``.
    """
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    names = list(panels)
    error = np.abs(panels[names[-1]] - gt)
    columns = [("GT", gt)] + [(name, panels[name]) for name in names] + [(f"|{names[-1]} - GT|", error)]
    low, high = float(gt.min()), float(gt.max())
    error_max = max(float(np.nanmax(error)), 1e-6) if np.isfinite(error).any() else 1.0
    ratios = [_height_ratio(gt.shape, spacing, plane) for plane in PLANES]
    fig = Figure(figsize=(3 * len(columns), 3 * sum(ratios) + 1))
    axes = fig.subplots(len(PLANES), len(columns), squeeze=False, gridspec_kw={"height_ratios": ratios})
    for row, plane in enumerate(PLANES):
        for col, (name, volume) in enumerate(columns):
            is_error = col == len(columns) - 1
            ax = axes[row, col]
            image = ax.imshow(
                _mid_slice(volume, plane),
                cmap="magma" if is_error else "gray",
                vmin=0.0 if is_error else low,
                vmax=error_max if is_error else high,
                aspect=_aspect(spacing, plane),
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                caption = (captions or {}).get(name)
                ax.set_title(name if caption is None else f"{name}\n{caption}", fontsize=9)
            if col == 0:
                ax.set_ylabel(plane)
            if is_error and row == len(PLANES) - 1:
                fig.colorbar(image, ax=axes[:, col].tolist(), fraction=0.05)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _to_uint8(volume: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    low, high = window
    scaled = (volume - low) / max(high - low, 1e-12)
    # NaN (a diverged reconstruction) shows as black instead of breaking the cast.
    return (np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255).round().astype(np.uint8)


def save_scroll_gif(
    path: Path,
    volumes: Dict[str, np.ndarray],
    plane: str = "axial",
    window: Optional[Tuple[float, float]] = None,
    duration_ms: int = 80,
) -> Path:
    """An animated GIF stepping through the slices of ``plane``, the volumes side by side.

    Args:
        path: GIF file to write.
        volumes: name -> volume ``[D, H, W]`` (same shape), left to right.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        window: grey-level window ``(low, high)``; default: the first volume's range.
        duration_ms: display time of each frame.

    Returns:
        ``path``.
    """
    from PIL import Image

    if plane not in PLANES:
        raise ValueError(f"plane {plane!r} is not accepted; accepted: {', '.join(PLANES)}")
    stacks = [np.moveaxis(volume, PLANES[plane], 0) for volume in volumes.values()]
    first = stacks[0]
    window = window or (float(first.min()), float(first.max()))
    strip = _to_uint8(np.concatenate(stacks, axis=2), window)
    frames = [Image.fromarray(frame) for frame in strip]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return path
