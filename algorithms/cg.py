"""The one conjugate-gradient solver of the project.

Every least-squares solve (the CT pseudo-inverse, DDS data consistency, CGLS, the ADMM sub-problems)
goes through :func:`conjugate_gradient`, so that its stopping rule and numerics live in one place.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Accumulate in float64 so that inner products over 256^3 voxels keep their digits.
    return torch.sum(u.double() * v.double()) if u.dtype != torch.float64 else torch.sum(u * v)


def conjugate_gradient(
    apply_A: Operator,
    b: torch.Tensor,
    x0: Optional[torch.Tensor] = None,
    n_iter: int = 10,
    tol: float = 0.0,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Solve ``A x = b`` for a symmetric positive semi-definite ``A`` by conjugate gradients.

    Args:
        apply_A: the operator, a function of a tensor shaped like ``b``.
        b: right-hand side.
        x0: starting point (zeros if omitted); CG runs in the Krylov space around it.
        n_iter: number of iterations (each costs one ``apply_A``).
        tol: stop early once ``|r| <= tol * |b|``; 0 never checks, which keeps the loop free of
            host-device synchronisation on GPUs.
        callback: called as ``callback(k, x, r)`` after iteration ``k`` (0-based).

    Returns:
        The iterate after ``n_iter`` steps or at convergence. A zero search direction (an exact
        solution, or ``A p = 0``) stops the update without producing NaNs.
    """
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    if x0 is not None and x0.shape != b.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}; accepted: the shape of b, {tuple(b.shape)}")
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply_A(x) if x0 is not None else b.clone()
    p = r.clone()
    rs_old = _dot(r, r)
    # Below this residual the iterates only accumulate rounding error (and drift on rank-deficient
    # systems), so further updates are frozen without a host-device synchronisation.
    rs_floor = rs_old * (64 * torch.finfo(b.dtype).eps) ** 2
    b_norm = torch.sqrt(_dot(b, b)) if tol > 0 else None
    for k in range(n_iter):
        Ap = apply_A(p)
        pAp = _dot(p, Ap)
        # A vanishing curvature means p is (numerically) in the null space: take no step.
        active = (pAp > 0) & (rs_old > rs_floor)
        alpha = torch.where(active, rs_old / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        x = x + alpha.to(x.dtype) * p
        r = r - alpha.to(r.dtype) * Ap
        rs_new = _dot(r, r)
        if callback is not None:
            callback(k, x, r)
        if tol > 0 and float(torch.sqrt(rs_new)) <= tol * float(b_norm):
            break
        beta = torch.where(active, rs_new / torch.where(rs_old > 0, rs_old, torch.ones_like(rs_old)), torch.zeros_like(rs_old))
        p = r + beta.to(r.dtype) * p
        rs_old = torch.where(active, rs_new, rs_old)
    return x
