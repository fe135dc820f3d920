"""MRI z-axis super-resolution: thick slices as averages of groups of thin ones."""

from __future__ import annotations

import functools
from typing import Optional

import torch


@functools.lru_cache(maxsize=None)
def _householder_basis(n: int) -> torch.Tensor:
    """Orthonormal symmetric n x n matrix (float64) whose first row and column are 1/sqrt(n).

    The Householder reflection that maps e_1 onto the normalised constant vector.
    """
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    w = -torch.full((n,), 1.0 / n**0.5, dtype=torch.float64)
    w[0] += 1.0
    return torch.eye(n, dtype=torch.float64) - 2.0 * torch.outer(w, w) / torch.dot(w, w)


class ZAxisSuperResolution:
    """Average groups of ``factor`` consecutive entries along ``axis``.

    Length rule: with ``length`` L not divisible by the factor, the last group holds the remaining
    ``L % factor`` entries and averages those, so ``A`` stays a full-row-rank averaging operator with
    ``ceil(L / factor)`` outputs and ``A_dagger`` is still replication. Without ``length`` the
    input length must be divisible (``A_adjoint`` could not tell L otherwise).

    Args:
        factor: group size, an integer >= 2.
        axis: the axis averaged (any, negative counts from the end).
        length: full-resolution length L along ``axis``; None accepts any multiple of ``factor``.
    """

    def __init__(self, factor: int, axis: int = 2, length: Optional[int] = None) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an integer, got {axis!r}")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be None or an integer >= 1, got {length!r}")
        self.factor = factor
        self.axis = axis
        self.length = length

    def _full_length(self, t: torch.Tensor, low_res: bool) -> int:
        """Validated full-resolution length L behind ``t`` (a low-resolution tensor if ``low_res``)."""
        if not -t.dim() <= self.axis < t.dim():
            raise ValueError(f"axis {self.axis} is out of range for a tensor of shape {tuple(t.shape)}")
        n = t.shape[self.axis]
        if self.length is None:
            full = n * self.factor if low_res else n
            if full % self.factor:
                raise ValueError(
                    f"length {full} along axis {self.axis} is not divisible by factor {self.factor}; "
                    f"pass length={full} to average a partial last group"
                )
            return full
        expected = -(-self.length // self.factor) if low_res else self.length
        if n != expected:
            raise ValueError(
                f"expected {expected} entries along axis {self.axis} (length {self.length}, "
                f"factor {self.factor}), got {n}"
            )
        return self.length

    def _group_sizes(self, full: int, like: torch.Tensor) -> torch.Tensor:
        n_groups = -(-full // self.factor)
        sizes = torch.full((n_groups,), float(self.factor), dtype=like.dtype, device=like.device)
        sizes[-1] = full - (n_groups - 1) * self.factor
        return sizes

    def _along_axis(self, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = [1] * t.dim()
        shape[self.axis] = -1
        return values.view(shape)

    def _group_index(self, full: int, device) -> torch.Tensor:
        return torch.arange(full, device=device) // self.factor

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Group means along ``axis``: length L -> ceil(L / factor)."""
        full = self._full_length(x, low_res=False)
        sizes = self._group_sizes(full, x)
        shape = list(x.shape)
        shape[self.axis] = sizes.numel()
        sums = torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(
            self.axis % x.dim(), self._group_index(full, x.device), x
        )
        return sums / self._along_axis(sizes, x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Transpose of :meth:`A`: each entry, divided by its group size, copied to its group."""
        full = self._full_length(y, low_res=True)
        scaled = y / self._along_axis(self._group_sizes(full, y), y)
        return scaled.index_select(self.axis, self._group_index(full, y.device))

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """Exact pseudo-inverse (``A A^T`` is diagonal): each value replicated over its group."""
        full = self._full_length(y, low_res=True)
        return y.index_select(self.axis, self._group_index(full, y.device))

    def _reflect_groups(self, x: torch.Tensor) -> torch.Tensor:
        full = self._full_length(x, low_res=False)
        moved = x.movedim(self.axis, -1)
        whole = (full // self.factor) * self.factor
        parts = []
        for start, stop in ((0, whole), (whole, full)):
            if stop == start:
                continue
            size = min(self.factor, stop - start)
            basis = _householder_basis(size).to(dtype=x.dtype, device=x.device)
            groups = moved[..., start:stop].unflatten(-1, (-1, size))
            parts.append((groups @ basis).flatten(-2))
        return torch.cat(parts, dim=-1).movedim(-1, self.axis)

    def decouple(self, x: torch.Tensor) -> torch.Tensor:
        """Orthonormal transform of each group (same shape as ``x``).

        Entry 0 of each group becomes ``sqrt(n) * mean`` (n the group size), the part ``A`` sees; the
        other n - 1 entries are the coefficients of the detail directions, which ``A`` cannot see.
        """
        return self._reflect_groups(x)

    def couple(self, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`decouple`: the basis is a reflection, its own inverse and transpose."""
        return self._reflect_groups(c)

    def decouple_matrix(self) -> torch.Tensor:
        """The orthonormal, symmetric ``factor x factor`` matrix (float64) behind :meth:`decouple`."""
        return _householder_basis(self.factor).clone()
