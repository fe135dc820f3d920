"""ADMM for total-variation regularised least squares, the classical baseline of the demos."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from algorithms.cg import conjugate_gradient
from algorithms.tv import TV_KINDS, default_axes, gradient, gradient_adjoint


def operator_norm_sq(
    op, like: torch.Tensor, generator: Optional[torch.Generator] = None, n_iter: int = 10
) -> float:
    """Estimate ``||A||^2`` (largest eigenvalue of ``A^T A``) by power iteration.

    Args:
        op: operator with ``A`` and ``A_adjoint``.
        like: a tensor of the operator's domain shape, dtype and device.
        generator: randomness of the start vector (a fixed seed when None, for reproducibility).
        n_iter: power iterations.
    """
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    v = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(
        like.device
    )
    value = 0.0
    for _ in range(n_iter):
        v = v / v.norm()
        w = op.A_adjoint(op.A(v))
        value = float(torch.sum(v * w))
        v = w
    return value


def admm_tv(
    op,
    y: torch.Tensor,
    *,
    lam: float = 1e-3,
    rho: float = 1e-2,
    n_iter: int = 30,
    n_cg: int = 5,
    kind: str = "isotropic",
    axes: Optional[Sequence[int]] = None,
    x0: Optional[torch.Tensor] = None,
    relative: bool = True,
    nonneg: bool = True,
    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """``min_x 0.5 ||A x - y||^2 + lam * TV(x)`` by ADMM with the split ``z = D x``.

    Each iteration: x-update by ``n_cg`` warm-started CG steps on
    ``(A^T A + rho D^T D) x = A^T y + rho D^T (z - u)``; z-update by shrinkage of ``D x + u`` with
    threshold ``lam / rho``; dual update ``u += D x - z``.

    Args:
        op: operator with ``A`` and ``A_adjoint`` (e.g. physics.ConeBeamCT, physics.ZAxisSuperResolution).
        y: measurement.
        lam: TV weight. With ``relative`` (default) it is multiplied by ``||A||^2`` (power iteration),
            so the defaults carry over between geometries and view counts; 1e-3 suits the CT demo.
        rho: ADMM penalty, scaled like ``lam``; 1e-2 suits the CT demo.
        n_iter: ADMM iterations.
        n_cg: CG iterations per x-update.
        kind: "isotropic" or "anisotropic" TV.
        axes: axes of the differences (default: every axis longer than 1, i.e. 3D TV on a slice stack).
        x0: starting point (default: ``n_cg`` least-squares CG steps from zero).
        relative: scale ``lam`` and ``rho`` by ``||A||^2``.
        nonneg: clip the x iterate at 0 after each x-update.
        callback: ``callback(k, x)`` after iteration k.

    Returns:
        The reconstruction, shaped like ``op.A_adjoint(y)``.
    """
    if kind not in TV_KINDS:
        raise ValueError(f"kind must be one of {sorted(TV_KINDS)}, got {kind!r}")
    for name, value in (("lam", lam), ("rho", rho)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    for name, value in (("n_iter", n_iter), ("n_cg", n_cg)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    shrink = TV_KINDS[kind][0]
    rhs_data = op.A_adjoint(y)
    axes = default_axes(rhs_data) if axes is None else tuple(axes)
    scale = operator_norm_sq(op, rhs_data) if relative else 1.0
    lam, rho = lam * scale, rho * scale
    x = (
        conjugate_gradient(lambda v: op.A_adjoint(op.A(v)), rhs_data, n_iter=n_cg)
        if x0 is None
        else x0.clone()
    )
    z = gradient(x, axes)
    u = torch.zeros_like(z)

    def normal(v: torch.Tensor) -> torch.Tensor:
        return op.A_adjoint(op.A(v)) + rho * gradient_adjoint(gradient(v, axes), axes)

    for k in range(n_iter):
        x = conjugate_gradient(normal, rhs_data + rho * gradient_adjoint(z - u, axes), x0=x, n_iter=n_cg)
        if nonneg:
            x = x.clamp_min(0)
        dx = gradient(x, axes)
        z = shrink(dx + u, lam / rho)
        u = u + dx - z
        if callback is not None:
            callback(k, x)
    return x
