"""Classical iterative baselines on any linear operator with ``A`` and ``A_adjoint``."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from algorithms.cg import conjugate_gradient


def _check_iterations(n_iter: int) -> None:
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")


def cgls(
    op, y: torch.Tensor, n_iter: int, x0: Optional[torch.Tensor] = None, callback: Optional[Callable] = None
) -> torch.Tensor:
    """Least squares ``min_x ||A x - y||^2`` by conjugate gradients on ``A^T A x = A^T y``.

    Args:
        op: operator with ``A`` and ``A_adjoint``.
        y: measurement.
        n_iter: CG iterations (each costs one ``A`` and one ``A_adjoint``).
        x0: starting point in the operator's domain (zeros when None).
        callback: ``callback(k, x, r)`` after iteration k, r the normal-equation residual.

    Returns:
        The iterate, shaped like ``op.A_adjoint(y)``.
    """
    _check_iterations(n_iter)
    return conjugate_gradient(
        lambda v: op.A_adjoint(op.A(v)), op.A_adjoint(y), x0=x0, n_iter=n_iter, callback=callback
    )


def _safe_reciprocal(t: torch.Tensor) -> torch.Tensor:
    # Rays that miss the volume and voxels no ray sees get weight 0 instead of 1/0.
    return torch.where(t > 0, 1.0 / torch.where(t > 0, t, torch.ones_like(t)), torch.zeros_like(t))


def sirt(
    op,
    y: torch.Tensor,
    n_iter: int,
    x0: Optional[torch.Tensor] = None,
    *,
    nonneg: bool = True,
    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """SIRT: ``x <- x + C A^T R (y - A x)`` with R, C the inverse row and column sums of A.

    Args:
        op: operator with ``A`` and ``A_adjoint`` whose matrix has non-negative entries.
        y: measurement.
        n_iter: iterations.
        x0: starting point (zeros when None).
        nonneg: clip the iterate at 0 after each update (attenuation is non-negative).
        callback: ``callback(k, x)`` after iteration k.
    """
    _check_iterations(n_iter)
    back = op.A_adjoint(y)
    x = torch.zeros_like(back) if x0 is None else x0.clone()
    inv_row = _safe_reciprocal(op.A(torch.ones_like(back)))
    inv_col = _safe_reciprocal(op.A_adjoint(torch.ones_like(y)))
    for k in range(n_iter):
        x = x + inv_col * op.A_adjoint(inv_row * (y - op.A(x)))
        if nonneg:
            x = x.clamp_min(0)
        if callback is not None:
            callback(k, x)
    return x
