"""Measurement noise models: seeded, unbiased where they should be, with the right variance."""

import math

import pytest
import torch

from physics import GaussianNoise, NoiseFree, PoissonNoise, noise_from_sino_noise, snr_db


def test_gaussian_noise_statistics_and_seed():
    y = torch.full((200, 500), 3.0)
    model = GaussianNoise(0.5)
    a = model.noise(y, torch.Generator().manual_seed(7))
    b = model.noise(y, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, model.noise(y, torch.Generator().manual_seed(8)))
    residual = a - y
    assert float(residual.mean()) == pytest.approx(0.0, abs=5e-3)
    assert float(residual.var()) == pytest.approx(0.25, rel=0.02)


def test_poisson_noise_counts_follow_poisson(gen):
    model = PoissonNoise(1000.0, mu_scale=0.05)
    y = torch.full((200, 500), 20.0, dtype=torch.float64)
    noisy = model.noise(y, gen)
    counts = model.I0 * torch.exp(-model.mu_scale * noisy)
    rate = 1000.0 * math.exp(-1.0)
    assert float(counts.mean()) == pytest.approx(rate, rel=5e-3)
    assert float(counts.var()) == pytest.approx(rate, rel=0.03)
    assert torch.allclose(counts, counts.round(), atol=1e-6)
    assert torch.equal(noisy, model.noise(y, torch.Generator().manual_seed(1234)))


def test_poisson_zero_counts_stay_finite(gen):
    model = PoissonNoise(10.0)
    noisy = model.noise(torch.full((1000,), 500.0), gen)
    assert torch.isfinite(noisy).all()
    assert float(noisy.max()) == pytest.approx(-math.log(0.5 / 10.0) / model.mu_scale)


def test_default_mu_scale_gives_water_attenuation():
    water_value = 1000.0 / 2600.0
    assert PoissonNoise(1e4).mu_scale * water_value == pytest.approx(0.0195)


def test_sino_noise_mapping_and_snr(gen):
    assert isinstance(noise_from_sino_noise(0), NoiseFree)
    assert isinstance(noise_from_sino_noise(-1.0), NoiseFree)
    gaussian = noise_from_sino_noise(4.0)
    assert isinstance(gaussian, GaussianNoise) and gaussian.std == pytest.approx(2.0)
    poisson = noise_from_sino_noise(1e5)
    assert isinstance(poisson, PoissonNoise) and poisson.I0 == 1e5
    assert isinstance(noise_from_sino_noise(100), PoissonNoise)
    with pytest.raises(ValueError, match="finite"):
        noise_from_sino_noise(float("nan"))
    clean = torch.ones(10000)
    noisy = GaussianNoise(0.1).noise(clean, gen)
    assert snr_db(clean, noisy) == pytest.approx(20.0, abs=0.2)
    assert snr_db(clean, NoiseFree().noise(clean, gen)) == math.inf


def test_noise_argument_errors():
    for bad in (-1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="std"):
            GaussianNoise(bad)
    with pytest.raises(ValueError, match="I0"):
        PoissonNoise(0)
    with pytest.raises(ValueError, match="mu_scale"):
        PoissonNoise(10.0, mu_scale=-1.0)
