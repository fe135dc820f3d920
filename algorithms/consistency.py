"""Data-consistency steps of the sampler: callables ``consistency(x0, sigma) -> x``.

``x0`` is the denoised slice stack at noise level ``sigma`` (a python float or 0-d tensor); the
result agrees (better) with the measurement ``y = A x``. Operators follow the physics interface:
``A``, ``A_adjoint`` (the true adjoint) and ``A_dagger`` (pseudo-inverse).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .admm_tv import operator_norm_sq
from .cg import conjugate_gradient
from .tv import diff, diff_adjoint, soft_threshold

Sigma = Union[float, torch.Tensor]


class DDSConsistency:
    """DDS data consistency (Chung et al., ICLR 2024): a few CG steps from the denoised estimate.

    Solves ``(A^T A + rho I) x = A^T y + rho x0`` with ``rho = w_tik / sigma^2`` by ``num_cg``
    iterations of conjugate gradients started at ``x0``; with ``w_tik = 0`` this is CG on the
    normal equations, whose few iterations from ``x0`` keep ``x`` close to the prior's estimate.

    With ``w_dz > 0`` it is the DDS+TV variant (as in DiffusionMBIR and DDS), which adds a TV
    penalty along the slice axis:
    ``min_x 1/2 |A x - y|^2 + rho/2 |x - x0|^2 + w_dz |D_z x|_1``, solved by ``admm_iter``
    iterations of ADMM on the split ``v = D_z x`` with penalty ``rho_admm``: the x-update is
    ``num_cg`` CG iterations on ``(A^T A + rho I + rho_admm D_z^T D_z) x = A^T y + rho x0 +
    rho_admm D_z^T (v - u)``, then ``v = shrink(D_z x + u, w_dz / rho_admm)`` and
    ``u += D_z x - v``. ADMM starts from ``x = x0``, ``v = D_z x0``, ``u = 0`` at every call.
    With ``relative`` (the default) ``w_dz`` and ``rho_admm`` are multiples of ``||A||^2`` (estimated
    once here by power iteration), so one setting behaves alike for any geometry or view count.

    Args:
        op: the forward operator (``A``, ``A_adjoint``).
        y: the measurement; ``A^T y`` is computed once here.
        num_cg: CG iterations per solve (>= 0).
        w_tik: proximal weight (>= 0); ``rho = w_tik / sigma^2``.
        w_dz: TV weight lambda along the slice axis (>= 0; 0 turns TV off).
        rho_admm: ADMM penalty (> 0); the soft threshold is ``w_dz / rho_admm``.
        relative: whether ``w_dz`` and ``rho_admm`` are in units of ``||A||^2`` (True) or of
            ``A^T A`` itself (False, as in DiffusionMBIR, whose rho is 10 for its operator).
        admm_iter: ADMM iterations per call (>= 1), each costing ``num_cg`` CG iterations.
        tv_dim: the slice axis of the stack (0: the axial slices of a CBCT stack [D, 1, H, W]).
    """

    def __init__(
        self,
        op,
        y: torch.Tensor,
        num_cg: int,
        w_tik: float = 0.0,
        w_dz: float = 0.0,
        rho_admm: float = 0.1,
        admm_iter: int = 2,
        tv_dim: int = 0,
        relative: bool = True,
    ):
        if isinstance(num_cg, bool) or not isinstance(num_cg, int) or num_cg < 0:
            raise ValueError(f"num_cg must be an integer >= 0, got {num_cg!r}")
        if not w_tik >= 0 or not w_dz >= 0:
            raise ValueError(f"w_tik and w_dz must be >= 0, got w_tik={w_tik}, w_dz={w_dz}")
        if not rho_admm > 0:
            raise ValueError(f"rho_admm must be > 0, got {rho_admm}")
        if isinstance(admm_iter, bool) or not isinstance(admm_iter, int) or admm_iter < 1:
            raise ValueError(f"admm_iter must be an integer >= 1, got {admm_iter!r}")
        self.op = op
        self.num_cg = num_cg
        self.w_tik = float(w_tik)
        self.admm_iter = admm_iter
        self.tv_dim = tv_dim
        self.aty = op.A_adjoint(y)
        scale = operator_norm_sq(op, self.aty) if relative and w_dz > 0 else 1.0
        self.w_dz = float(w_dz) * scale
        self.rho_admm = float(rho_admm) * scale

    def _normal(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.A_adjoint(self.op.A(v))

    def __call__(self, x0: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        """Pull the denoised stack ``x0`` [N, 1, h, w] at level ``sigma`` towards the data."""
        if self.w_tik > 0:
            rho = self.w_tik / sigma**2

            def apply(v):
                return self._normal(v) + rho * v

            rhs = self.aty + rho * x0
        else:
            apply, rhs = self._normal, self.aty
        if self.w_dz == 0.0:
            return conjugate_gradient(apply, rhs, x0=x0, n_iter=self.num_cg)
        return self._admm_tv(apply, rhs, x0)

    def _admm_tv(self, apply, rhs: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        dim, rho_admm = self.tv_dim, self.rho_admm

        def apply_split(v):
            return apply(v) + rho_admm * diff_adjoint(diff(v, dim), dim)

        x = x0
        split = diff(x0, dim)
        dual = torch.zeros_like(split)
        for _ in range(self.admm_iter):
            b = rhs + rho_admm * diff_adjoint(split - dual, dim)
            x = conjugate_gradient(apply_split, b, x0=x, n_iter=self.num_cg)
            dx = diff(x, dim)
            split = soft_threshold(dx + dual, self.w_dz / rho_admm)
            dual = dual + dx - split
        return x


class DDNMConsistency:
    """DDNM data consistency (Wang et al., ICLR 2023): ``A^+ y + (I - A^+ A) x0`` with a pseudo-inverse.

    The range-space part of ``x0`` is replaced by the one the data fix, its null-space part is
    kept. ``pinv`` (a ``physics.PSEUDO_INVERSES`` object) stands for ``A^+``, in one of two forms:

    - linear ``pinv`` (``pinv.linear``): the residual form ``x0 + pinv(y - A x0)``, equal to the
      above; for an exact pseudo-inverse the result satisfies ``A x = y`` (for consistent ``y``).
    - non-linear ``pinv`` (SIRT clipped at 0, CG): the reference code's form
      ``pinv(y) + x0 - pinv(A x0)``, ``pinv(y)`` computed once here. (The residual form of k CG
      iterations would be k CG iterations from ``x0``, i.e. DDS without its Tikhonov weight.)

    Projector calls per step: one ``A x0`` plus one ``pinv`` call (see ``physics.pinv``): ``2 n``
    for SIRT with ``n`` iterations, ``2 n + 2`` for CG with ``n``.

    Args:
        op: the forward operator (``A``).
        y: the measurement.
        pinv: a pseudo-inverse built for ``op`` (``physics.make_pseudo_inverse(name, op, ...)``);
            None uses the operator's own ``A_dagger`` (``physics.OperatorPseudoInverse``, linear).
        n_iter: with ``pinv`` None only: the iteration count handed to an ``A_dagger`` that takes
            ``n_iter`` (the CT least-squares solve); None keeps its default.
    """

    def __init__(self, op, y: torch.Tensor, pinv=None, *, n_iter: Optional[int] = None):
        if pinv is None:
            from physics.pinv import OperatorPseudoInverse

            pinv = OperatorPseudoInverse(op, n_iter)
        elif n_iter is not None:
            raise ValueError(
                f"n_iter={n_iter!r} applies to the operator's own A_dagger only; accepted: pinv=None, "
                "or the count given to the pseudo-inverse (physics.make_pseudo_inverse(..., n_iter=))"
            )
        elif pinv.op is not op:
            raise ValueError(
                "pinv was built for another operator; accepted: one built for op, the same object"
            )
        self.op = op
        self.y = y
        self.pinv = pinv
        self.pinv_y = None if pinv.linear else pinv(y)

    def __call__(self, x0: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        """Project the denoised stack ``x0`` onto the data (``sigma`` is not used)."""
        if self.pinv_y is None:
            return x0 + self.pinv(self.y - self.op.A(x0))
        return torch.sub(x0, self.pinv(self.op.A(x0))).add_(self.pinv_y)

    def describe(self) -> dict:
        """The pseudo-inverse and the form of the step, for the run's records."""
        form = "x0 + pinv(y - A x0)" if self.pinv_y is None else "pinv(y) + x0 - pinv(A x0)"
        return {**self.pinv.describe(), "form": form}
