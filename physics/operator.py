"""The contract every measurement operator of ``physics`` keeps, and its shape checks."""

from __future__ import annotations

from typing import Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch


@runtime_checkable
class LinearOperator(Protocol):
    """A linear measurement operator ``A``: what the samplers, solvers and adapters rely on.

    Shapes are explicit: ``A`` accepts exactly ``input_shape`` and returns ``measurement_shape``;
    ``A_adjoint`` and ``A_dagger`` take ``measurement_shape`` and return ``input_shape``, so
    ``A_adjoint(A(x)).shape == x.shape`` for every accepted ``x``. An operator that acts along one
    axis of any tensor (``ZAxisSuperResolution`` without ``shape``) reports None for both shapes
    and keeps that identity for every shape it accepts.

    Attributes:
        input_shape: the shape ``A`` accepts, or None for a shape-generic operator.
        measurement_shape: the shape ``A`` returns, or None for a shape-generic operator.
        dagger_is_exact: whether ``A_dagger`` is the exact Moore-Penrose pseudo-inverse (a closed
            form); False where it is an approximation (a few iterations of a least-squares solver).
    """

    dagger_is_exact: bool

    @property
    def input_shape(self) -> Optional[Tuple[int, ...]]: ...

    @property
    def measurement_shape(self) -> Optional[Tuple[int, ...]]: ...

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """The forward operator: ``input_shape`` -> ``measurement_shape``."""

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The exact adjoint (transpose) of ``A``: passes the dot-product test."""

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """A pseudo-inverse of ``A`` (exact when ``dagger_is_exact``)."""


def check_shape(t: torch.Tensor, expected: Sequence[int], what: str, hint: str = "") -> None:
    """Raise a one-line ValueError unless ``t`` is a tensor of shape ``expected``.

    Args:
        t: the tensor given.
        expected: the accepted shape.
        what: what ``t`` is, as the message names it (e.g. "ConeBeamCT(layout='stack').A input").
        hint: appended after a semicolon, e.g. how to accept another shape.
    """
    if isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(expected):
        return
    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
    raise ValueError(f"{what}: got shape {got}; accepted: {list(expected)}" + (f"; {hint}" if hint else ""))


class CountingOperator:
    """An operator whose ``A`` and ``A_adjoint`` calls (projector calls) are counted in ``calls``.

    Everything else is the wrapped operator's. For cost reports and tests: build the solver or
    pseudo-inverse on the wrapper, reset ``calls``, run, read ``calls``.
    """

    def __init__(self, op) -> None:
        self.op = op
        self.calls = 0

    def __getattr__(self, name):
        # Reached only for names the wrapper lacks; a missing "op" (a copy being built) must not recurse.
        if name == "op":
            raise AttributeError(name)
        return getattr(self.op, name)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.op.A(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.op.A_adjoint(y)
