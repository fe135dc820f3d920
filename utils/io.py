"""Volume files with their geometry: NIfTI (and anything SimpleITK reads) or tensor files.

A volume is a float32 array ``[D, H, W]`` in SimpleITK's array order ``(z, y, x)``; its geometry is
a meta dict in SimpleITK's index order ``(x, y, z)``::

    {"spacing": (sx, sy, sz),      # mm per voxel
     "origin": (ox, oy, oz),       # mm, physical position of the centre of voxel (0, 0, 0)
     "direction": (9 floats)}      # row-major 3x3; column i is the physical direction of index axis i

so that the voxel at array index ``[k, j, i]`` lies at ``origin + direction @ (spacing * (i, j, k))``
in LPS coordinates, as in ITK. Tensor files (``.pt``/``.pth`` written by ``torch.save``, ``.npy``)
load without SimpleITK, so device runs need only torch and numpy; SimpleITK is imported inside the
functions that need it.
"""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path
from typing import Callable, Dict, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, Path]
Meta = Dict[str, Tuple[float, ...]]
TORCH_SUFFIXES = (".pt", ".pth")
META_KEYS = ("spacing", "origin", "direction")


def default_meta() -> Meta:
    """Unit spacing, zero origin and identity direction: the geometry of a bare array."""
    return {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0), "direction": tuple(np.eye(3).ravel())}


def volume_suffix(path: PathLike) -> str:
    """The file type of ``path``: its last suffix, or ``.nii.gz`` style double suffixes."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _check_volume(array: np.ndarray, path: PathLike) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"{path}: image has shape {tuple(array.shape)}; a 3D volume [D, H, W] is accepted")
    return np.ascontiguousarray(array, dtype=np.float32)


def _validated_meta(meta: dict, path: PathLike) -> Meta:
    out = default_meta()
    for key, length in zip(META_KEYS, (3, 3, 9)):
        if key in meta:
            value = tuple(float(v) for v in np.asarray(meta[key], dtype=np.float64).ravel())
            if len(value) != length:
                raise ValueError(f"{path}: meta '{key}' has {len(value)} values; {length} are accepted")
            out[key] = value
    return out


def _read_itk(path: Path) -> Tuple[np.ndarray, Meta]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reason"
        raise ValueError(f"cannot read volume {path}: {reason}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: image of size {image.GetSize()} with {image.GetNumberOfComponentsPerPixel()} "
            "component(s) per voxel; a 3D scalar volume is accepted"
        )
    meta = {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()}
    array = sitk.GetArrayFromImage(image)
    if volume_suffix(path) in (".nii", ".nii.gz"):
        array = _restore_nonfinite(array, path)
    return array, _validated_meta(meta, path)


# NIfTI datatype codes of float32 and float64 voxels, the only ones that can hold NaN or infinity.
_NIFTI_FLOATS = {16: np.float32, 64: np.float64}


def _restore_nonfinite(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` with NaN where the NIfTI file holds NaN or infinities.

    SimpleITK's NIfTI reader turns them into 0, which would hide a broken volume; the voxels are
    read again from the file, unscaled (scaling keeps non-finite values non-finite).
    """
    opener = gzip.open if volume_suffix(path) == ".nii.gz" else open
    with opener(path, "rb") as handle:
        header = handle.read(540)
        for order in "<>":
            if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
                datatype = struct.unpack(order + "h", header[70:72])[0]
                offset = int(struct.unpack(order + "f", header[108:112])[0])
                break
            if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
                datatype = struct.unpack(order + "h", header[12:14])[0]
                offset = struct.unpack(order + "q", header[168:176])[0]
                break
        else:
            return array
        # Integer volumes (most CT files) cannot hold NaN: their voxels are not read a second time.
        if datatype not in _NIFTI_FLOATS:
            return array
        raw = header + handle.read()
    dtype = np.dtype(_NIFTI_FLOATS[datatype]).newbyteorder(order)
    if offset < 0 or len(raw) < offset + array.size * dtype.itemsize:
        return array
    voxels = np.frombuffer(raw, dtype=dtype, count=array.size, offset=offset)
    bad = ~np.isfinite(voxels.reshape(array.shape))
    if not bad.any():
        return array
    array = np.array(array, dtype=np.float32)
    array[bad] = np.nan
    return array


