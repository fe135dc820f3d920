"""Noise sources: every slice N(0, I), inter-slice correlations in closed form, reproducibility."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from algorithms import NOISE_SOURCES, Ar1Noise, IidNoise, IscsNoise, SharedNoise, iscs_angles, make_noise

ALL_SOURCES = [IidNoise(), IscsNoise(), SharedNoise(), Ar1Noise(corr_length=3.0)]


def _slice_corr(z: torch.Tensor) -> torch.Tensor:
    """Empirical correlation matrix [N, N] between the slices of z (pixels are the samples)."""
    flat = z.reshape(z.shape[0], -1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True)
    return flat @ flat.T


def _reference_take_indices(num_slices: int, stride: int = 16) -> list:
    """Indices the reference keeps on its path of 16 N points: centre, then left/right alternately."""
    length = stride * num_slices
    centre = length // 2
    kept = [centre]
    k = 1
    while len(kept) < num_slices:
        if centre - k * stride >= 0:
            kept.append(centre - k * stride)
        if len(kept) < num_slices and centre + k * stride < length:
            kept.append(centre + k * stride)
        k += 1
    return sorted(kept)


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: type(s).__name__)
def test_every_slice_is_standard_normal(source, gen):
    z = source((8, 1, 512, 512), gen)
    assert z.shape == (8, 1, 512, 512) and z.dtype == torch.float32
    flat = z.reshape(8, -1).double()
    # 262144 pixels: the standard error of a slice's variance is 0.0028, so 1% is over 3.5 of them.
    assert flat.mean(dim=1).abs().max() < 0.01
    assert (flat.var(dim=1) - 1).abs().max() < 0.01


def test_iid_slices_are_uncorrelated(gen):
    corr = _slice_corr(IidNoise()((6, 1, 128, 128), gen))
    off_diagonal = corr - torch.diag(torch.diag(corr))
    assert off_diagonal.abs().max() < 0.04


def test_shared_slices_are_identical(gen):
    z = SharedNoise()((5, 1, 16, 16), gen)
    assert torch.equal(z, z[:1].expand_as(z))


def test_iscs_correlation_is_cosine_of_angle_difference(gen):
    # Closed form: slice i is cos(phi_i) z0 + sin(phi_i) z1 with independent anchors, so
    # corr(i, j) = cos(phi_i - phi_j); with N = 8 neighbours are ~0.98 and the ends ~0.21 apart.
    n = 8
    phi = iscs_angles(n)
    expected = torch.cos(phi[:, None] - phi[None, :])
    corr = _slice_corr(IscsNoise()((n, 1, 256, 256), gen))
    assert torch.allclose(corr, expected, atol=0.02)
    assert expected[0, 1] > 0.97 and expected[0, -1] < 0.25


@pytest.mark.parametrize("num_slices", [1, 2, 3, 4, 7, 10, 33])
def test_iscs_angles_match_the_reference_path_selection(num_slices):
    n_path = 16 * num_slices
    alphas = [(k + 1) / (n_path + 1) for k in _reference_take_indices(num_slices)]
    expected = torch.tensor(alphas, dtype=torch.float64) * (math.pi / 2)
    assert torch.allclose(iscs_angles(num_slices), expected, rtol=0, atol=1e-14)


def test_iscs_is_the_slerp_of_two_anchor_draws(gen):
    z = IscsNoise()((5, 1, 8, 8), gen)
    replay = torch.Generator().manual_seed(1234)
    z0 = torch.randn((1, 1, 8, 8), generator=replay)
    z1 = torch.randn((1, 1, 8, 8), generator=replay)
    phi = iscs_angles(5).float().reshape(-1, 1, 1, 1)
    assert torch.allclose(z, torch.cos(phi) * z0 + torch.sin(phi) * z1, atol=1e-6)


def test_iscs_span_zero_is_shared_and_span_widens(gen):
    z = IscsNoise(span=0.0)((4, 1, 8, 8), gen)
    assert torch.allclose(z, z[:1].expand_as(z), atol=1e-6)
    narrow, wide = iscs_angles(6, span=1.0), iscs_angles(6, span=3.0)
    assert torch.allclose(wide[1:] - wide[:-1], 3 * (narrow[1:] - narrow[:-1]))
    assert torch.allclose(wide[6 // 2], narrow[6 // 2])


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: type(s).__name__)
def test_no_source_builds_more_than_one_volume(source, gen):
    # The reference's ISCS path would hold 16 volumes; every source here stays at one.
    shape = (64, 1, 16, 16)
    with _LargestTensor() as spy:
        source(shape, gen)
    assert spy.largest == math.prod(shape)


def test_ar1_neighbour_correlation_is_rho(gen):
    source = Ar1Noise(corr_length=2.0)
    corr = _slice_corr(source((6, 1, 256, 256), gen))
    rho = math.exp(-1 / 2.0)
    lags = torch.arange(6)
    expected = torch.tensor(rho, dtype=torch.float64) ** (lags[:, None] - lags[None, :]).abs()
    assert abs(source.rho - rho) < 1e-15
    assert torch.allclose(corr, expected, atol=0.02)


def test_ar1_ends_of_the_knob(gen):
    z_iid = Ar1Noise(corr_length=0.0)((3, 1, 8, 8), gen)
    assert torch.equal(z_iid, torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(1234)))
    z_shared = Ar1Noise(corr_length=math.inf)((3, 1, 8, 8), gen)
    assert torch.equal(z_shared, z_shared[:1].expand_as(z_shared))


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: type(s).__name__)
def test_same_seed_same_noise_other_seed_other_noise(source):
    shape = (4, 1, 8, 8)
    first = source(shape, torch.Generator().manual_seed(7))
    again = source(shape, torch.Generator().manual_seed(7))
    other = source(shape, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: type(s).__name__)
def test_dtype_and_device_follow_the_request(source, gen):
    z = source((3, 1, 4, 4), gen, dtype=torch.float64)
    assert z.dtype == torch.float64 and z.device == gen.device and z.shape == (3, 1, 4, 4)


def test_registry_names_and_aliases():
    assert set(NOISE_SOURCES) == {"iid", "iscs", "shared", "ar1"}
    assert make_noise(None) == IidNoise() and make_noise("None") == IidNoise()
    assert make_noise("SLERP") == IscsNoise() and make_noise("BCS") == SharedNoise()
    assert make_noise("iscs", span=0.5) == IscsNoise(span=0.5)
    assert make_noise("ar1", corr_length=4.0).rho == pytest.approx(math.exp(-0.25))


def test_bad_names_and_parameters_are_clear_errors(gen):
    with pytest.raises(ValueError, match=r"unknown noise source 'gaussian'.*iid, iscs, shared, ar1.*SLERP"):
        make_noise("gaussian")
    with pytest.raises(ValueError, match="'iid' does not take parameters"):
        make_noise("iid", span=1.0)
    with pytest.raises(ValueError, match="span"):
        IscsNoise(span=-1.0)
    with pytest.raises(ValueError, match="corr_length"):
        Ar1Noise(corr_length=-2.0)
    with pytest.raises(ValueError, match="noise shape"):
        IidNoise()((0, 1, 4, 4), gen)
