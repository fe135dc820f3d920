"""Geometry-aware volume transforms: reorientation, slice cropping, in-plane resizing, intensity maps.

Every transform takes a volume ``[D, H, W]`` (z, y, x) with its meta dict (see :mod:`utils.io`) and
returns both updated, so that a result written with the returned meta overlays the input file in
physical space (3D Slicer, ITK-SNAP). Array axis ``n`` is SimpleITK index axis ``2 - n``.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from utils.io import Meta

# DICOM letters name the physical direction an index axis points to, in LPS coordinates.
ORIENTATION_LETTERS = {
    "L": (0, 1.0),
    "R": (0, -1.0),
    "P": (1, 1.0),
    "A": (1, -1.0),
    "S": (2, 1.0),
    "I": (2, -1.0),
}
HU_WINDOW = (-1000.0, 1600.0)
HU_STORED_RANGE = (-1024.0, 3071.0)
"""The HU a CT scanner's 12-bit images can hold: synthetic volumes are clamped to it to look like real ones."""


def _direction(meta: Meta) -> np.ndarray:
    return np.asarray(meta["direction"], dtype=np.float64).reshape(3, 3)


def _index_axis(array_axis: int) -> int:
    return 2 - array_axis


def _orientation_map(meta: Meta, code: str) -> List[Tuple[int, bool]]:
    """Per index axis of the reoriented volume: the input's index axis it comes from and whether it
    is flipped (what :func:`reorient` does)."""
    letters = code.upper() if isinstance(code, str) else ""
    targets = [ORIENTATION_LETTERS.get(letter) for letter in letters]
    if len(targets) != 3 or None in targets or sorted(t[0] for t in targets) != [0, 1, 2]:
        raise ValueError(
            f"orientation code {code!r} is not accepted; use one letter of L/R, P/A and S/I each, e.g. 'LPI'"
        )
    direction = _direction(meta)
    dominant = np.argmax(np.abs(direction), axis=0)
    if sorted(dominant.tolist()) != [0, 1, 2]:
        raise ValueError(
            f"direction {meta['direction']} maps two index axes to the same physical axis; "
            "a direction whose columns are each closest to a different axis is accepted"
        )
    source_of = {int(p): a for a, p in enumerate(dominant)}
    return [(source_of[axis], bool(np.sign(direction[axis, source_of[axis]]) != sign)) for axis, sign in targets]


def source_axis(meta: Meta, code: str, array_axis: int) -> Tuple[int, bool]:
    """Which array axis of the input volume becomes ``array_axis`` of ``reorient(.., code)``, and
    whether its order is reversed there: ``(input array axis, flipped)``."""
    index, flipped = _orientation_map(meta, code)[_index_axis(array_axis)]
    return _index_axis(index), flipped


def reorient(array: np.ndarray, meta: Meta, code: str = "LPI") -> Tuple[np.ndarray, Meta]:
    """Permute and flip the array axes so that index axes x, y, z point towards ``code``'s letters.

    This is what SimpleITK's ``DICOMOrient(image, code)`` does (no resampling): each index axis is
    matched to the physical axis its direction cosine is closest to, then reordered and flipped.

    Args:
        array: volume ``[D, H, W]``.
        meta: its geometry.
        code: three letters, one of L/R, one of P/A, one of S/I in any order (default ``"LPI"``).

    Returns:
        ``(array, meta)`` in the new orientation (the array is a view where possible).
    """
    direction = _direction(meta)
    spacing, origin = np.asarray(meta["spacing"]), np.asarray(meta["origin"], dtype=np.float64)
    sizes = array.shape[::-1]
    corner = np.zeros(3)
    new_direction = np.zeros((3, 3))
    new_spacing, sources, flips = [], [], []
    for t, (a, flip) in enumerate(_orientation_map(meta, code)):
        corner[a] = sizes[a] - 1 if flip else 0
        new_direction[:, t] = -direction[:, a] if flip else direction[:, a]
        new_spacing.append(float(spacing[a]))
        sources.append(a)
        flips.append(flip)
    out = np.transpose(array, [_index_axis(sources[_index_axis(n)]) for n in range(3)])
    flip_axes = tuple(_index_axis(t) for t in range(3) if flips[t])
    out = np.flip(out, axis=flip_axes) if flip_axes else out
    new_meta = {
        "spacing": tuple(new_spacing),
        "origin": tuple(float(v) for v in origin + direction @ (spacing * corner)),
        "direction": tuple(float(v) for v in new_direction.ravel()),
    }
    return out, new_meta


