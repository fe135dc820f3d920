"""Classical iterative baselines on any linear operator with ``A`` and ``A_adjoint``."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch

from algorithms.cg import conjugate_gradient


def check_iterations(n_iter, minimum: int = 0) -> int:
    """``n_iter``, validated as an integer >= ``minimum`` (one-line ValueError otherwise)."""
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < minimum:
        raise ValueError(f"n_iter must be an integer >= {minimum}, got {n_iter!r}")
    return n_iter


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
    check_iterations(n_iter)
    return conjugate_gradient(
        lambda v: op.A_adjoint(op.A(v)), op.A_adjoint(y), x0=x0, n_iter=n_iter, callback=callback
    )


def check_min_value(min_value) -> Optional[float]:
    """A SIRT lower bound, validated: None (no bound) or a finite number, as a float."""
    if min_value is None:
        return None
    if isinstance(min_value, bool) or not isinstance(min_value, (int, float)) or not math.isfinite(min_value):
        raise ValueError(f"min_value must be None or a finite number, got {min_value!r}")
    return float(min_value)


def _safe_reciprocal(t: torch.Tensor) -> torch.Tensor:
    # Rays that miss the volume and voxels no ray sees get weight 0 instead of 1/0.
    return torch.where(t > 0, 1.0 / torch.where(t > 0, t, torch.ones_like(t)), torch.zeros_like(t))


class SIRTWeights(NamedTuple):
    """SIRT's normalisations: the inverse row sums (shaped like y) and column sums (like x) of A."""

    inv_row: torch.Tensor
    inv_col: torch.Tensor


def sirt_weights(op, y: torch.Tensor) -> SIRTWeights:
    """:class:`SIRTWeights` of ``op`` in the dtype and on the device of ``y`` (2 projector calls)."""
    col = op.A_adjoint(torch.ones_like(y))
    row = op.A(torch.ones_like(col))
    return SIRTWeights(_safe_reciprocal(row), _safe_reciprocal(col))


def sirt(
    op,
    y: torch.Tensor,
    n_iter: int,
    x0: Optional[torch.Tensor] = None,
    *,
    min_value: Optional[float] = 0.0,
    weights: Optional[SIRTWeights] = None,
    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """SIRT: ``x <- max(x + C A^T R (y - A x), min_value)``, R and C the inverse row and column sums of A.

    astra's SIRT3D_CUDA with ``MinConstraint`` = ``min_value`` (relaxation 1). Each iteration costs
    one ``A`` and one ``A_adjoint``, except the first from zeros, whose ``A x`` is known to be 0:
    ``2 n_iter - 1`` projector calls from zeros, plus 2 for the weights unless they are given.

    Args:
        op: operator with ``A`` and ``A_adjoint`` whose matrix has non-negative entries.
        y: measurement.
        n_iter: iterations (>= 0).
        x0: starting point, shaped like ``op.A_adjoint(y)`` (zeros when None).
        min_value: lower bound the iterate is clipped to after each update (0: attenuation is
            non-negative), or None for the unconstrained (linear in ``y`` from zeros) iteration.
        weights: ``sirt_weights(op, y)``, computed here when None; pass them to reuse them.
        callback: ``callback(k, x)`` after iteration k; ``x`` is updated in place afterwards.
    """
    check_iterations(n_iter)
    min_value = check_min_value(min_value)
    inv_row, inv_col = sirt_weights(op, y) if weights is None else weights
    if x0 is None:
        x = torch.zeros_like(inv_col)
    else:
        if x0.shape != inv_col.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}; accepted: {list(inv_col.shape)}")
        x = x0.clone()
    for k in range(n_iter):
        residual = y * inv_row if k == 0 and x0 is None else torch.sub(y, op.A(x)).mul_(inv_row)
        x.addcmul_(inv_col, op.A_adjoint(residual))
        if min_value is not None:
            x.clamp_min_(min_value)
        if callback is not None:
            callback(k, x)
    return x
