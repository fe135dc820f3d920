"""Intensity maps and their exact inverses: outputs go back to the input's units (HU, or the MRI's scale)."""

import numpy as np
import pytest
import torch

from utils.io import read_volume, write_volume
from utils.volume import HU_WINDOW, hu_to_unit, min_max, min_max_with_range, unit_to_hu, unit_to_range


def test_hu_round_trip_is_within_half_a_hu(gen):
    hu = torch.rand(8, 16, 16, generator=gen, dtype=torch.float64).float() * 2600 - 1000
    back = unit_to_hu(hu_to_unit(hu))
    assert float((back - hu).abs().max()) < 0.5
    # float32 rounding of a [0, 1] value times the 2600 HU window: far below a tenth of a HU.
    assert float((back - hu).abs().max()) < 1e-3


def test_unit_to_hu_is_the_linear_inverse_of_the_window():
    unit = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(unit_to_hu(unit), torch.tensor([-1000.0, -350.0, 300.0, 1600.0]))
    torch.testing.assert_close(unit_to_hu(unit, (0.0, 80.0)), torch.tensor([0.0, 20.0, 40.0, 80.0]))
    assert HU_WINDOW == (-1000.0, 1600.0)


def test_hu_outside_the_window_comes_back_clamped():
    hu = torch.tensor([-3000.0, -1000.0, 1600.0, 5000.0])
    torch.testing.assert_close(unit_to_hu(hu_to_unit(hu)), torch.tensor([-1000.0, -1000.0, 1600.0, 1600.0]))


def test_min_max_returns_its_range_and_maps_back(gen):
    volume = torch.rand(5, 6, 7, generator=gen) * 340.0 + 12.5
    unit, value_range = min_max_with_range(volume)
    assert value_range == (float(volume.min()), float(volume.max()))
    assert float(unit.min()) == 0.0 and float(unit.max()) == 1.0
    torch.testing.assert_close(unit, min_max(volume), rtol=0, atol=0)
    torch.testing.assert_close(unit_to_range(unit, value_range), volume, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="constant"):
        min_max_with_range(torch.full((2, 2, 2), 3.0))


def test_ct_file_in_hu_comes_back_in_hu_through_the_files(tmp_path, gen):
    """HU file -> [0, 1] -> HU written with a display window -> read back within 0.5 HU."""
    sitk = pytest.importorskip("SimpleITK")
    hu = (torch.rand(6, 8, 8, generator=gen) * 2600 - 1000).round().to(torch.int16).numpy()
    source = write_volume(tmp_path / "ct.nii.gz", hu, {"spacing": (0.8, 0.8, 2.0)})
    array, meta = read_volume(source)
    unit = hu_to_unit(torch.from_numpy(array))
    out = write_volume(
        tmp_path / "recon.nii.gz", unit_to_hu(unit), meta, descrip="ISCS recon DDS, HU", cal_range=HU_WINDOW
    )
    back, back_meta = read_volume(out)
    assert np.abs(back - hu).max() < 0.5
    assert back_meta == meta
    image = sitk.ReadImage(str(out))
    assert (float(image.GetMetaData("cal_min")), float(image.GetMetaData("cal_max"))) == HU_WINDOW