def crop_slices(
    volume: torch.Tensor, meta: Meta, axis: int, begin: int, end: int
) -> Tuple[torch.Tensor, Meta]:
    """Keep slices ``begin <= i < end`` along array ``axis``; ``begin == end == 0`` keeps all.

    Raises:
        ValueError: the range is empty or reaches outside the volume.
    """
    length = volume.shape[axis]
    if begin == 0 and end == 0:
        return volume, meta
    if not 0 <= begin < end <= length:
        raise ValueError(
            f"slice range [{begin}, {end}) is empty or outside the volume; "
            f"accepted: 0 <= begin < end <= {length} (or both 0 for the whole volume)"
        )
    index = _index_axis(axis)
    shift = _direction(meta)[:, index] * meta["spacing"][index] * begin
    origin = tuple(float(o + s) for o, s in zip(meta["origin"], shift))
    return volume.narrow(axis, begin, end - begin), {**meta, "origin": origin}


def resize_plane(volume: torch.Tensor, meta: Meta, slice_axis: int, size: int) -> Tuple[torch.Tensor, Meta]:
    """Resize the two array axes other than ``slice_axis`` to ``size`` x ``size`` with antialiasing.

    Bilinear interpolation with antialias (a box-like prefilter when shrinking); the spacing of the
    resized axes scales by ``old / new`` and the origin moves so the volume's outer edges stay put.

    Args:
        volume: ``[D, H, W]`` float tensor.
        meta: its geometry.
        slice_axis: the array axis that is kept (0 for axial planes, 1 for coronal).
        size: the new side length in voxels (>= 1).
    """
    if size < 1:
        raise ValueError(f"recon size {size} is not accepted; a positive number of voxels is")
    stack = volume.movedim(slice_axis, 0)
    if tuple(stack.shape[1:]) == (size, size):
        return volume, meta
    resized = F.interpolate(
        stack[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    spacing, origin = list(meta["spacing"]), np.asarray(meta["origin"], dtype=np.float64)
    direction = _direction(meta)
    for axis in range(3):
        if axis != slice_axis:
            index = _index_axis(axis)
            new = spacing[index] * volume.shape[axis] / size
            origin = origin + direction[:, index] * 0.5 * (new - spacing[index])
            spacing[index] = new
    new_meta = {
        **meta,
        "spacing": tuple(float(s) for s in spacing),
        "origin": tuple(float(v) for v in origin),
    }
    return resized[:, 0].movedim(0, slice_axis).contiguous(), new_meta


def hu_to_unit(volume: torch.Tensor, window: Tuple[float, float] = HU_WINDOW) -> torch.Tensor:
    """Clamp Hounsfield units to ``window`` and map it linearly onto [0, 1]."""
    low, high = window
    return (volume.clamp(low, high) - low) / (high - low)


def unit_to_range(volume: torch.Tensor, value_range: Tuple[float, float]) -> torch.Tensor:
    """Map [0, 1] linearly back onto ``value_range = (low, high)``: the inverse of both intensity maps.

    ``unit_to_range(hu_to_unit(v, window), window)`` is ``v`` clamped to the window, and
    ``unit_to_range(*min_max_with_range(v))`` is ``v`` (to float rounding).
    """
    low, high = (float(v) for v in value_range)
    return volume * (high - low) + low


def unit_to_hu(volume: torch.Tensor, window: Tuple[float, float] = HU_WINDOW) -> torch.Tensor:
    """Hounsfield units of a volume mapped to [0, 1] by :func:`hu_to_unit` with the same ``window``."""
    return unit_to_range(volume, window)


def min_max_with_range(volume: torch.Tensor) -> Tuple[torch.Tensor, Tuple[float, float]]:
    """Map the volume's minimum to 0 and maximum to 1; also return ``(minimum, maximum)`` to map back.

    Raises:
        ValueError: the volume is constant.
    """
    low, high = volume.min(), volume.max()
    if not bool(high > low):
        raise ValueError(
            f"volume is constant (every voxel is {float(low):g}); a volume with structure is accepted"
        )
    return (volume - low) / (high - low), (float(low), float(high))


def min_max(volume: torch.Tensor) -> torch.Tensor:
    """Map the volume's minimum to 0 and maximum to 1 (the volume must not be constant)."""
    return min_max_with_range(volume)[0]