def _read_npy(path: Path) -> Tuple[np.ndarray, Meta]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot read volume {path}: {err}") from None
    return array, default_meta()


def _read_torch(path: Path) -> Tuple[np.ndarray, Meta]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a corrupt file; all mean "unreadable"
        raise ValueError(f"cannot read volume {path}: {type(err).__name__}: {err}") from None
    if isinstance(obj, dict) and isinstance(obj.get("volume"), torch.Tensor):
        return obj["volume"].float().numpy(), _validated_meta(obj, path)
    if isinstance(obj, torch.Tensor):
        return obj.float().numpy(), default_meta()
    raise ValueError(
        f"{path}: holds a {type(obj).__name__}; a tensor or a dict with a 'volume' tensor is accepted"
    )


_READERS: Dict[str, Callable[[Path], Tuple[np.ndarray, Meta]]] = {
    ".npy": _read_npy,
    ".pt": _read_torch,
    ".pth": _read_torch,
}


def read_volume(path: PathLike) -> Tuple[np.ndarray, Meta]:
    """Read a 3D scalar volume and its geometry.

    Args:
        path: a NIfTI file (``.nii``/``.nii.gz``) or any other format SimpleITK reads (``.mha``,
            ``.nrrd``...), or a tensor file: ``.npy``, or ``.pt``/``.pth`` holding a tensor or a dict
            ``{"volume": tensor, "spacing", "origin", "direction"}`` (as :func:`write_volume` writes).

    Returns:
        ``(array, meta)``: float32 array ``[D, H, W]`` (z, y, x) and the meta dict described in the
        module docstring (defaults for tensor files without geometry).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read, or the image is not a 3D scalar volume.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; a volume file (NIfTI, .mha, .npy, .pt) is accepted")
    if not path.is_file():
        raise FileNotFoundError(f"volume file not found: {path}")
    array, meta = _READERS.get(volume_suffix(path), _read_itk)(path)
    return _check_volume(array, path), meta


def _as_numpy(array: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float32).numpy()
    return np.asarray(array)


def _write_torch(path: Path, array: np.ndarray, meta: Meta) -> Path:
    torch.save({"volume": torch.from_numpy(np.ascontiguousarray(array)), **meta}, path)
    return path


def _write_npy(path: Path, array: np.ndarray, meta: Meta) -> Path:
    np.save(path, array)
    return path


def _write_itk(path: Path, array: np.ndarray, meta: Meta) -> Path:
    try:
        import SimpleITK as sitk
    except ImportError:
        fallback = path.with_name(path.name[: -len(volume_suffix(path))] + ".pt")
        warnings.warn(
            f"SimpleITK is not installed: writing {fallback.name} (torch) instead of {path.name}",
            stacklevel=3,
        )
        return _write_torch(fallback, array, meta)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(meta["spacing"])
    image.SetOrigin(meta["origin"])
    image.SetDirection(meta["direction"])
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


_WRITERS: Dict[str, Callable[[Path, np.ndarray, Meta], Path]] = {
    ".npy": _write_npy,
    ".pt": _write_torch,
    ".pth": _write_torch,
}


def write_volume(path: PathLike, array: Union[np.ndarray, torch.Tensor], meta: Meta = None) -> Path:
    """Write a 3D volume with its geometry; the format follows the suffix of ``path``.

    Args:
        path: ``.nii.gz`` (or any suffix SimpleITK writes), ``.pt``/``.pth`` (dict with the volume
            and its geometry), or ``.npy`` (the bare array; the geometry is not stored).
        array: ``[D, H, W]`` numpy array or tensor (any device); written in its numpy dtype (tensors
            as float32).
        meta: geometry dict (see the module docstring); ``None`` writes the default geometry.

    Returns:
        The path written: ``path``, or the same name with ``.pt`` when SimpleITK is missing (one warning).
    """
    path = Path(path)
    data = _as_numpy(array)
    if data.ndim != 3:
        raise ValueError(f"{path}: array has shape {tuple(data.shape)}; a 3D volume [D, H, W] is accepted")
    geometry = _validated_meta(meta or {}, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _WRITERS.get(volume_suffix(path), _write_itk)(path, data, geometry)
