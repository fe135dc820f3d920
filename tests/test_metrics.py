"""Metrics: closed forms, identities, slice skipping, and SSIM parity with torchmetrics' SSIM map."""

import json
import math

import pytest
import torch

from utils.metrics import METRIC_KEYS, PLANES, compute_metrics, format_table, ssim_per_slice, volume_metrics


@pytest.fixture
def gt(gen):
    return torch.rand(12, 16, 20, generator=gen)


def test_psnr_closed_form_for_a_constant_offset(gt):
    offset = 0.05
    data_range = float(gt.max() - gt.min())
    expected = 10 * math.log10(data_range**2 / offset**2)
    values = volume_metrics(gt + offset, gt)
    for key in ["psnr"] + [f"psnr_{plane}" for plane in PLANES]:
        assert values[key] == pytest.approx(expected, abs=1e-4)


def test_identical_volumes(gt):
    values = volume_metrics(gt, gt)
    assert values["psnr"] is None  # infinite: stored as None
    for key in ["ssim"] + [f"ssim_{plane}" for plane in PLANES]:
        assert values[key] == pytest.approx(1.0, abs=1e-6)
    assert values["abs_delta"] == 0.0


def test_abs_delta_of_a_z_ramp_and_a_z_checkerboard(gt):
    ramp = 0.01 * torch.arange(gt.shape[0], dtype=torch.float32)[:, None, None]
    assert volume_metrics(gt + ramp, gt)["abs_delta"] == pytest.approx(0.01, rel=1e-5)
    # An error that flips sign from slice to slice doubles in the z-gradient.
    checker = 0.03 * (-1.0) ** torch.arange(gt.shape[0], dtype=torch.float32)[:, None, None]
    assert volume_metrics(gt + checker, gt)["abs_delta"] == pytest.approx(0.06, rel=1e-5)
    # A constant offset has no inter-slice gap at all; in-plane noise only a little.
    assert volume_metrics(gt + 0.2, gt)["abs_delta"] == pytest.approx(0.0, abs=1e-6)


def test_ssim_matches_torchmetrics_map_inside_the_image(gen):
    ssim_module = pytest.importorskip("torchmetrics.functional.image.ssim")
    gt = torch.rand(4, 40, 33, generator=gen)
    x = (gt + 0.1 * torch.randn(4, 40, 33, generator=gen)).clamp(0, 1)
    data_range = float(gt.max() - gt.min())
    _, full = ssim_module._ssim_update(x[:, None], gt[:, None], data_range=data_range, return_full_image=True)
    # torchmetrics pads by reflection: the windows fully inside are its map less a 5-pixel border.
    expected = full[..., 5:-5, 5:-5].reshape(4, -1).mean(-1).double()
    torch.testing.assert_close(ssim_per_slice(x, gt, data_range), expected, atol=1e-6, rtol=0)


def test_ssim_decreases_with_noise(gt, gen):
    noise = torch.randn(gt.shape, generator=gen)
    values = [volume_metrics(gt + s * noise, gt)["ssim"] for s in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2]


def test_slices_without_structure_are_skipped(gt, gen):
    gt = gt.clone()
    gt[:3] = 0.0  # three all-background axial slices
    recon = gt + 0.02 * torch.randn(gt.shape, generator=gen)
    recon[:3] += 0.3  # a large error where the ground truth has no structure
    values = volume_metrics(recon, gt)
    assert values["slices_axial"] == gt.shape[0] - 3
    assert values["slices_coronal"] == gt.shape[1]
    assert values["slices_sagittal"] == gt.shape[2]
    data_range = float(gt.max() - gt.min())
    mse = (recon - gt)[3:].double().pow(2).mean(dim=(1, 2))
    expected = float((10 * torch.log10(data_range**2 / mse)).mean())
    assert values["psnr_axial"] == pytest.approx(expected, rel=1e-9)
    assert values["psnr_axial"] > values["psnr"] + 3


def test_thin_volumes_use_a_smaller_window(gen):
    gt = torch.rand(5, 16, 16, generator=gen)
    values = volume_metrics(gt, gt)
    assert values["ssim_coronal"] == pytest.approx(1.0, abs=1e-6)
    assert values["ssim_sagittal"] == pytest.approx(1.0, abs=1e-6)


def test_constant_gt_and_shape_mismatch_are_rejected(gt):
    with pytest.raises(ValueError, match="constant"):
        volume_metrics(gt, torch.ones_like(gt))
    with pytest.raises(ValueError, match="differs"):
        volume_metrics(gt[1:], gt)


def test_report_keys_are_stable_and_json_serialisable(gt):
    report = compute_metrics(gt, {"FBP-LV": gt + 0.1, "recon": gt})
    assert set(report) == {"data_range", "shape", "skip_fraction", "metrics"}
    assert list(report["metrics"]) == ["FBP-LV", "recon"]
    for values in report["metrics"].values():
        assert list(values) == list(METRIC_KEYS)
    json.loads(json.dumps(report, allow_nan=False))
    table = format_table(report)
    assert "FBP-LV" in table and "n/a" in table  # the exact match has no finite PSNR
