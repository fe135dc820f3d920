"""Measurement noise models for projections (line integrals), seeded by a torch.Generator.

Projections are line integrals of the normalised volume (values in [0, 1]; CT maps HU
[-1000, 1600] to [0, 1]) in value x mm. Photon statistics need attenuation: a voxel of value v
attenuates ``mu = v * mu_scale`` per mm. The default ``mu_scale`` = 0.0507 / mm makes water
(HU 0, value 1000 / 2600) attenuate 0.0195 / mm, its coefficient near 70 keV.
"""

from __future__ import annotations

import math

import torch

from utils.volume import HU_WINDOW

MU_WATER_PER_MM = 0.0195
MU_SCALE = MU_WATER_PER_MM * (HU_WINDOW[1] - HU_WINDOW[0]) / (0.0 - HU_WINDOW[0])

# Zero photon counts become this before the log, so that the line integral stays finite.
MIN_COUNT = 0.5


def _normal(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    # Draw on the generator's device so that a seed gives the same numbers wherever y lives.
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


class NoiseFree:
    """No measurement noise: ``noise(y, generator)`` returns a copy of y."""

    def noise(self, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return ``y`` unchanged (a copy)."""
        return y.clone()

    def __repr__(self) -> str:
        return "NoiseFree()"


class GaussianNoise:
    """Additive white Gaussian noise on the line integrals.

    Args:
        std: standard deviation, in the projection's unit (value x mm); >= 0.
    """

    def __init__(self, std: float) -> None:
        if not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise ValueError(f"std must be a finite number >= 0, got {std!r}")
        self.std = float(std)

    def noise(self, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``y + std * N(0, 1)``, same shape and dtype as y."""
        return y + self.std * _normal(y.shape, generator, y)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std:g})"


class PoissonNoise:
    """Photon-counting noise: counts ~ Poisson(I0 exp(-mu_scale * y)), then back to line integrals.

    Zero counts are raised to ``MIN_COUNT`` before ``y_noisy = -log(counts / I0) / mu_scale``.

    Args:
        I0: incident photons per detector cell (> 0); larger is less noisy.
        mu_scale: attenuation per mm of a voxel of value 1 (module docstring).
    """

    def __init__(self, I0: float, mu_scale: float = MU_SCALE) -> None:
        for name, value in (("I0", I0), ("mu_scale", mu_scale)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.I0 = float(I0)
        self.mu_scale = float(mu_scale)

    def expected_counts(self, y: torch.Tensor) -> torch.Tensor:
        """Mean photon counts behind line integrals ``y``."""
        return self.I0 * torch.exp(-self.mu_scale * y)

    def noise(self, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noisy line integrals, same shape and dtype as y."""
        rate = self.expected_counts(y).to(generator.device)
        counts = torch.poisson(rate, generator=generator).to(y.device).clamp_min(MIN_COUNT)
        return -torch.log(counts / self.I0) / self.mu_scale

    def __repr__(self) -> str:
        return f"PoissonNoise(I0={self.I0:g}, mu_scale={self.mu_scale:g})"


def noise_from_sino_noise(sino_noise: float):
    """The noise model behind the command line's single ``--sino-noise`` number s.

    * ``s <= 0``: no noise (:class:`NoiseFree`).
    * ``0 < s < 100``: :class:`GaussianNoise` with std ``sqrt(s)`` in the projection's unit
      (value x mm), i.e. s is the noise variance.
    * ``s >= 100``: :class:`PoissonNoise` with ``I0 = s`` incident photons per cell.
    """
    if (
        isinstance(sino_noise, bool)
        or not isinstance(sino_noise, (int, float))
        or not math.isfinite(sino_noise)
    ):
        raise ValueError(f"sino_noise must be a finite number, got {sino_noise!r}")
    for applies, build in _SINO_NOISE_RULES:
        if applies(sino_noise):
            return build(sino_noise)
    raise AssertionError("the rules cover every finite number")


# Noise model classes by name, for command lines and configs.
NOISE_MODELS = {"none": NoiseFree, "gaussian": GaussianNoise, "poisson": PoissonNoise}

# (condition on s, model) in order: the first rule that applies builds the model.
_SINO_NOISE_RULES = (
    (lambda s: s <= 0, lambda s: NoiseFree()),
    (lambda s: s < 100, lambda s: GaussianNoise(math.sqrt(s))),
    (lambda s: True, lambda s: PoissonNoise(float(s))),
)


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """Signal-to-noise ratio ``10 log10(|clean|^2 / |noisy - clean|^2)`` in dB (inf when equal)."""
    noise_energy = float(torch.sum((noisy.double() - clean.double()) ** 2))
    signal_energy = float(torch.sum(clean.double() ** 2))
    if noise_energy == 0:
        return math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)
