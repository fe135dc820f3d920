"""DPS as a sampler step: the gradient through the denoiser, checked against its closed form."""

import pytest
import torch
from test_sampler import GaussianDenoiser, MatrixOp

from algorithms import ConsistencyStep, DDSConsistency, SamplerConfig, reconstruct, sample
from algorithms.dps import DPSStep
from algorithms.noise import IidNoise
from algorithms.renoise import make_renoise


@pytest.fixture
def linear_gaussian(gen):
    """Prior N(mu, s^2 I) on 8-pixel slices (its exact Tweedie denoiser), 3 noiseless measurements each
    by a matrix of norm 1 (DPS's step size is relative to the operator's scale)."""
    matrix = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    op = MatrixOp(matrix / torch.linalg.matrix_norm(matrix, ord=2), (2, 4))
    mu = torch.randn(1, 1, 2, 4, generator=gen, dtype=torch.float64)
    y = op.A(mu + torch.randn(4, 1, 2, 4, generator=gen, dtype=torch.float64))
    return op, y, GaussianDenoiser(mu, 0.7)


def test_dps_step_is_the_closed_form_gradient_through_the_denoiser(linear_gaussian, gen):
    op, y, denoiser = linear_gaussian
    x = 3.0 * torch.randn(4, 1, 2, 4, generator=gen, dtype=torch.float64)
    sigma, step_size = 1.5, 0.3
    x0, x0_dc = DPSStep(op, y, step_size)(denoiser, x, sigma)
    # x0 = a x + b with a = s^2 / (s^2 + sigma^2), so grad_x ||y - M x0||^2 = -2 a M^T (y - M x0).
    a = 0.49 / (0.49 + sigma**2)
    expected_x0 = (sigma**2 * denoiser.mu + 0.49 * x) / (0.49 + sigma**2)
    residual = y - op.A(expected_x0)
    gradient = -2.0 * a * op.A_adjoint(residual)
    torch.testing.assert_close(x0, expected_x0)
    torch.testing.assert_close(x0_dc, expected_x0 - step_size / residual.norm() * gradient)
    assert not x0.requires_grad and not x0_dc.requires_grad


def test_dps_sampling_fits_the_data_better_than_the_prior_alone(linear_gaussian):
    op, y, denoiser = linear_gaussian
    config = SamplerConfig(nfe=30, sigma_min=0.01, sigma_max=20.0, renoise="DDS", noise="iid")

    def misfit(step):
        generator = torch.Generator().manual_seed(3)
        x = reconstruct(denoiser, step, (4, 1, 2, 4), config, generator=generator, disable=True)
        return float((op.A(x.double()) - y).norm())

    assert misfit(DPSStep(op, y, step_size=0.5)) < 0.3 * misfit(None)


def test_only_dps_runs_the_denoiser_with_gradients(linear_gaussian):
    op, y, denoiser = linear_gaussian
    modes = []

    def recording(x, sigma):
        modes.append(torch.is_grad_enabled())
        return denoiser(x, sigma)

    x = torch.zeros(4, 1, 2, 4, dtype=torch.float64)
    run = dict(sigmas=[2.0, 1.0], renoise=make_renoise("DDPM"), noise=IidNoise(), generator=torch.Generator())
    sample(recording, x, step=ConsistencyStep(DDSConsistency(op, y, num_cg=2)), disable=True, **run)
    sample(recording, x, step=DPSStep(op, y), disable=True, **run)
    assert modes == [False, False, True, True]
    with pytest.raises(TypeError, match="DPSStep: the denoiser returned a tensor without gradient"):
        sample(lambda x, sigma: x.detach() * 0.5, x, step=DPSStep(op, y), disable=True, **run)
