"""A ``physics`` operator seen as a ``deepinv.physics.LinearPhysics`` (deepinv is optional).

deepinv's layout is a batch: volumes ``[B, 1, *v]`` and measurements ``[B, 1, *m]``, where ``v`` and
``m`` are the operator's ``input_shape`` and ``measurement_shape`` with a slice stack's unit
channel axis dropped: a ``ConeBeamCT`` gives volumes ``[B, 1, D, H, W]`` (either layout) and
measurements ``[B, 1, V, det_rows, det_cols]``. The batch entries are applied one by one.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch


def _unstacked(shape: Sequence[int]) -> Tuple[int, ...]:
    """A slice-stack shape ``(N, 1, h, w)`` as the volume ``(N, h, w)``; any other shape as it is."""
    shape = tuple(shape)
    return shape[:1] + shape[2:] if len(shape) == 4 and shape[1] == 1 else shape


def _per_entry(fn, t: torch.Tensor, entry_in: Tuple[int, ...], entry_out: Tuple[int, ...], what: str):
    """``fn`` on each batch entry of ``t`` [B, 1, *shape] (reshaped to ``entry_in``) -> [B, 1, *out]."""
    expected = (1,) + _unstacked(entry_in)
    if not isinstance(t, torch.Tensor) or tuple(t.shape[1:]) != expected:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{what}: got shape {got}; accepted: [B, {', '.join(map(str, expected))}]")
    out = [fn(entry.reshape(entry_in)) for entry in t]
    return torch.stack(out).reshape((t.shape[0], 1) + _unstacked(entry_out))


def to_deepinv(op, **physics_options):
    """``deepinv.physics.LinearPhysics`` whose ``A`` and ``A_adjoint`` are ``op``'s on deepinv's batches.

    deepinv's own ``A_dagger`` (its least-squares solvers), ``adjointness_test``, ``compute_norm``
    and ``prox_l2`` then work on the operator; ``op.A_dagger`` is not used.

    Args:
        op: an operator with fixed shapes (``input_shape`` and ``measurement_shape`` not None).
        physics_options: keyword arguments of ``LinearPhysics`` (e.g. ``max_iter``, ``tol``,
            ``solver``).

    Raises:
        ImportError: deepinv is not installed.
        ValueError: (one line) the operator has no fixed shapes.
    """
    import deepinv

    in_shape, out_shape = getattr(op, "input_shape", None), getattr(op, "measurement_shape", None)
    if in_shape is None or out_shape is None:
        raise ValueError(
            f"to_deepinv needs an operator of fixed shapes, got {type(op).__name__} with input_shape="
            f"{in_shape}; accepted: e.g. ZAxisSuperResolution(..., shape=...) or a ConeBeamCT"
        )
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)

    def forward(x, **_):
        return _per_entry(op.A, x, in_shape, out_shape, "to_deepinv(op).A takes volumes")

    def adjoint(y, **_):
        return _per_entry(op.A_adjoint, y, out_shape, in_shape, "to_deepinv(op).A_adjoint takes measurements")

    return deepinv.physics.LinearPhysics(
        A=forward, A_adjoint=adjoint, img_size=(1,) + _unstacked(in_shape), **physics_options
    )
