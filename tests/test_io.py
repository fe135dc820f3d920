"""Volume I/O keeps the geometry; reorientation, cropping and resizing keep the physical placement."""

import itertools
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.io import default_meta, read_volume, write_text, write_verified, write_volume
from utils.volume import crop_slices, hu_to_unit, min_max, reorient, resize_plane

sitk = pytest.importorskip("SimpleITK")


def _meta(direction=None):
    return {
        "spacing": (0.7, 1.3, 2.5),
        "origin": (-12.5, 40.0, 3.25),
        "direction": tuple(np.eye(3).ravel() if direction is None else np.asarray(direction).ravel()),
    }


def _physical(meta, index_xyz):
    """Physical position of a (continuous) index (x, y, z)."""
    direction = np.asarray(meta["direction"]).reshape(3, 3)
    return np.asarray(meta["origin"]) + direction @ (
        np.asarray(meta["spacing"]) * np.asarray(index_xyz, float)
    )


def _axis_aligned_directions():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            for index_axis, (physical_axis, sign) in enumerate(zip(perm, signs)):
                matrix[physical_axis, index_axis] = sign
            yield matrix


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".pt"])
def test_round_trip_keeps_values_and_geometry(tmp_path, gen, suffix):
    volume = torch.rand(5, 6, 7, generator=gen).numpy()
    direction = np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, 1.0, 0]])
    meta = _meta(direction)
    written = write_volume(tmp_path / f"v{suffix}", volume, meta)
    array, back = read_volume(written)
    np.testing.assert_array_equal(array, volume)
    for key in meta:
        np.testing.assert_allclose(back[key], meta[key], atol=1e-5)


def test_npy_loads_with_default_geometry(tmp_path, gen):
    volume = torch.rand(3, 4, 5, generator=gen).numpy()
    np.save(tmp_path / "v.npy", volume)
    array, meta = read_volume(tmp_path / "v.npy")
    np.testing.assert_array_equal(array, volume)
    assert meta == default_meta()


def test_bare_tensor_file_loads(tmp_path, gen):
    volume = torch.rand(3, 4, 5, generator=gen)
    torch.save(volume, tmp_path / "v.pt")
    array, meta = read_volume(tmp_path / "v.pt")
    np.testing.assert_array_equal(array, volume.numpy())
    assert meta == default_meta()


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        read_volume(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("name", ["junk.nii.gz", "junk.pt", "junk.npy"])
def test_unreadable_file_is_value_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not a volume")
    with pytest.raises(ValueError, match="cannot read volume"):
        read_volume(tmp_path / name)


@pytest.mark.parametrize("shape", [(6, 7), (2, 3, 4, 5)])
def test_image_that_is_not_3d_is_rejected(tmp_path, shape):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.float32)), str(tmp_path / "x.nii.gz"))
    with pytest.raises(ValueError, match="3D"):
        read_volume(tmp_path / "x.nii.gz")


def test_write_without_simpleitk_falls_back_to_torch_file(tmp_path, gen, monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    volume = torch.rand(2, 3, 4, generator=gen)
    with pytest.warns(UserWarning, match="SimpleITK is not installed"):
        written = write_volume(tmp_path / "recon.nii.gz", volume, _meta())
    assert written.name == "recon.pt"
    array, meta = read_volume(written)
    np.testing.assert_array_equal(array, volume.numpy())
    assert meta["spacing"] == _meta()["spacing"]


@pytest.mark.parametrize("code", ["LPI", "RAS", "LPS", "ASL"])
def test_reorient_matches_simpleitk_dicomorient(gen, code):
    volume = torch.rand(4, 5, 6, generator=gen).numpy()
    for direction in _axis_aligned_directions():
        image = sitk.GetImageFromArray(volume)
        meta = _meta(direction)
        image.SetSpacing(meta["spacing"])
        image.SetOrigin(meta["origin"])
        image.SetDirection(meta["direction"])
        expected = sitk.DICOMOrient(image, code)
        array, new = reorient(volume, meta, code)
        np.testing.assert_array_equal(array, sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(new["origin"], expected.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(new["direction"], expected.GetDirection(), atol=1e-12)
        np.testing.assert_allclose(new["spacing"], expected.GetSpacing())


def test_reorient_rejects_bad_code():
    with pytest.raises(ValueError, match="'LPX'"):
        reorient(np.zeros((2, 2, 2)), default_meta(), "LPX")


def test_crop_moves_origin_to_first_kept_slice(gen):
    meta = _meta(np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, 1.0, 0]]))
    volume = torch.rand(9, 4, 5, generator=gen)
    cropped, new = crop_slices(volume, meta, axis=0, begin=3, end=7)
    assert torch.equal(cropped, volume[3:7])
    np.testing.assert_allclose(_physical(new, (0, 0, 0)), _physical(meta, (0, 0, 3)))
    cropped, new = crop_slices(volume, meta, axis=1, begin=1, end=3)
    assert torch.equal(cropped, volume[:, 1:3])
    np.testing.assert_allclose(_physical(new, (0, 0, 0)), _physical(meta, (0, 1, 0)))


