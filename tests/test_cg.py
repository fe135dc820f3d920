"""The one conjugate-gradient solver: exactness, monotone error, and stability past convergence."""

import pytest
import torch

from algorithms.cg import conjugate_gradient


def _spd(n, gen, dtype=torch.float64):
    m = torch.randn(n, n, generator=gen, dtype=dtype)
    return m @ m.T + n * torch.eye(n, dtype=dtype)


def test_solves_spd_system_in_n_steps(gen):
    A = _spd(12, gen)
    b = torch.randn(12, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, n_iter=12)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-9)


def test_energy_norm_error_decreases_monotonically(gen):
    A = _spd(40, gen)
    b = torch.randn(40, generator=gen, dtype=torch.float64)
    x_star = torch.linalg.solve(A, b)
    errors = []

    def record(k, x, r):
        e = x - x_star
        errors.append(float(e @ (A @ e)))

    conjugate_gradient(lambda v: A @ v, b, n_iter=25, callback=record)
    assert all(b2 <= b1 * (1 + 1e-12) for b1, b2 in zip(errors, errors[1:]))
    assert errors[-1] < 1e-3 * errors[0]


def test_starts_from_x0_and_zero_iterations_return_it(gen):
    A = _spd(5, gen)
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    x0 = torch.randn(5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: A @ v, b, x0=x0, n_iter=0), x0)


def test_rank_deficient_normal_equations_do_not_drift_in_float32(gen):
    # More iterations than the rank of A^T A must keep the converged least-squares solution.
    A = torch.randn(6, 16, generator=gen)
    y = A @ torch.randn(16, generator=gen)
    fits = []
    for n_iter in (6, 12, 40):
        x = conjugate_gradient(lambda v: A.T @ (A @ v), A.T @ y, x0=torch.zeros(16), n_iter=n_iter)
        fits.append(float((A @ x - y).norm() / y.norm()))
    assert max(fits) < 1e-5


def test_tolerance_stops_early(gen):
    A = _spd(30, gen)
    b = torch.randn(30, generator=gen, dtype=torch.float64)
    calls = []
    conjugate_gradient(lambda v: A @ v, b, n_iter=100, tol=1e-6, callback=lambda k, x, r: calls.append(k))
    assert len(calls) < 100


def test_a_starting_point_of_another_shape_is_rejected(gen):
    b = torch.randn(2, 1, 3, 3, generator=gen)
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 3, 3\)"):
        conjugate_gradient(lambda v: v, b, x0=torch.zeros(2, 3, 3), n_iter=1)
