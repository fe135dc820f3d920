"""Noise sources: how the Gaussian noise of one sampler step is drawn for all slices at once.

Every source is called as ``noise(shape, generator, dtype=torch.float32)`` with ``shape`` a slice
stack ``[N, 1, h, w]`` (dimension 0 runs over slices) and returns a tensor of that shape on
``generator.device``. Every slice of every source is exactly N(0, I); the sources differ only in
how slices are correlated with each other, which is the subject of ISCS (inter-slice consistent
stochasticity, ICLR 2026):

- ``iid``: independent slices (the usual baseline).
- ``iscs``: the published SLERP variant; slices lie on a great circle through two anchor draws.
- ``shared``: one draw repeated for every slice (the paper's "BCS" comparison).
- ``ar1``: a stationary AR(1) process along the slice axis; its correlation length moves
  continuously from ``iid`` (0) to ``shared`` (infinity).

``NOISE_SOURCES`` maps names to classes, ``NOISE_KNOBS`` names and describes their parameters, and
:func:`make_noise` resolves names and aliases.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

# The reference path has this many points per slice; slices are taken this many points apart.
ISCS_PATH_STRIDE = 16


def _slice_count(shape: Sequence[int]) -> int:
    """Validate a slice-stack shape and return its number of slices."""
    if len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"noise shape must be [N, 1, h, w]-like with positive sizes, got {tuple(shape)}")
    return int(shape[0])


def _draw(shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)


def _per_slice(values: torch.Tensor, ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """Reshape a [N] vector of per-slice coefficients so that it broadcasts over a slice stack."""
    return values.to(dtype).reshape((-1,) + (1,) * (ndim - 1))


def iscs_angles(num_slices: int, span: float = 1.0, device: Optional[torch.device] = None) -> torch.Tensor:
    """Angles (radians, float64 [N]) of the slices on the ISCS great circle.

    The reference path has ``n = 16 N`` interior points at ``alpha_k = (k + 1) / (n + 1)``; it keeps
    the centre point ``k = n // 2`` and then points 16 apart, alternately left and right, until
    ``N`` are kept. Sorted, slice ``i`` therefore sits at ``k_i = n // 2 + 16 (i - N // 2)``. Slice
    ``i`` gets the angle ``(pi / 2) (alpha_c + span (alpha_i - alpha_c))`` around the centre
    ``alpha_c``, so ``span = 1`` is the reference's spacing and ``span = 0`` puts every slice at
    the centre. Only these N values are computed, on ``device``, without a host transfer.
    """
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    n = ISCS_PATH_STRIDE * num_slices
    centre = n // 2
    offsets = torch.arange(num_slices, device=device, dtype=torch.float64) - num_slices // 2
    alphas = (centre + ISCS_PATH_STRIDE * offsets + 1) / (n + 1)
    alpha_centre = (centre + 1) / (n + 1)
    return (math.pi / 2) * (alpha_centre + span * (alphas - alpha_centre))


@dataclass(frozen=True)
class IidNoise:
    """Independent N(0, I) noise for every slice (the baseline; the reference's ``None``)."""

    def __call__(
        self, shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Draw noise of ``shape`` [N, 1, h, w] on ``generator.device``."""
        _slice_count(shape)
        return _draw(shape, generator, dtype)


@dataclass(frozen=True)
class SharedNoise:
    """One N(0, I) draw repeated for every slice (the paper's "BCS" comparison)."""

    def __call__(
        self, shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Draw one slice and repeat it ``N`` times; shape [N, 1, h, w] on ``generator.device``."""
        num_slices = _slice_count(shape)
        one = _draw((1,) + tuple(shape[1:]), generator, dtype)
        return one.expand((num_slices,) + tuple(shape[1:])).contiguous()


@dataclass(frozen=True)
class IscsNoise:
    """Inter-slice consistent noise on a spherical (SLERP) path between two anchors (ISCS).

    Per call two independent anchors ``z0, z1`` of ONE slice are drawn (in that order) and slice
    ``i`` receives ``cos(phi_i) z0 + sin(phi_i) z1`` with ``phi_i`` from :func:`iscs_angles`:
    the points the reference takes from its SLERP path, computed directly in O(N h w) memory
    (the reference materialises all 16 N path points). The reference interpolates with the
    measured angle between its two anchors; this uses the nominal angle pi / 2, which two
    independent Gaussian anchors have in expectation, and as a result every slice is EXACTLY
    N(0, I) and slices i, j have correlation ``cos(phi_i - phi_j)`` in closed form.

    Args:
        span: scales the angular spread of the slices around the path's centre; 1 is the
            reference's spacing (for many slices they cover nearly the quarter circle from z0 to z1),
            0 gives the same noise for every slice, larger values spread neighbours further apart.
    """

    span: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.span) and self.span >= 0):
            raise ValueError(f"iscs span must be a finite number >= 0, got {self.span}")

    def __call__(
        self, shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Draw ISCS noise of ``shape`` [N, 1, h, w] on ``generator.device``."""
        num_slices = _slice_count(shape)
        one_slice = (1,) + tuple(shape[1:])
        z0 = _draw(one_slice, generator, dtype)
        z1 = _draw(one_slice, generator, dtype)
        angles = iscs_angles(num_slices, self.span, device=generator.device)
        out = _per_slice(torch.cos(angles), len(shape), dtype) * z0
        return out.addcmul_(_per_slice(torch.sin(angles), len(shape), dtype), z1)


@dataclass(frozen=True)
class Ar1Noise:
    """Stationary AR(1) noise along the slice axis: a continuous knob from iid to shared.

    ``z_0 = e_0`` and ``z_i = rho z_(i-1) + sqrt(1 - rho^2) e_i`` with independent N(0, I) slices
    ``e_i`` and ``rho = exp(-1 / corr_length)``: every slice is exactly N(0, I) and slices ``k``
    apart have correlation ``rho^k``. One draw of N slices per call, O(N h w) memory.

    Args:
        corr_length: correlation length in slices; 0 gives iid noise, ``math.inf`` shared noise
            (the default 32 correlates neighbours at 0.97).
    """

    corr_length: float = 32.0

    def __post_init__(self):
        if math.isnan(self.corr_length) or self.corr_length < 0:
            raise ValueError(f"ar1 corr_length must be >= 0 (math.inf allowed), got {self.corr_length}")

    @property
    def rho(self) -> float:
        """Correlation between neighbouring slices."""
        return math.exp(-1.0 / self.corr_length) if self.corr_length > 0 else 0.0

    def __call__(
        self, shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Draw AR(1) noise of ``shape`` [N, 1, h, w] on ``generator.device``."""
        num_slices = _slice_count(shape)
        z = _draw(shape, generator, dtype)
        rho = self.rho
        if rho == 0.0:
            return z
        innovation = math.sqrt(1.0 - rho * rho)
        # The recursion runs in place, slice by slice, so that memory stays one volume.
        for i in range(1, num_slices):
            z[i].mul_(innovation).add_(z[i - 1], alpha=rho)
        return z


NoiseSource = Union[IidNoise, SharedNoise, IscsNoise, Ar1Noise]

NOISE_SOURCES = {
    "iid": IidNoise,
    "iscs": IscsNoise,
    "shared": SharedNoise,
    "ar1": Ar1Noise,
}

# Names the reference code and the paper use for the same sources.
NOISE_ALIASES = {
    None: "iid",
    "None": "iid",
    "SLERP": "iscs",
    "BCS": "shared",
}


# Every constructor parameter of a source, with what it does: the command line offers one option per knob.
NOISE_KNOBS = {
    "span": "ISCS angular spread (1 = the reference's)",
    "corr_length": "ar1 correlation length in slices",
}


def _accepted_noise_names() -> str:
    aliases = ", ".join(repr(a) for a in NOISE_ALIASES)
    return f"{', '.join(NOISE_SOURCES)} (aliases: {aliases})"


def noise_source_name(name: Optional[str]) -> str:
    """The registry name of a noise source name or alias; an unknown one is a ValueError."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"noise must be a name or a noise source instance, got {type(name).__name__}")
    key = NOISE_ALIASES.get(name, name)
    if key not in NOISE_SOURCES:
        raise ValueError(f"unknown noise source {name!r}; accepted: {_accepted_noise_names()}")
    return key


def sources_taking(param: str) -> list:
    """Registry names of the noise sources whose constructor takes ``param``."""
    return [name for name, cls in NOISE_SOURCES.items() if param in inspect.signature(cls).parameters]


def make_noise(name: Optional[str], **params) -> NoiseSource:
    """Build a noise source from its registry name or alias.

    Args:
        name: a key of ``NOISE_SOURCES`` ("iid", "iscs", "shared", "ar1") or an alias (None or
            "None" -> iid, "SLERP" -> iscs, "BCS" -> shared).
        **params: constructor parameters of the source (``span`` for iscs, ``corr_length`` for ar1).

    Raises:
        ValueError: unknown name, or parameters the source does not take.
    """
    key = noise_source_name(name)
    try:
        return NOISE_SOURCES[key](**params)
    except TypeError as err:
        raise ValueError(f"noise source {key!r} does not take parameters {sorted(params)}: {err}") from None