@pytest.mark.parametrize("begin,end", [(4, 4), (5, 3), (0, 10), (9, 12)])
def test_crop_rejects_empty_or_outside_range(begin, end):
    with pytest.raises(ValueError, match=rf"\[{begin}, {end}\)"):
        crop_slices(torch.zeros(9, 2, 2), default_meta(), 0, begin, end)


def test_crop_both_zero_keeps_everything():
    volume = torch.zeros(9, 2, 2)
    assert crop_slices(volume, default_meta(), 0, 0, 0)[0] is volume


@pytest.mark.parametrize("slice_axis", [0, 1])
def test_resize_keeps_the_physical_extent(gen, slice_axis):
    meta = _meta(np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, 1.0, 0]]))
    volume = torch.rand(6, 20, 30, generator=gen)
    resized, new = resize_plane(volume, meta, slice_axis, 12)
    shape = list(volume.shape)
    for axis in range(3):
        if axis != slice_axis:
            shape[axis] = 12
    assert list(resized.shape) == shape
    # The outer voxel edges (index -0.5 and n - 0.5 along every axis) lie where they were.
    for corner in itertools.product((0, 1), repeat=3):
        old = [(-0.5 if c == 0 else n - 0.5) for c, n in zip(corner, volume.shape[::-1])]
        fresh = [(-0.5 if c == 0 else n - 0.5) for c, n in zip(corner, resized.shape[::-1])]
        np.testing.assert_allclose(_physical(new, fresh), _physical(meta, old), atol=1e-9)
    kept = 2 - slice_axis
    assert new["spacing"][kept] == meta["spacing"][kept]


def test_resize_of_a_constant_stays_constant():
    resized, _ = resize_plane(torch.full((2, 33, 17), 0.25), default_meta(), 0, 8)
    torch.testing.assert_close(resized, torch.full((2, 8, 8), 0.25))


