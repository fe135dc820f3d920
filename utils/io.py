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

Reading checks a file completely before returning it (a NIfTI file against its header's byte count
and gzip stream, every voxel finite, the geometry sane); writing goes through a temporary file that
is checked before it takes its name (:func:`write_verified`), so a full disk raises instead of
leaving a short file under the final name.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from utils import nifti

PathLike = Union[str, Path]
Meta = Dict[str, Tuple[float, ...]]
TORCH_SUFFIXES = (".pt", ".pth")
META_KEYS = ("spacing", "origin", "direction")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def default_meta() -> Meta:
    """Unit spacing, zero origin and identity direction: the geometry of a bare array."""
    return {
        "spacing": (1.0, 1.0, 1.0),
        "origin": (0.0, 0.0, 0.0),
        "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    }


def volume_suffix(path: PathLike) -> str:
    """The file type of ``path``: its last suffix, or ``.nii.gz`` style double suffixes."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _one_line(err: BaseException) -> str:
    """An exception's telling line without terminal colour codes, for one-line messages."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # SimpleITK's first line names its own source file; the reason is on the last.
    return (lines[-1] if lines[0].startswith("Exception thrown in SimpleITK") else lines[0])[:300]


# ------------------------------------------------------------------------------------ verified writes


def _sync(path: Path) -> None:
    # Some file systems report a full disk only when the data is flushed, not when it is written.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _require_nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise OSError(0, "the written file is empty")


def write_verified(
    path: PathLike,
    write: Callable[[Path], object],
    check: Callable[[Path], None] = _require_nonempty,
) -> Path:
    """Write ``path`` through a temporary file in its folder that is checked before it takes the name.

    ``write(temporary)`` writes the file; the temporary name ends with ``path``'s name, so writers
    that choose the format by suffix still do. The file is flushed to disk and must pass
    ``check(temporary)`` (default: not empty), which raises ValueError or OSError to reject it; only
    then is it renamed to ``path`` (atomically, replacing an older file).

    Returns:
        ``path``.

    Raises:
        OSError: one line naming ``path`` and the reason when the writer fails or the file does not
            pass; ``path`` is left as it was (absent, or the previous file) and no temporary remains.
    """
    path = Path(path)
    temporary = path.with_name(f".{uuid.uuid4().hex[:12]}.partial.{path.name}")
    failure = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        if not temporary.is_file():
            raise OSError(0, "the writer produced no file")
        _sync(temporary)
        check(temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError, ValueError) as err:
        # Raised after this block, so the writer's frames (and any file they hold open) are released first.
        failure = f"cannot write {path}: {_one_line(err)}"
    finally:
        temporary.unlink(missing_ok=True)
    if failure is not None:
        raise OSError(failure)
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` with :func:`write_verified`, checked by reading every byte back."""
    data = text.encode("utf-8")

    def check(temporary: Path) -> None:
        found = temporary.read_bytes()
        if found != data:
            raise OSError(0, f"read back {len(found)} bytes that differ from the {len(data)} written")

    return write_verified(path, lambda temporary: temporary.write_bytes(data), check)


# ------------------------------------------------------------------------------------------ reading


def _check_volume(array: np.ndarray, path: PathLike) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"{path}: image has shape {tuple(array.shape)}; a 3D volume [D, H, W] is accepted")
    return np.ascontiguousarray(array, dtype=np.float32)


def _refuse_nonfinite(count: int, path: PathLike) -> None:
    if count:
        raise ValueError(
            f"{path}: {count} voxel(s) are NaN or infinite; a volume of finite values is accepted"
        )


def _validated_meta(meta: dict, path: PathLike) -> Meta:
    out = default_meta()
    for key, length in zip(META_KEYS, (3, 3, 9)):
        if key in meta:
            try:
                value = tuple(float(v) for v in np.asarray(meta[key], dtype=np.float64).ravel())
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}: meta '{key}' is {meta[key]!r}; {length} numbers are accepted"
                ) from None
            if len(value) != length or not all(np.isfinite(value)):
                raise ValueError(f"{path}: meta '{key}' is {value}; {length} finite numbers are accepted")
            out[key] = value
    if min(out["spacing"]) <= 0:
        raise ValueError(
            f"{path}: spacing {out['spacing']} is not accepted; a positive spacing (mm) on every axis is"
        )
    if abs(np.linalg.det(np.reshape(out["direction"], (3, 3)))) < 1e-6:
        raise ValueError(
            f"{path}: direction {out['direction']} is singular; "
            "a 3x3 matrix of independent axis directions is accepted"
        )
    return out


def _read_itk_image(path: Path):
    import SimpleITK as sitk

    uncompressed = path.with_name(path.name[: -len(".gz")])
    if volume_suffix(path) == ".nii.gz" and uncompressed.exists():
        # Asked for x.nii.gz, the NIfTI library opens x.nii when both exist: it reads a lone link instead.
        with tempfile.TemporaryDirectory() as folder:
            link = Path(folder) / path.name
            link.symlink_to(path.resolve())
            return sitk.ReadImage(str(link))
    return sitk.ReadImage(str(path))


def _read_itk(path: Path) -> Tuple[np.ndarray, Meta]:
    import SimpleITK as sitk

    header = None
    if volume_suffix(path) in nifti.NIFTI_SUFFIXES:
        # SimpleITK reads a truncated file as zeros and NaN as 0: the file is checked against its header.
        try:
            header, nonfinite = nifti.scan(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read volume {path}: {_one_line(err)}") from None
        _refuse_nonfinite(nonfinite, path)
    try:
        image = _read_itk_image(path)
    except RuntimeError as err:
        raise ValueError(f"cannot read volume {path}: {_one_line(err)}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: image of size {image.GetSize()} with {image.GetNumberOfComponentsPerPixel()} "
            "component(s) per voxel; a 3D scalar volume is accepted"
        )
    if header is not None and image.GetSize() != (header.dims + (1, 1))[:3]:
        raise ValueError(
            f"cannot read volume {path}: image size {image.GetSize()} differs from the header's {header.dims}"
        )
    meta = {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()}
    return sitk.GetArrayFromImage(image), _validated_meta(meta, path)


def _read_npy(path: Path) -> Tuple[np.ndarray, Meta]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"cannot read volume {path}: {_one_line(err)}") from None
    return array, default_meta()


def _numpy_globals() -> list:
    """The globals pickled numpy numbers and arrays name: reconstructors and dtypes; none runs code."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    dtypes = {type(np.dtype(code)) for code in "?bhilqBHILQefdgFD"}
    return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def _torch_load(path: Path):
    # torch >= 2.5 loads allow-listed numpy globals; older torch refuses them with the message below.
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe_globals(_numpy_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _read_torch(path: Path) -> Tuple[np.ndarray, Meta]:
    try:
        obj = _torch_load(path)
    except Exception as err:  # torch.load raises many types for a corrupt file; all mean "unreadable"
        refused = re.search(r"GLOBAL (\S+)", _ANSI.sub("", str(err)))
        reason = (
            f"it holds {refused.group(1)}, which is not loaded (tensors, numbers, strings, lists, dicts "
            "and numpy numbers are; write the file with utils.io.write_volume)"
            if refused
            else f"{type(err).__name__}: {_one_line(err)}"
        )
        raise ValueError(f"cannot read volume {path}: {reason}") from None
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
    """Read a 3D scalar volume and its geometry, checked completely.

    Args:
        path: a NIfTI file (``.nii``/``.nii.gz``) or any other format SimpleITK reads (``.mha``,
            ``.nrrd``...), or a tensor file: ``.npy``, or ``.pt``/``.pth`` holding a tensor or a dict
            ``{"volume": tensor, "spacing", "origin", "direction"}`` (as :func:`write_volume` writes;
            the geometry may be numbers, numpy numbers or arrays).

    Returns:
        ``(array, meta)``: float32 array ``[D, H, W]`` (z, y, x) and the meta dict described in the
        module docstring (defaults for tensor files without geometry).

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: the path is a directory.
        ValueError: one line: the file cannot be read; a NIfTI file is shorter than its header says,
            its gzip stream is cut or corrupt, or its header is not sane; the image is not a 3D
            scalar volume; a voxel is NaN or infinite; the geometry is not finite or not invertible.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; a volume file (NIfTI, .mha, .npy, .pt) is accepted")
    if not path.is_file():
        raise FileNotFoundError(f"volume file not found: {path}")
    array, meta = _READERS.get(volume_suffix(path), _read_itk)(path)
    volume = _check_volume(array, path)
    _refuse_nonfinite(volume.size - int(np.count_nonzero(np.isfinite(volume))), path)
    return volume, meta


# ------------------------------------------------------------------------------------------ writing


def _as_numpy(array: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float32).numpy()
    return np.asarray(array)


def _itk_image(array: np.ndarray, meta: Meta):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(meta["spacing"])
    image.SetOrigin(meta["origin"])
    image.SetDirection(meta["direction"])
    return image


def _gzip(source: Path, target: Path) -> None:
    # Level 1: as fast as SimpleITK's gzip at a similar size; no name or time, so same volume, same bytes.
    with open(source, "rb") as plain, open(target, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as packed:
            shutil.copyfileobj(plain, packed, 1 << 20)


def _write_nifti(temporary: Path, array: np.ndarray, meta: Meta, fields: Dict[str, object]) -> None:
    """SimpleITK writes the image uncompressed; the header fields it lacks are set, then it is gzipped."""
    import SimpleITK as sitk

    compressed = volume_suffix(temporary) == ".nii.gz"
    plain = temporary.with_name(temporary.name[: -len(".gz")]) if compressed else temporary
    try:
        sitk.WriteImage(_itk_image(array, meta), str(plain), useCompression=False)
        with open(plain, "r+b") as handle:
            head = bytearray(handle.read(nifti.HEADER_SIZE[2]))
            nifti.set_fields(head, fields)
            handle.seek(0)
            handle.write(head)
        if compressed:
            _gzip(plain, temporary)
    finally:
        if compressed:
            plain.unlink(missing_ok=True)


def _check_nifti(shape: Tuple[int, ...]) -> Callable[[Path], None]:
    def check(temporary: Path) -> None:
        header, _ = nifti.scan(temporary)
        if header.dims != shape[::-1]:
            raise OSError(0, f"the written header holds dims {header.dims}, not {shape[::-1]}")

    return check


def _check_read_back(
    reader: Callable[[Path], Tuple[np.ndarray, Meta]], data: np.ndarray
) -> Callable[[Path], None]:
    def check(temporary: Path) -> None:
        array, _ = reader(temporary)
        if not np.array_equal(np.asarray(array, np.float32), data.astype(np.float32), equal_nan=True):
            raise OSError(0, "the file reads back different voxels")

    return check


def _display_fields(
    descrip: Optional[str], cal_range: Optional[Tuple[float, float]], intent: Optional[str]
) -> Dict[str, object]:
    """The NIfTI header fields of the display options, validated (one-line ValueError)."""
    fields: Dict[str, object] = {}
    if descrip is not None:
        nifti.encode_text("descrip", descrip)
        fields["descrip"] = descrip
    if cal_range is not None:
        low, high = (float(v) for v in cal_range)
        # NIfTI-1 stores the window as float32.
        if not (all(abs(v) < np.finfo(np.float32).max for v in (low, high)) and low < high):
            raise ValueError(
                f"cal_range {tuple(cal_range)} is not accepted; finite (low, high) with low < high is"
            )
        fields.update(cal_min=low, cal_max=high)
    if intent is not None:
        nifti.encode_text("intent_name", intent)
        # Without a qform or sform a viewer shows the array in its own grid, not placed in the patient.
        fields.update(intent_name=intent, qform_code=0, sform_code=0)
    return fields


def _simpleitk_missing() -> bool:
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return True
    return False


def write_volume(
    path: PathLike,
    array: Union[np.ndarray, torch.Tensor],
    meta: Optional[Meta] = None,
    *,
    descrip: Optional[str] = None,
    cal_range: Optional[Tuple[float, float]] = None,
    intent: Optional[str] = None,
) -> Path:
    """Write a 3D volume with its geometry, verified before it takes its name; the suffix picks the format.

    Args:
        path: ``.nii.gz``/``.nii`` (or another suffix SimpleITK writes), ``.pt``/``.pth`` (dict with
            the volume and its geometry), or ``.npy`` (the bare array; the geometry is not stored).
        array: ``[D, H, W]`` numpy array or tensor (any device); written in its numpy dtype (tensors
            as float32).
        meta: geometry dict (see the module docstring); ``None`` writes the default geometry.
        descrip: what the volume holds and its unit, e.g. ``"ISCS recon DDS, HU"`` (printable ASCII,
            at most 79 characters): NIfTI ``descrip``.
        cal_range: ``(low, high)`` display window in the volume's unit: NIfTI ``cal_min``/``cal_max``.
        intent: for arrays that are not anatomy, what the axes hold, e.g. ``"projections"`` (at most
            15 characters): NIfTI ``intent_name``, and no qform/sform, so viewers do not place the
            array in the patient (the spacing is kept).
        ``descrip``, ``cal_range`` and ``intent`` are written to NIfTI files and as keys of ``.pt``
        files; other formats refuse them.

    Returns:
        The path written: ``path``, or the same name with ``.pt`` when SimpleITK is missing (one warning).

    Raises:
        ValueError: the array is not 3D, or the geometry or a display option is not accepted.
        OSError: one line naming the file when it cannot be written completely (a full disk, no
            permission); no partial file is left under its name.
    """
    path = Path(path)
    data = _as_numpy(array)
    if data.ndim != 3:
        raise ValueError(f"{path}: array has shape {tuple(data.shape)}; a 3D volume [D, H, W] is accepted")
    geometry = _validated_meta(meta or {}, path)
    fields = _display_fields(descrip, cal_range, intent)
    suffix = volume_suffix(path)
    if suffix not in TORCH_SUFFIXES + (".npy",) and _simpleitk_missing():
        fallback = path.with_name(path.name[: len(path.name) - len(suffix)] + ".pt")
        warnings.warn(
            f"SimpleITK is not installed: writing {fallback.name} (torch) instead of {path.name}",
            stacklevel=2,
        )
        path, suffix = fallback, ".pt"
    if fields and suffix not in TORCH_SUFFIXES + nifti.NIFTI_SUFFIXES:
        raise ValueError(
            f"{path}: descrip, cal_range and intent are written to NIfTI (.nii, .nii.gz) and .pt files; "
            f"{suffix} is accepted without them"
        )
    if suffix in nifti.NIFTI_SUFFIXES:
        return write_verified(
            path, lambda t: _write_nifti(t, data, geometry, fields), _check_nifti(data.shape)
        )
    if suffix in TORCH_SUFFIXES:
        display = {
            "descrip": descrip,
            "cal_range": cal_range and tuple(float(v) for v in cal_range),
            "intent": intent,
        }
        content = {"volume": torch.from_numpy(np.ascontiguousarray(data)), **geometry}
        content.update({key: value for key, value in display.items() if value is not None})
        return write_verified(path, lambda t: torch.save(content, t), _check_read_back(_read_torch, data))
    if suffix == ".npy":
        return write_verified(path, lambda t: np.save(t, data), _check_read_back(_read_npy, data))
    import SimpleITK as sitk

    return write_verified(
        path,
        lambda t: sitk.WriteImage(_itk_image(data, geometry), str(t), useCompression=True),
        _check_read_back(_read_itk, data),
    )
