"""MRI z-axis super-resolution: thick slices as averages of groups of thin ones."""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch

from physics.operator import check_shape


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


def _is_count(n) -> bool:
    return not isinstance(n, bool) and isinstance(n, int) and n >= 1


class ZAxisSuperResolution:
    """Average groups of ``factor`` consecutive entries along ``axis``.

    Length rule: with ``length`` L not divisible by the factor, the last group holds the remaining
    ``L % factor`` entries and averages those, so ``A`` stays a full-row-rank averaging operator with
    ``ceil(L / factor)`` outputs and ``A_dagger`` is still replication. Without ``length`` the
    input length must be divisible (``A_adjoint`` could not tell L otherwise).

    Layout: the operator acts along one axis and keeps every other axis as it is, so the caller's
    layout (the sampler's slice stack [N, 1, h, w] with z on axis 2, a volume, a batch) comes back
    from ``A_adjoint`` and ``A_dagger`` unchanged: ``A_adjoint(A(x)).shape == x.shape`` for every
    accepted ``x``, with no state. Given ``shape``, it accepts that one shape only and reports it
    as ``input_shape`` (an operator of fixed size, e.g. for :func:`physics.to_deepinv`); without,
    ``input_shape`` and ``measurement_shape`` are None.

    Args:
        factor: group size, an integer >= 2.
        axis: the axis averaged (any, negative counts from the end).
        length: full-resolution length L along ``axis``; None accepts any multiple of ``factor``.
        shape: the one full-resolution input shape accepted (it fixes ``length`` to
            ``shape[axis]``), or None for any shape.
    """

    # A A^T is diagonal, so A_dagger (replication) is the exact pseudo-inverse.
    dagger_is_exact = True

    def __init__(
        self,
        factor: int,
        axis: int = 2,
        length: Optional[int] = None,
        shape: Optional[Sequence[int]] = None,
    ) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an integer, got {axis!r}")
        if length is not None and not _is_count(length):
            raise ValueError(f"length must be None or an integer >= 1, got {length!r}")
        if shape is not None:
            if isinstance(shape, torch.Tensor) or not all(_is_count(n) for n in shape):
                raise ValueError(f"shape must be None or a sequence of integers >= 1, got {shape!r}")
            shape = tuple(shape)
            if not -len(shape) <= axis < len(shape):
                raise ValueError(f"axis {axis} is out of range for shape {shape}")
            if length is not None and length != shape[axis]:
                raise ValueError(f"length {length} disagrees with shape {shape} along axis {axis}")
            length = shape[axis]
        self.factor = factor
        self.axis = axis
        self.length = length
        self.shape = shape

    @property
    def input_shape(self) -> Optional[Tuple[int, ...]]:
        """The one input shape accepted (``shape``), or None when any shape is."""
        return self.shape

    @property
    def measurement_shape(self) -> Optional[Tuple[int, ...]]:
        """``input_shape`` with ``ceil(L / factor)`` along ``axis``, or None."""
        if self.shape is None:
            return None
        out = list(self.shape)
        out[self.axis] = -(-self.length // self.factor)
        return tuple(out)

    def _check(self, t: torch.Tensor, low_res: bool) -> None:
        """With a fixed ``shape``, the one-line error for any other input shape."""
        if self.shape is not None:
            expected = self.measurement_shape if low_res else self.shape
            what = "A_adjoint and A_dagger take" if low_res else "A takes"
            check_shape(t, expected, f"ZAxisSuperResolution(shape={list(self.shape)}).{what} one shape")

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
        self._check(x, low_res=False)
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
        self._check(y, low_res=True)
        full = self._full_length(y, low_res=True)
        scaled = y / self._along_axis(self._group_sizes(full, y), y)
        return scaled.index_select(self.axis, self._group_index(full, y.device))

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """Exact pseudo-inverse (``A A^T`` is diagonal): each value replicated over its group."""
        self._check(y, low_res=True)
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


def slab_weights(factor: int, source_length: int, length: int) -> torch.Tensor:
    """Averaging weights ``[K, length]`` of thick slabs defined on a source grid, seen on a resampled one.

    Slab ``k`` is the physical interval of source slices ``[k factor, min((k + 1) factor, L_s))``
    (``L_s = source_length``; the last slab may be thinner); the resampled grid covers the same
    extent with ``length`` slices. Row ``k`` holds the fraction of each resampled slice inside slab
    ``k``, divided by the slab's thickness in resampled slices, so that a row averages exactly the
    part of the volume the slab covers. Computed in float64.
    """
    if not (_is_count(factor) and _is_count(source_length) and _is_count(length)) or factor < 2:
        raise ValueError(
            f"slab_weights needs integers factor >= 2, source_length >= 1, length >= 1; "
            f"got {factor!r}, {source_length!r}, {length!r}"
        )
    scale = length / source_length
    starts = torch.arange(0, source_length, factor, dtype=torch.float64)
    stops = torch.clamp(starts + factor, max=source_length)
    lo, hi = starts[:, None] * scale, stops[:, None] * scale
    cells = torch.arange(length, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(hi, cells + 1) - torch.maximum(lo, cells)).clamp_(min=0)
    return overlap / (hi - lo)


class SlabAverage:
    """Thick slabs of a source grid, averaged on a resampled grid: ``y = W x`` along ``axis``.

    The z-axis super-resolution of a volume whose planes were resized: the thick slices average
    groups of ``factor`` slices of the input's own grid (physical slabs), while the prior's grid
    has another slice count. ``W`` comes from :func:`slab_weights` (full row rank: every slab covers
    at least one resampled slice more than its neighbours); ``A_dagger`` applies its exact
    Moore-Penrose pseudo-inverse, computed once in float64. Acts along one axis and keeps the
    others, like :class:`ZAxisSuperResolution`.

    Args:
        factor: source slices per slab (>= 2).
        source_length: slices of the source grid along the axis.
        length: slices of the resampled grid along ``axis``.
        axis: the axis averaged.
    """

    dagger_is_exact = True
    input_shape = None
    measurement_shape = None

    def __init__(self, factor: int, source_length: int, length: int, axis: int = 2) -> None:
        self.factor, self.source_length, self.length, self.axis = factor, source_length, length, axis
        self.weights = slab_weights(factor, source_length, length)
        self.pinv = torch.linalg.pinv(self.weights)
        self.slab = factor * length / source_length
        """Slab thickness in slices of the resampled grid."""

    def _apply(self, matrix: torch.Tensor, t: torch.Tensor, expected: int, what: str) -> torch.Tensor:
        if t.shape[self.axis] != expected:
            raise ValueError(f"SlabAverage.{what}: expected {expected} entries along axis {self.axis}, "
                             f"got {t.shape[self.axis]}")
        moved = t.movedim(self.axis, -1)
        return (moved @ matrix.to(t.dtype).to(t.device).T).movedim(-1, self.axis)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Slab means along ``axis``: ``length`` -> number of slabs."""
        return self._apply(self.weights, x, self.length, "A")

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``W^T y`` along ``axis``."""
        return self._apply(self.weights.T, y, self.weights.shape[0], "A_adjoint")

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """The exact pseudo-inverse ``W^+ y`` along ``axis``."""
        return self._apply(self.pinv, y, self.weights.shape[0], "A_dagger")