def test_intensity_maps():
    hu = torch.tensor([-3000.0, -1000.0, 300.0, 1600.0, 5000.0])
    torch.testing.assert_close(hu_to_unit(hu), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(min_max(torch.tensor([2.0, 4.0, 6.0])), torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="constant"):
        min_max(torch.full((3,), 7.0))


# ------------------------------------------------------------------------------- verified writes


def _ct_volume(gen, shape=(4, 5, 6)):
    return (torch.rand(*shape, generator=gen) * 2600 - 1000).round().to(torch.int16).numpy()


def _one_line_error(info, *fragments):
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def _short_writes(monkeypatch):
    """SimpleITK's behaviour on a full disk: half the file written, an error printed, nothing raised."""
    real = sitk.WriteImage

    def write_half(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.truncate(Path(path).stat().st_size // 2)
        print("** ERROR: NWAD: wrote only 0 of 524288 bytes")

    monkeypatch.setattr(sitk, "WriteImage", write_half)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha"])
def test_a_write_that_stops_mid_file_raises_and_leaves_no_file(tmp_path, gen, monkeypatch, suffix):
    _short_writes(monkeypatch)
    with pytest.raises(OSError) as info:
        write_volume(tmp_path / f"recon{suffix}", _ct_volume(gen, (8, 16, 16)), _meta())
    _one_line_error(info, f"cannot write {tmp_path / f'recon{suffix}'}: ")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path, gen, monkeypatch):
    first = write_volume(tmp_path / "recon.nii.gz", _ct_volume(gen), _meta())
    before = first.read_bytes()
    _short_writes(monkeypatch)
    with pytest.raises(OSError, match="truncated"):
        write_volume(first, _ct_volume(gen), _meta())
    assert first.read_bytes() == before and list(tmp_path.iterdir()) == [first]


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_a_tensor_writer_error_is_one_line_and_leaves_no_file(tmp_path, gen, monkeypatch, suffix):
    def fail_mid_file(path):
        Path(path).write_bytes(b"PK\x03\x04 half a file")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed\nmore detail")

    monkeypatch.setattr(torch, "save", lambda obj, path, *args, **kwargs: fail_mid_file(path))
    monkeypatch.setattr(np, "save", lambda path, array, *args, **kwargs: fail_mid_file(path))
    with pytest.raises(OSError) as info:
        write_volume(tmp_path / f"v{suffix}", _ct_volume(gen), _meta())
    _one_line_error(info, f"v{suffix}", "file write failed")
    assert list(tmp_path.iterdir()) == []


def test_write_text_checks_every_byte(tmp_path, monkeypatch):
    path = write_text(tmp_path / "metrics.json", '{"psnr": 34.1}\n')
    assert path.read_text() == '{"psnr": 34.1}\n'
    real = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: real(self, data[: len(data) // 2]))
    with pytest.raises(OSError) as info:
        write_text(tmp_path / "args.yaml", "a: 1\nb: 2\n")
    _one_line_error(info, "args.yaml", "differ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_write_verified_names_a_writer_that_wrote_nothing(tmp_path):
    with pytest.raises(OSError) as info:
        write_verified(tmp_path / "figure.png", lambda temporary: None)
    _one_line_error(info, "figure.png", "produced no file")
    with pytest.raises(OSError, match="empty"):
        write_verified(tmp_path / "figure.png", lambda temporary: temporary.touch())
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (root and a kernel that allows mounting), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".pt"])
def test_full_disk_raises_and_leaves_no_file(small_disk, gen, suffix):
    incompressible = torch.rand(32, 32, 32, generator=gen).numpy()
    with pytest.raises(OSError) as info:
        write_volume(small_disk / f"recon{suffix}", incompressible, _meta())
    _one_line_error(info, f"recon{suffix}")
    assert list(small_disk.iterdir()) == []
    with pytest.raises(OSError, match="No space left on device"):
        write_text(small_disk / "run.log", "x" * 200_000)
    assert list(small_disk.iterdir()) == []
    small = write_volume(small_disk / f"small{suffix}", incompressible[:2, :8, :8], _meta())
    np.testing.assert_array_equal(read_volume(small)[0], incompressible[:2, :8, :8])


# ------------------------------------------------------------------------- inputs checked completely


def _nifti_bytes(tmp_path, volume, suffix=".nii"):
    path = write_volume(tmp_path / f"source{suffix}", volume, _meta())
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize("fraction", [0.5, 0.9, "last byte"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_truncated_nifti_is_refused(tmp_path, gen, suffix, fraction):
    data = _nifti_bytes(tmp_path, _ct_volume(gen, (8, 16, 16)), suffix)
    cut = len(data) - 1 if fraction == "last byte" else int(len(data) * fraction)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError) as info:
        read_volume(path)
    _one_line_error(info, f"cannot read volume {path}: truncated")


def test_a_nii_gz_is_read_even_beside_a_nii_of_the_same_name(tmp_path):
    write_volume(tmp_path / "ct.nii.gz", np.full((2, 3, 4), 5, np.int16))
    write_volume(tmp_path / "ct.nii", np.full((2, 3, 4), 7, np.int16))
    assert read_volume(tmp_path / "ct.nii.gz")[0].max() == 5
    assert read_volume(tmp_path / "ct.nii")[0].max() == 7


def test_a_corrupt_gzip_stream_is_refused(tmp_path, gen):
    data = bytearray(_nifti_bytes(tmp_path, _ct_volume(gen), ".nii.gz"))
    data[-6] ^= 0xFF  # a byte of the CRC32 trailer
    (tmp_path / "crc.nii.gz").write_bytes(bytes(data))
    with pytest.raises(ValueError) as info:
        read_volume(tmp_path / "crc.nii.gz")
    _one_line_error(info, "corrupt gzip stream")


def _edit_header(tmp_path, gen, fmt, offset, value):
    data = bytearray(_nifti_bytes(tmp_path, _ct_volume(gen)))
    struct.pack_into(fmt, data, offset, *np.atleast_1d(value).tolist())
    (tmp_path / "edited.nii").write_bytes(bytes(data))
    return tmp_path / "edited.nii"


@pytest.mark.parametrize(
    "fmt,offset,value,fragment",
    [
        (
            "<8h",
            40,
            (3, 20000, 20000, 20000, 1, 1, 1, 1),
            "truncated: 592 bytes of NIfTI data, the header needs",
        ),
        ("<h", 40, 0, "dim[0] is 0"),
        ("<h", 44, -5, "dim[2] is -5"),
        ("<h", 70, 17, "datatype code 17"),
        ("<f", 108, float("nan"), "vox_offset is nan"),
        ("<f", 108, 100.0, "vox_offset is 100.0"),
        ("<i", 0, 349, "sizeof_hdr is 349"),
        ("<4s", 344, b"ni1\0", "magic"),
    ],
)
def test_an_insane_header_is_refused(tmp_path, gen, fmt, offset, value, fragment):
    path = _edit_header(tmp_path, gen, fmt, offset, value)
    with pytest.raises(ValueError) as info:
        read_volume(path)
    _one_line_error(info, fragment)


# Every field of a NIfTI-1 header, in order: byte-swapping them all makes the big-endian file.
NIFTI1_FIELDS = "i10s18sihcc8h3f4h8f3fhcc4f2i80s24s2h6f12f16s4s"


def test_a_big_endian_nifti_is_checked_and_read(tmp_path, gen):
    volume = _ct_volume(gen)
    data = _nifti_bytes(tmp_path, volume)
    fields = struct.unpack_from("<" + NIFTI1_FIELDS, data)
    swapped = struct.pack(">" + NIFTI1_FIELDS, *fields) + data[348:352] + volume.astype(">i2").tobytes()
    (tmp_path / "be.nii").write_bytes(swapped)
    np.testing.assert_array_equal(read_volume(tmp_path / "be.nii")[0], volume)
    (tmp_path / "be_cut.nii").write_bytes(swapped[:-2])
    with pytest.raises(ValueError, match="truncated: 590 bytes"):
        read_volume(tmp_path / "be_cut.nii")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".npy", ".pt", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused(tmp_path, gen, suffix, bad):
    volume = torch.rand(3, 4, 5, generator=gen).numpy()
    volume[1, 2, 3] = bad
    path = tmp_path / f"v{suffix}"
    if suffix in (".npy", ".pt"):
        write_volume(path, volume)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    with pytest.raises(ValueError) as info:
        read_volume(path)
    _one_line_error(info, "1 voxel(s) are NaN or infinite")


def test_numpy_numbers_in_tensor_file_geometry_are_accepted(tmp_path, gen):
    volume = torch.rand(3, 4, 5, generator=gen)
    torch.save(
        {
            "volume": volume,
            "spacing": (np.float64(0.7), np.float32(1.25), np.int64(2)),
            "origin": np.array([-12.5, 40.0, 3.25]),
            "direction": np.eye(3, dtype=np.float32).ravel(),
        },
        tmp_path / "v.pt",
    )
    array, meta = read_volume(tmp_path / "v.pt")
    np.testing.assert_array_equal(array, volume.numpy())
    assert meta == {
        "spacing": (0.7, 1.25, 2.0),
        "origin": (-12.5, 40.0, 3.25),
        "direction": default_meta()["direction"],
    }
    assert all(type(v) is float for values in meta.values() for v in values)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_tensor_file_with_code_runs_nothing_and_is_one_line(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"volume": torch.zeros(2, 2, 2), "spacing": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as info:
        read_volume(tmp_path / "evil.pt")
    _one_line_error(info, "cannot read volume", "it holds io.open, which is not loaded")
    assert not marker.exists()


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("spacing", (1.0, 0.0, 1.0), "positive spacing"),
        ("origin", (0.0, np.nan, 0.0), "finite"),
        ("direction", (1.0, 0, 0, 1.0, 0, 0, 0, 0, 1.0), "singular"),
        ("spacing", "abc", "numbers are accepted"),
    ],
)
def test_insane_geometry_is_refused(tmp_path, key, value, fragment):
    torch.save({"volume": torch.zeros(2, 2, 2), key: value}, tmp_path / "v.pt")
    with pytest.raises(ValueError) as info:
        read_volume(tmp_path / "v.pt")
    _one_line_error(info, fragment)


# ----------------------------------------------------------------------- display fields and units


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_descrip_and_calibration_read_back_in_simpleitk(tmp_path, gen, suffix):
    hu = _ct_volume(gen)
    path = write_volume(
        tmp_path / f"recon{suffix}", hu, _meta(), descrip="ISCS recon DDS, HU", cal_range=(-1000, 1600)
    )
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("descrip") == "ISCS recon DDS, HU"
    assert float(image.GetMetaData("cal_min")) == -1000.0 and float(image.GetMetaData("cal_max")) == 1600.0
    assert image.GetMetaData("qform_code") != "0"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    np.testing.assert_allclose(image.GetOrigin(), _meta()["origin"], atol=1e-5)


def test_projections_carry_their_intent_and_no_patient_placement(tmp_path, gen):
    views = torch.rand(6, 4, 5, generator=gen).numpy()
    path = write_volume(
        tmp_path / "measurement.nii.gz",
        views,
        {"spacing": (2.0, 2.0, 1.0)},
        descrip="projections [views, rows, cols]",
        intent="projections",
    )
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("intent_name") == "projections"
    assert image.GetMetaData("descrip") == "projections [views, rows, cols]"
    assert image.GetMetaData("qform_code") == "0" and image.GetMetaData("sform_code") == "0"
    assert image.GetSpacing() == (2.0, 2.0, 1.0)
    np.testing.assert_array_equal(read_volume(path)[0], views)


def test_tensor_files_keep_the_display_fields_and_npy_refuses_them(tmp_path, gen):
    volume = torch.rand(2, 3, 4, generator=gen)
    path = write_volume(
        tmp_path / "y.pt",
        volume,
        None,
        descrip="projections [views, rows, cols]",
        cal_range=(0, 2),
        intent="projections",
    )
    saved = torch.load(path, weights_only=True)
    assert (saved["descrip"], saved["cal_range"], saved["intent"]) == (
        "projections [views, rows, cols]",
        (0.0, 2.0),
        "projections",
    )
    for suffix in (".npy", ".mha"):
        with pytest.raises(ValueError, match=f"{suffix} is accepted without them"):
            write_volume(tmp_path / f"y{suffix}", volume, descrip="x")


@pytest.mark.parametrize(
    "options,fragment",
    [
        (dict(descrip="x" * 80), "at most 79"),
        (dict(descrip="Hounsfield \u00b5"), "printable ASCII"),
        (dict(intent="projections [v, r, c]"), "at most 15"),
        (dict(cal_range=(1600, -1000)), "low < high"),
        (dict(cal_range=(0, float("inf"))), "finite"),
    ],
)
def test_display_options_are_checked(tmp_path, gen, options, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        write_volume(tmp_path / "v.nii.gz", _ct_volume(gen), **options)
    assert list(tmp_path.iterdir()) == []


def test_same_volume_same_bytes(tmp_path, gen):
    hu = _ct_volume(gen)
    first = write_volume(tmp_path / "a.nii.gz", hu, _meta(), descrip="CT, HU").read_bytes()
    assert write_volume(tmp_path / "b.nii.gz", hu, _meta(), descrip="CT, HU").read_bytes() == first
