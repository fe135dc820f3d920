"""Volume I/O keeps the geometry; reorientation, cropping and resizing keep the physical placement."""

import itertools
import sys

import numpy as np
import pytest
import torch

from utils.io import default_meta, read_volume, write_volume
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
