"""Re-noising presets: the total noise level of every step is exactly sigma_next."""

import math

import pytest
import torch

from algorithms import RENOISE, EtaRenoise, make_renoise

LEVEL_PAIRS = [(378.0, 200.0), (5.0, 4.9), (1.0, 0.01), (0.02, 0.01)]


@pytest.mark.parametrize("name", list(RENOISE))
@pytest.mark.parametrize("sigma, sigma_next", LEVEL_PAIRS)
def test_noise_split_adds_up_to_sigma_next(name, sigma, sigma_next):
    sigma_sto, sigma_det = RENOISE[name].split(sigma, sigma_next)
    assert sigma_sto >= 0 and sigma_det >= 0
    assert math.isclose(sigma_sto**2 + sigma_det**2, sigma_next**2, rel_tol=1e-12)


@pytest.mark.parametrize("name, eta", [("DDPM", 1.0), ("DDS", 0.85), ("DiffPIR", 0.5)])
def test_fixed_eta_presets(name, eta):
    sigma_sto, sigma_det = RENOISE[name].split(3.0, 2.0)
    assert sigma_sto == pytest.approx(eta * 2.0, rel=1e-12)
    assert sigma_det == pytest.approx(math.sqrt(1 - eta**2) * 2.0, rel=1e-12)


@pytest.mark.parametrize("sigma, sigma_next", LEVEL_PAIRS)
def test_ddim_is_the_ve_ancestral_step(sigma, sigma_next):
    # The VE ancestral step's posterior variance is sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2.
    sigma_sto, sigma_det = RENOISE["DDIM"].split(sigma, sigma_next)
    assert sigma_sto**2 == pytest.approx(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, rel=1e-12)
    assert sigma_det == pytest.approx(sigma_next**2 / sigma, rel=1e-12)


def test_ddpm_ignores_the_noise_estimate(gen):
    x0, eps, z = (torch.randn(3, 1, 4, 4, generator=gen) for _ in range(3))
    assert torch.equal(RENOISE["DDPM"](x0, eps, 2.0, 1.5, z), x0 + 1.5 * z)
    assert torch.equal(RENOISE["DDPM"](x0, 100 * eps, 2.0, 1.5, z), x0 + 1.5 * z)


@pytest.mark.parametrize("name", list(RENOISE))
def test_gaussian_x0_is_renoised_to_its_marginal_at_sigma_next(name, gen):
    # x0 ~ N(mu, s^2), x = x0 + sigma e, the true e as estimate: x_next ~ N(mu, s^2 + sigma_next^2).
    mu, s, sigma, sigma_next = 0.3, 0.7, 2.0, 1.2
    shape = (4, 1, 256, 256)
    x0 = mu + s * torch.randn(shape, generator=gen, dtype=torch.float64)
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    x_next = RENOISE[name](x0, eps, sigma, sigma_next, z)
    assert (x_next - x0).var().item() == pytest.approx(sigma_next**2, rel=0.01)
    assert x_next.mean().item() == pytest.approx(mu, abs=0.01)
    assert x_next.var().item() == pytest.approx(s**2 + sigma_next**2, rel=0.01)


def test_renoise_does_not_modify_its_inputs(gen):
    x0, eps, z = (torch.randn(2, 1, 4, 4, generator=gen) for _ in range(3))
    copies = [t.clone() for t in (x0, eps, z)]
    RENOISE["DDS"](x0, eps, 2.0, 1.0, z)
    assert all(torch.equal(a, b) for a, b in zip((x0, eps, z), copies, strict=True))


def test_make_renoise_resolves_names_numbers_and_instances():
    assert make_renoise("DDS") is RENOISE["DDS"]
    assert make_renoise(0.3).split(1.0, 1.0)[0] == pytest.approx(0.3)
    custom = EtaRenoise(0.2, "custom")
    assert make_renoise(custom) is custom


def test_bad_presets_and_etas_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown renoise preset 'DDNM'.*DDPM, DDS, DiffPIR, DDIM"):
        make_renoise("DDNM")
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\], got 1.5"):
        make_renoise(1.5)
    with pytest.raises(TypeError, match="renoise must be"):
        make_renoise(None)
    with pytest.raises(ValueError, match="sigma_next <= sigma"):
        RENOISE["DDIM"].split(1.0, 2.0)
