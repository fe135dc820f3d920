"""VESDE: closed forms of the noise schedule, prior, discretisation and the reverse-diffusion step."""

import math

import pytest
import torch

from models import VESDE


def test_sigma_is_geometric_between_the_ends():
    sde = VESDE(0.01, 378.0, 2000)
    assert sde.sigma(0.0) == pytest.approx(0.01) and sde.sigma(1.0) == pytest.approx(378.0)
    assert sde.sigma(0.5) == pytest.approx(math.sqrt(0.01 * 378.0))
    t = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(sde.sigma(t), 0.01 * (37800.0**t))


def test_marginal_and_sde_coefficients():
    sde = VESDE(0.1, 10.0, 10)
    x = torch.ones(3, 1, 2, 2)
    mean, std = sde.marginal_prob(x, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(mean, x)
    torch.testing.assert_close(std.flatten(), torch.tensor([0.1, 1.0, 10.0]))
    drift, diffusion = sde.sde(x, 0.5)
    assert torch.equal(drift, torch.zeros_like(x))
    assert diffusion.item() == pytest.approx(1.0 * math.sqrt(2 * math.log(100.0)))


def test_prior_sampling_is_seeded_and_scaled(gen):
    sde = VESDE(0.01, 50.0, 100)
    a = sde.prior_sampling((4000,), torch.Generator().manual_seed(3))
    b = sde.prior_sampling((4000,), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert a.std().item() == pytest.approx(50.0, rel=0.05)
    assert sde.prior_sampling((2, 3), gen, dtype=torch.float64).dtype == torch.float64


def test_discretize_gives_the_smld_increments():
    sde = VESDE(0.01, 378.0, 2000)
    x = torch.zeros(1, 1, 2, 2)
    sigmas = sde.discrete_sigmas
    for step in (0, 1, 1000, 1999):
        t = min(step + 0.5, sde.N - 1) / (sde.N - 1)
        f, g = sde.discretize(x, t)
        previous = sigmas[step - 1] if step > 0 else 0.0
        assert torch.equal(f, x)
        assert g.item() == pytest.approx(math.sqrt(sigmas[step] ** 2 - previous**2), rel=1e-5)
    torch.testing.assert_close(sigmas[[0, -1]], torch.tensor([0.01, 378.0], dtype=torch.float64))


def test_reverse_diffusion_step_on_a_gaussian():
    """For x0 ~ N(0, s^2 I) the score at std sigma is -x / (s^2 + sigma^2): the step has a closed form."""
    sde = VESDE(0.01, 100.0, 50)
    s2 = 4.0
    calls = []

    def score_fn(x, sigma):
        calls.append(sigma)
        return -x / (s2 + sigma**2)

    x = torch.linspace(-3, 3, 8).reshape(2, 1, 2, 2)
    t = 0.6
    noise = torch.ones_like(x)
    _, g = sde.discretize(x, t)
    x_next, x_mean = sde.reverse_diffusion_step(score_fn, x, t, noise)
    expected_mean = x - g**2 * x / (s2 + sde.sigma(t) ** 2)
    torch.testing.assert_close(x_mean, expected_mean)
    torch.testing.assert_close(x_next, expected_mean + g)
    assert calls == [pytest.approx(sde.sigma(t))]
    final, final_mean = sde.reverse_diffusion_step(score_fn, x, t)
    assert torch.equal(final, final_mean)


@pytest.mark.parametrize("kwargs", [{"sigma_min": 0.0}, {"sigma_min": 5.0, "sigma_max": 1.0}, {"N": 1}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="VESDE needs"):
        VESDE(**{"sigma_min": 0.01, "sigma_max": 1.0, "N": 10, **kwargs})


def test_sampler_levels_and_discrete_sigmas_are_one_geometric_schedule():
    from algorithms.sampler import get_sigmas

    levels = get_sigmas(6, 0.01, 378.0, eps=1e-9)
    assert levels[0].item() == pytest.approx(378.0) and levels[-1].item() == pytest.approx(0.01, rel=1e-6)
    ratios = levels[1:] / levels[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.01 / 378.0) ** (1 / 5)), rtol=1e-6, atol=0)
    # The SDE's discrete levels are the same schedule in increasing order.
    torch.testing.assert_close(VESDE(0.01, 378.0, 6).discrete_sigmas, levels.flip(0), rtol=1e-6, atol=0)
