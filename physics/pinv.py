"""Named pseudo-inverses of an operator: the exact one, CG least squares, and SIRT.

A pseudo-inverse object is bound to one operator and maps a measurement to a volume in the
operator's layout: ``pinv(y)``. It says whether it is linear in ``y`` (``linear``), which decides
the form of DDNM's data-consistency step (``algorithms.DDNMConsistency``), and describes itself
for the run's records (``describe()``). ``PSEUDO_INVERSES`` names them; :func:`make_pseudo_inverse`
builds one by name.

Projector calls per ``pinv(y)`` (one call = one ``A`` or one ``A_adjoint``): ``cg``: ``2 n_iter + 1``;
``sirt``: ``2 n_iter - 1`` (its first iteration starts from zeros, whose projection is known),
plus 2 once per dtype and device for its normalisations; ``exact``: none (closed form).
"""

from __future__ import annotations

import inspect
from typing import Dict, Optional, Protocol, Tuple

import torch

from physics.iterative import SIRTWeights, cgls, check_iterations, check_min_value, sirt, sirt_weights


class PseudoInverse(Protocol):
    """What DDNM and the run's records use of a pseudo-inverse."""

    op: object
    name: str
    linear: bool

    def __call__(self, y: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict: ...


class ExactPseudoInverse:
    """The operator's own closed-form ``A_dagger`` (e.g. replication for ZSR); linear.

    Args:
        op: an operator whose ``dagger_is_exact`` is True.
    """

    name = "exact"
    linear = True

    def __init__(self, op) -> None:
        if not getattr(op, "dagger_is_exact", False):
            raise ValueError(
                f"the exact pseudo-inverse needs an operator with a closed-form A_dagger "
                f"(dagger_is_exact), not {type(op).__name__}; accepted for it: 'cg', 'sirt'"
            )
        self.op = op

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.A_dagger(y)

    def describe(self) -> dict:
        return {"pseudo_inverse": self.name, "linear": self.linear}


class CGPseudoInverse:
    """Least squares ``min_x |A x - y|`` by ``n_iter`` CG iterations on the normal equations, from zeros.

    Not linear in ``y``: the Krylov polynomial CG builds depends on ``y`` (it is only homogeneous).
    See :func:`physics.cgls`.

    Args:
        op: any operator with ``A`` and ``A_adjoint``.
        n_iter: CG iterations (>= 1), 2 projector calls each.
    """

    name = "cg"
    linear = False

    def __init__(self, op, n_iter: int = 10) -> None:
        self.op = op
        self.n_iter = check_iterations(n_iter, minimum=1)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return cgls(self.op, y, self.n_iter)

    def describe(self) -> dict:
        return {"pseudo_inverse": self.name, "n_iter": self.n_iter, "linear": self.linear}


class SIRTPseudoInverse:
    """``n_iter`` SIRT iterations from zeros, clipped below at ``min_value`` (astra's SIRT3D_CUDA).

    The reference code's CBCT DDNM uses it with 100 iterations and ``MinConstraint`` 0. The clip
    makes it non-linear; without it (``min_value=None``) it is a fixed linear map of ``y``. The
    normalisations (row and column sums of A) are computed once per dtype and device and kept.

    Args:
        op: an operator with ``A`` and ``A_adjoint`` whose matrix has non-negative entries; for
            ``backend="astra"`` a whole :class:`physics.ConeBeamCT` (not a view block).
        n_iter: iterations (>= 1).
        min_value: the lower bound, or None for none.
        backend: ``"torch"`` (:func:`physics.sirt` with ``op``, any device) or ``"astra"``
            (:func:`physics.astra_baselines.sirt_astra` on ``op``'s geometry and views; CUDA
            tensors and astra's CUDA build only).
    """

    name = "sirt"
    BACKENDS = ("torch", "astra")

    def __init__(
        self, op, n_iter: int = 100, min_value: Optional[float] = 0.0, backend: str = "torch"
    ) -> None:
        min_value = check_min_value(min_value)
        if backend not in self.BACKENDS:
            raise ValueError(f"backend must be one of {list(self.BACKENDS)}, got {backend!r}")
        if backend == "astra" and (not hasattr(op, "geometry") or getattr(op, "is_view_block", True)):
            raise ValueError(
                f"SIRT backend 'astra' needs a whole ConeBeamCT (not a view block), got {type(op).__name__}; "
                "accepted for it: backend='torch'"
            )
        self.op = op
        self.n_iter = check_iterations(n_iter, minimum=1)
        self.min_value = min_value
        self.backend = backend
        self.linear = min_value is None
        self._weights: Dict[Tuple[torch.dtype, torch.device], SIRTWeights] = {}

    def weights(self, y: torch.Tensor) -> SIRTWeights:
        """The operator's SIRT normalisations in ``y``'s dtype and device (computed on first use)."""
        key = (y.dtype, y.device)
        if key not in self._weights:
            self._weights[key] = sirt_weights(self.op, y)
        return self._weights[key]

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.backend == "astra":
            return self._astra(y)
        return sirt(self.op, y, self.n_iter, min_value=self.min_value, weights=self.weights(y))

    def _astra(self, y: torch.Tensor) -> torch.Tensor:
        from physics.astra_baselines import astra_cuda_available, sirt_astra

        if y.device.type != "cuda" or not astra_cuda_available():
            raise RuntimeError(
                f"SIRT backend 'astra' runs on CUDA tensors with astra's CUDA build; got a {y.device.type} "
                "tensor or no astra CUDA; accepted: backend='torch'"
            )
        volume = sirt_astra(self.op.geometry, y, self.n_iter, views=self.op.views, min_value=self.min_value)
        return volume.reshape(self.op.input_shape)

    def describe(self) -> dict:
        return {
            "pseudo_inverse": self.name,
            "n_iter": self.n_iter,
            "min_value": self.min_value,
            "backend": self.backend,
            "linear": self.linear,
        }


class OperatorPseudoInverse:
    """The operator's own ``A_dagger`` as it comes, handed ``n_iter`` when it takes that keyword.

    For operators outside ``physics`` (anything with an ``A_dagger``). Taken as linear: DDNM
    applies it to the residual ``y - A x0``, as the DDNM paper writes the step.

    Args:
        op: an operator with ``A_dagger``.
        n_iter: passed as ``A_dagger(y, n_iter=n_iter)`` to an ``A_dagger`` that takes it; None
            (or an ``A_dagger`` without the keyword) calls ``A_dagger(y)``.
    """

    name = "A_dagger"
    linear = True

    def __init__(self, op, n_iter: Optional[int] = None) -> None:
        self.op = op
        # The operator's A_dagger validates the count itself (a CT A_dagger accepts 0: no step).
        self.n_iter = n_iter if n_iter is not None and _takes_keyword(op.A_dagger, "n_iter") else None

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.A_dagger(y) if self.n_iter is None else self.op.A_dagger(y, n_iter=self.n_iter)

    def describe(self) -> dict:
        return {"pseudo_inverse": self.name, "n_iter": self.n_iter, "linear": self.linear}


def _takes_keyword(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


PSEUDO_INVERSES = {
    "exact": ExactPseudoInverse,
    "cg": CGPseudoInverse,
    "sirt": SIRTPseudoInverse,
}
"""name -> pseudo-inverse class, built as ``cls(op, **options)``."""


def make_pseudo_inverse(name: str, op, **options) -> PseudoInverse:
    """The pseudo-inverse ``name`` of ``PSEUDO_INVERSES`` for ``op``.

    Args:
        name: "exact", "cg" or "sirt".
        op: the operator it inverts.
        options: the class's keyword arguments (``n_iter``; for "sirt" also ``min_value``, ``backend``).

    Raises:
        ValueError: (one line) an unknown name or option, or a bad value.
    """
    if name not in PSEUDO_INVERSES:
        raise ValueError(f"unknown pseudo-inverse {name!r}; accepted: {', '.join(PSEUDO_INVERSES)}")
    cls = PSEUDO_INVERSES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "op")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"pseudo-inverse {name!r} has no option {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(op, **options)
