"""Finite differences, their exact adjoints, and the shrinkage operators of total variation.

Forward differences with a zero last entry (Neumann boundary): ``(D x)[i] = x[i+1] - x[i]`` for
``i < n-1`` and 0 at ``i = n-1``, so ``D`` maps a tensor to one of the same shape.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch


def _axis(x: torch.Tensor, axis: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(
            f"axis must be an integer in [{-x.dim()}, {x.dim()}) for shape {tuple(x.shape)}, got {axis!r}"
        )
    return axis % x.dim()


def diff(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Forward difference along ``axis`` (same shape as x, last entry 0)."""
    axis = _axis(x, axis)
    out = torch.zeros_like(x)
    n = x.shape[axis]
    out.narrow(axis, 0, n - 1).copy_(x.narrow(axis, 1, n - 1) - x.narrow(axis, 0, n - 1))
    return out


def diff_adjoint(g: torch.Tensor, axis: int) -> torch.Tensor:
    """Adjoint of :func:`diff`: ``(D^T g)[i] = g[i-1] - g[i]`` with ``g[-1] = 0`` and ``g[n-1]`` ignored."""
    axis = _axis(g, axis)
    n = g.shape[axis]
    out = torch.zeros_like(g)
    out.narrow(axis, 1, n - 1).add_(g.narrow(axis, 0, n - 1))
    out.narrow(axis, 0, n - 1).sub_(g.narrow(axis, 0, n - 1))
    return out


def default_axes(x: torch.Tensor) -> Tuple[int, ...]:
    """All axes longer than 1: the spatial axes of a slice stack [N, 1, h, w] are (0, 2, 3)."""
    return tuple(i for i, n in enumerate(x.shape) if n > 1)


def gradient(x: torch.Tensor, axes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Forward differences along ``axes`` (default :func:`default_axes`), stacked: [len(axes), *x.shape]."""
    axes = default_axes(x) if axes is None else tuple(axes)
    return torch.stack([diff(x, a) for a in axes])


def gradient_adjoint(g: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """Adjoint of :func:`gradient` for the same ``axes``: [len(axes), *shape] -> shape."""
    if g.shape[0] != len(axes):
        raise ValueError(f"g has {g.shape[0]} components but {len(axes)} axes were given: {tuple(axes)}")
    return sum(diff_adjoint(g[i], a) for i, a in enumerate(axes))


def soft_threshold(v: torch.Tensor, t: float) -> torch.Tensor:
    """Entrywise shrinkage ``sign(v) max(|v| - t, 0)``: prox of ``t |.|_1`` (anisotropic TV)."""
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0)


def shrink_isotropic(v: torch.Tensor, t: float) -> torch.Tensor:
    """Group shrinkage over dim 0 (the gradient components): prox of ``t sum |v_voxel|_2`` (isotropic TV)."""
    norm = torch.sqrt(torch.sum(v * v, dim=0, keepdim=True))
    scale = torch.clamp(norm - t, min=0) / torch.where(norm > 0, norm, torch.ones_like(norm))
    return v * scale


def _anisotropic_norm(g: torch.Tensor) -> torch.Tensor:
    return g.abs().sum()


def _isotropic_norm(g: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.sum(g * g, dim=0)).sum()


# TV flavour -> (shrinkage applied to the stacked gradient, norm of the stacked gradient).
TV_KINDS: Dict[
    str, Tuple[Callable[[torch.Tensor, float], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
] = {
    "anisotropic": (soft_threshold, _anisotropic_norm),
    "isotropic": (shrink_isotropic, _isotropic_norm),
}


def tv_norm(x: torch.Tensor, axes: Optional[Sequence[int]] = None, kind: str = "isotropic") -> torch.Tensor:
    """Total variation of x along ``axes``.

    ``kind`` "anisotropic": sum of all |D_a x|; "isotropic": sum over voxels of the gradient's 2-norm.
    """
    if kind not in TV_KINDS:
        raise ValueError(f"kind must be one of {sorted(TV_KINDS)}, got {kind!r}")
    return TV_KINDS[kind][1](gradient(x, axes))
