"""The sampler and its data-consistency steps, checked against closed forms.

The prior is Gaussian, N(mu, s^2 I) per pixel, whose exact Tweedie denoiser is
x0 = (sigma^2 mu + s^2 x) / (s^2 + sigma^2). With noiseless data y = M x and a full-row-rank M,
the posterior is that Gaussian restricted to {M x = y}: mean mu + M^+ (y - M mu) (the projection
of mu onto the constraint) and covariance s^2 (I - M^+ M).
"""

import math

import pytest
import torch

from algorithms import (
    ConsistencyStep,
    DDNMConsistency,
    DDSConsistency,
    IidNoise,
    SamplerConfig,
    get_sigmas,
    make_noise,
    make_renoise,
    reconstruct,
    sample,
)

METHODS = ("DDS", "DDNM")


class MatrixOp:
    """The same matrix M [m, h*w] applied to every slice of a stack [N, 1, h, w]; y is [N, m]."""

    def __init__(self, matrix: torch.Tensor, slice_shape):
        self.matrix = matrix
        self.slice_shape = tuple(slice_shape)
        self.pinv = torch.linalg.pinv(matrix.double()).to(matrix.dtype)
        self.adjoint_calls = 0

    def A(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def A_adjoint(self, y):
        self.adjoint_calls += 1
        return (y @ self.matrix).reshape((y.shape[0], 1) + self.slice_shape)

    def A_dagger(self, y):
        return (y @ self.pinv.T).reshape((y.shape[0], 1) + self.slice_shape)


class IdentityOp:
    """A = A^T = A^+ = I."""

    def A(self, x):
        return x.clone()

    A_adjoint = A
    A_dagger = A


class GaussianDenoiser:
    """The exact Tweedie denoiser of the prior N(mu, s^2 I); records every input."""

    def __init__(self, mu: torch.Tensor, s: float):
        self.mu, self.s2 = mu, s * s
        self.inputs = []

    def __call__(self, x, sigma):
        self.inputs.append(x.clone())
        return (sigma**2 * self.mu + self.s2 * x) / (self.s2 + sigma**2)


def _projection(matrix, x, y):
    """Closest point to x on {M x = y} per slice, by the normal equations of M M^T."""
    flat = x.reshape(x.shape[0], -1).double()
    m = matrix.double()
    correction = torch.linalg.solve(m @ m.T, (flat @ m.T - y.double()).T).T @ m
    return (flat - correction).reshape(x.shape)


@pytest.fixture
def problem(gen):
    """16-pixel slices, 6 measurements each: op, y [N, 6], a denoised stack x0 [N, 1, 4, 4]."""
    matrix = torch.randn(6, 16, generator=gen)
    op = MatrixOp(matrix, (4, 4))
    x_true = torch.randn(5, 1, 4, 4, generator=gen)
    x0 = torch.randn(5, 1, 4, 4, generator=gen)
    return op, op.A(x_true), x0


def test_ddnm_step_is_the_projection_onto_the_data(problem):
    op, y, x0 = problem
    x = DDNMConsistency(op, y)(x0, 1.0)
    assert torch.allclose(x.double(), _projection(op.matrix, x0, y), atol=1e-5)
    assert torch.allclose(op.A(x), y, atol=1e-4)


def test_dds_step_with_enough_cg_is_the_projection_too(problem):
    op, y, x0 = problem
    # CG from x0 stays in x0 + range(M^T) and, M having rank 6, is exact after 6 iterations.
    x = DDSConsistency(op, y, num_cg=6)(x0, 1.0)
    assert torch.allclose(x.double(), _projection(op.matrix, x0, y), atol=1e-4)


def test_dds_step_with_tikhonov_weight_matches_the_closed_form(problem):
    op, y, x0 = problem
    sigma, w_tik = 0.5, 2.0
    rho = w_tik / sigma**2
    x = DDSConsistency(op, y, num_cg=16, w_tik=w_tik)(x0, sigma)
    m = op.matrix.double()
    rhs = y.double() @ m + rho * x0.reshape(5, -1).double()
    expected = torch.linalg.solve(m.T @ m + rho * torch.eye(16, dtype=torch.float64), rhs.T).T
    assert torch.allclose(x.double().reshape(5, -1), expected, atol=1e-4)


def test_dds_step_starts_at_x0_and_computes_aty_once(problem):
    op, y, x0 = problem
    assert torch.equal(DDSConsistency(op, y, num_cg=0)(x0, 1.0), x0)
    op.adjoint_calls = 0
    dds = DDSConsistency(op, y, num_cg=3)
    assert op.adjoint_calls == 1
    dds(x0, 1.0)
    dds(x0, 0.5)
    # Per call: the residual at the start and one normal-operator product per CG iteration.
    assert op.adjoint_calls == 1 + 2 * (1 + 3)


def test_dds_tv_on_two_slices_is_the_closed_form_tv_denoiser(gen):
    # A = I, two slices: argmin 1/2 |x - y|^2 + lam |x_1 - x_0| moves each value lam towards the
    # other if they are more than 2 lam apart, and to their mean otherwise.
    lam = 0.3
    y = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    x = DDSConsistency(IdentityOp(), y, num_cg=2, w_dz=lam, rho_admm=1.0, admm_iter=100)(y, 1.0)
    gap = y[1] - y[0]
    step = torch.clamp(gap.abs(), max=2 * lam) / 2 * torch.sign(gap)
    expected = torch.stack([y[0] + step, y[1] - step])
    assert (gap.abs() > 2 * lam).any() and (gap.abs() < 2 * lam).any()
    assert torch.allclose(x, expected, atol=1e-9)


def test_dds_tv_with_a_large_weight_flattens_along_the_slice_axis_only(gen):
    y = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    x = DDSConsistency(IdentityOp(), y, num_cg=5, w_dz=100.0, rho_admm=1.0, admm_iter=100)(y, 1.0)
    assert torch.allclose(x, y.mean(dim=0, keepdim=True).expand_as(y), atol=1e-9)


class ScaledOp:
    """c * I: the identity at another scale, so that ||A||^2 = c^2."""

    def __init__(self, c):
        self.c = c

    def A(self, x):
        return self.c * x

    A_adjoint = A


def test_relative_dds_tv_weights_make_the_result_independent_of_the_operator_scale(gen):
    # min 1/2 |c x - c y|^2 + lam c^2 |D_z x|_1 has the same minimiser for every c.
    y = torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    ref = DDSConsistency(IdentityOp(), y, num_cg=3, w_dz=0.2, admm_iter=50)(y, 1.0)
    scaled = DDSConsistency(ScaledOp(30.0), 30.0 * y, num_cg=3, w_dz=0.2, admm_iter=50)(y, 1.0)
    absolute = DDSConsistency(ScaledOp(30.0), 30.0 * y, num_cg=3, w_dz=0.2, admm_iter=50, relative=False)(y, 1.0)
    assert torch.allclose(scaled, ref, atol=1e-6)
    assert not torch.allclose(absolute, ref, atol=1e-3)


def test_ddnm_hands_its_iteration_count_to_an_iterative_pseudo_inverse(problem):
    op, y, x0 = problem
    seen = []

    class IterativeOp(MatrixOp):
        def A_dagger(self, y, n_iter=3):
            seen.append(n_iter)
            return super().A_dagger(y)

    iterative = IterativeOp(op.matrix, (4, 4))
    DDNMConsistency(iterative, y, n_iter=17)(x0, 1.0)
    DDNMConsistency(iterative, y)(x0, 1.0)
    DDNMConsistency(op, y, n_iter=17)(x0, 1.0)
    assert seen == [17, 3]


def test_get_sigmas_is_the_log_linear_schedule():
    sigmas = get_sigmas(30, 0.01, 378.0, eps=1e-5)
    assert sigmas.shape == (30,) and sigmas.dtype == torch.float64
    assert sigmas[0].item() == pytest.approx(378.0, rel=1e-12)
    assert sigmas[-1].item() == pytest.approx(0.01 * 37800.0**1e-5, rel=1e-12)
    ratios = sigmas[1:] / sigmas[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-10) and ratios[0] < 1
    assert get_sigmas(1, 0.01, 378.0).tolist() == [pytest.approx(378.0)]


def _posterior_problem(gen, num_slices=2000):
    """Every slice is an independent draw of the same 8-pixel posterior (3 measurements)."""
    matrix = torch.randn(3, 8, generator=gen)
    op = MatrixOp(matrix, (2, 4))
    mu = torch.randn(1, 1, 2, 4, generator=gen)
    x_true = mu + torch.randn(1, 1, 2, 4, generator=gen)
    y = op.A(x_true).expand(num_slices, 3)
    return op, y, mu


def method_step(method, op, y, num_cg=5):
    """The sampler step of DDS (CG data consistency) or DDNM (null-space projection)."""
    if method == "DDS":
        return ConsistencyStep(DDSConsistency(op, y, num_cg=num_cg))
    return ConsistencyStep(DDNMConsistency(op, y, n_iter=num_cg))


def _sample_posterior(gen, method, renoise, nfe):
    op, y, mu = _posterior_problem(gen)
    num_slices = y.shape[0]
    x = reconstruct(
        GaussianDenoiser(mu, 1.0),
        method_step(method, op, y, num_cg=3),
        (num_slices, 1, 2, 4),
        SamplerConfig(nfe=nfe, sigma_min=0.01, sigma_max=50.0, renoise=renoise, noise="iid"),
        generator=gen,
        disable=True,
    )
    return op, y, mu, x, x.reshape(num_slices, -1).double()


@pytest.mark.parametrize(
    "method, renoise",
    [("DDNM", "DDPM"), ("DDNM", "DDIM"), ("DDS", "DDS"), ("DDS", "DiffPIR")],
)
def test_sampler_lands_on_the_gaussian_posterior_mean(method, renoise, gen):
    op, y, mu, x, flat = _sample_posterior(gen, method, renoise, nfe=40)
    assert torch.allclose(op.A(x), y, atol=1e-4)
    # 2000 independent slices: the sample mean's standard error is about 0.02.
    mean = _projection(op.matrix, mu, y[:1]).reshape(-1)
    assert torch.allclose(flat.mean(dim=0), mean, atol=0.08)


def test_ancestral_sampler_with_many_levels_has_the_posterior_covariance(gen):
    # The x0 + noise presets shrink the variance (DDPM keeps about half of it here); the
    # ancestral DDIM step converges to the posterior s^2 (I - M^+ M) as the levels get denser.
    op, _, _, _, flat = _sample_posterior(gen, "DDNM", "DDIM", nfe=400)
    null_projector = torch.eye(8, dtype=torch.float64) - op.pinv.double() @ op.matrix.double()
    covariance = torch.cov(flat.T)
    assert torch.allclose(covariance, null_projector, atol=0.1)
    assert (covariance.trace() / null_projector.trace()).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("method", METHODS)
def test_identity_operator_with_tiny_noise_returns_the_data(method, gen):
    y = torch.rand(3, 1, 8, 8, generator=gen) + 1e-4 * torch.randn(3, 1, 8, 8, generator=gen)
    x = reconstruct(
        GaussianDenoiser(torch.full((1, 1, 8, 8), 0.5), 0.3),
        method_step(method, IdentityOp(), y, num_cg=1),
        y.shape,
        SamplerConfig(nfe=5, sigma_min=0.01, sigma_max=10.0),
        generator=gen,
        disable=True,
    )
    assert torch.allclose(x, y, atol=1e-6)


def _small_run(problem, method="DDS", seed=0, noise="iscs", shape=(5, 1, 4, 4), nfe=6, **options):
    """Reconstruct the 5-slice problem with a zero-mean Gaussian prior; returns (x, denoiser)."""
    op, y, _ = problem
    denoiser = GaussianDenoiser(torch.zeros(1, 1, 4, 4), 1.0)
    config = SamplerConfig(nfe=nfe, sigma_min=0.01, sigma_max=2.0, noise=noise, **options)
    generator = torch.Generator().manual_seed(seed)
    x = reconstruct(denoiser, method_step(method, op, y), shape, config, generator=generator, disable=True)
    return x, denoiser


def test_same_seed_same_reconstruction(problem):
    first, _ = _small_run(problem, seed=3, noise="iscs")
    again, _ = _small_run(problem, seed=3, noise="iscs")
    other, _ = _small_run(problem, seed=4, noise="iscs")
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_x_init_starts_from_the_noised_estimate(problem):
    op, y, _ = problem
    x_init = torch.full((5, 1, 4, 4), 0.25)
    denoiser = GaussianDenoiser(torch.zeros(1, 1, 4, 4), 1.0)
    config = SamplerConfig(nfe=6, sigma_min=0.01, sigma_max=2.0, noise="ar1")
    generator = torch.Generator().manual_seed(9)
    step = method_step("DDNM", op, y)
    reconstruct(denoiser, step, x_init.shape, config, generator=generator, x_init=x_init, disable=True)
    start_noise = make_noise("ar1")((5, 1, 4, 4), torch.Generator().manual_seed(9))
    assert torch.allclose(denoiser.inputs[0], x_init + 2.0 * start_noise, atol=1e-6)


def test_callback_sees_every_level_and_the_chain_of_states(problem):
    op, y, x0 = problem
    denoiser = GaussianDenoiser(torch.zeros(1, 1, 4, 4), 1.0)
    sigmas = get_sigmas(4, 0.01, 5.0)
    seen = []
    x = sample(
        denoiser,
        5.0 * x0,
        sigmas,
        ConsistencyStep(DDSConsistency(op, y, num_cg=2)),
        make_renoise("DDS"),
        IidNoise(),
        torch.Generator().manual_seed(0),
        callback=seen.append,
        disable=True,
    )
    assert [d["i"] for d in seen] == [0, 1, 2, 3]
    assert [d["sigma"] for d in seen] == pytest.approx(sigmas.tolist())
    assert all(torch.equal(d["x_next"], nxt) for d, nxt in zip(seen[:-1], denoiser.inputs[1:], strict=True))
    assert seen[-1]["x_next"] is None and torch.equal(seen[-1]["x0_dc"], x)
    assert torch.equal(denoiser.inputs[0], 5.0 * x0)


def test_bad_choices_are_clear_errors(problem):
    op, y, _ = problem
    with pytest.raises(ValueError, match=r"unknown renoise preset 'ddpm'.*DDPM, DDS, DiffPIR, DDIM"):
        _small_run(problem, renoise="ddpm")
    with pytest.raises(ValueError, match=r"unknown noise source 'slerp'.*iid, iscs, shared, ar1"):
        _small_run(problem, noise="slerp")
    config = SamplerConfig(nfe=2, sigma_min=0.01, sigma_max=2.0)
    with pytest.raises(ValueError, match=r"x_init must be shaped like \(5, 1, 4, 4\), got \(4, 1, 4, 4\)"):
        reconstruct(
            None, None, (5, 1, 4, 4), config, generator=torch.Generator(), x_init=torch.zeros(4, 1, 4, 4)
        )
    with pytest.raises(ValueError, match="shape must be a slice stack"):
        _small_run(problem, shape=(5, 4, 4))
    with pytest.raises(ValueError, match="nfe must be an integer >= 1"):
        _small_run(problem, nfe=0)
    with pytest.raises(ValueError, match="num_cg must be an integer >= 0"):
        DDSConsistency(op, y, num_cg=-1)
    with pytest.raises(ValueError, match="sigmas must be positive and strictly decreasing"):
        sample(None, y, [1.0, 2.0], None, make_renoise("DDPM"), IidNoise(), torch.Generator(), disable=True)
    on_meta = torch.empty(5, 1, 4, 4, device="meta")
    with pytest.raises(ValueError, match="x is on meta but the generator is on cpu"):
        sample(None, on_meta, [1.0], None, make_renoise("DDPM"), IidNoise(), torch.Generator(), disable=True)


def test_sampler_keeps_its_input_and_needs_no_consistency(gen):
    denoiser = GaussianDenoiser(torch.zeros(1, 1, 4, 4), 1.0)
    x_start = 3.0 * torch.randn(2, 1, 4, 4, generator=gen)
    kept = x_start.clone()
    out = sample(
        denoiser, x_start, get_sigmas(3, 0.01, 3.0), None, make_renoise("DDIM"), IidNoise(), gen, disable=True
    )
    assert torch.equal(x_start, kept) and out.shape == x_start.shape and math.isfinite(out.abs().max().item())
