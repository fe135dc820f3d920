"""Re-noising: from a data-consistent estimate x0 at level sigma to a sample at level sigma_next.

All presets are one eta-parameterised step (DDIM family, written for the VE-SDE):

    x_next = x0 + sigma_sto * z + sigma_det * eps_hat,
    sigma_sto = eta * sigma_next,   sigma_det = sqrt(sigma_next^2 - sigma_sto^2),

where ``z`` is fresh noise from a noise source and ``eps_hat = (x - D(x)) / sigma = -sigma * score``
is the denoiser's own noise estimate at the current level (the current score, reused). ``eps_hat``
comes from the denoiser's output BEFORE data consistency: measuring it from the corrected x0 would
add the correction back into the noise and undo it. Because sigma_sto^2 + sigma_det^2 =
sigma_next^2, the total noise level of ``x_next`` is exactly sigma_next, which is what the next
denoiser call assumes.

Presets (``RENOISE``):

- ``DDPM``: eta = 1, i.e. ``x0 + sigma_next z``.
- ``DDS``: eta = 0.85 (Chung et al., ICLR 2024).
- ``DiffPIR``: eta = 0.5.
- ``DDIM``: ancestral DDIM with eta_DDIM = 1, i.e. sigma_sto = sigma_next sqrt(1 - sigma_next^2 / sigma^2)
  (the posterior standard deviation of the VE ancestral step).

Differences from the original ISCS code: its DiffPIR takes ``(1 - eta) sigma_next`` for the
deterministic part and its DDIM takes ``sqrt(sigma^2 - sigma_next^2)`` for the stochastic part, so
the total noise of its DiffPIR and DDIM steps is not sigma_next; here it always is.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch

EtaRule = Callable[[float, float], float]


def ancestral_ddim_eta(sigma: float, sigma_next: float) -> float:
    """eta of the VE ancestral step (DDIM with eta_DDIM = 1): sqrt(1 - sigma_next^2 / sigma^2)."""
    if not 0 <= sigma_next <= sigma:
        raise ValueError(
            f"DDIM re-noising needs 0 <= sigma_next <= sigma, got sigma={sigma}, sigma_next={sigma_next}"
        )
    return math.sqrt(1.0 - (sigma_next / sigma) ** 2)


def _check_eta(eta: float) -> float:
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"re-noising eta must lie in [0, 1], got {eta}")
    return eta


class EtaRenoise:
    """One re-noising step, ``renoise(x0, eps_hat, sigma, sigma_next, z) -> x_next``.

    Args:
        eta: the stochastic share of the next noise level, a number in [0, 1] or a function
            ``eta(sigma, sigma_next)`` of the two levels (python floats).
        name: shown in ``repr`` (the preset name).
    """

    def __init__(self, eta: Union[float, EtaRule], name: str = ""):
        if not callable(eta):
            _check_eta(float(eta))
        self.eta = eta
        self.name = name

    def __repr__(self) -> str:
        return f"EtaRenoise({self.name or self.eta!r})"

    def split(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        """The stochastic and deterministic noise levels ``(sigma_sto, sigma_det)`` of a step."""
        eta = _check_eta(self.eta(sigma, sigma_next) if callable(self.eta) else float(self.eta))
        sigma_sto = eta * sigma_next
        return sigma_sto, math.sqrt(max(sigma_next * sigma_next - sigma_sto * sigma_sto, 0.0))

    def __call__(
        self, x0: torch.Tensor, eps_hat: torch.Tensor, sigma: float, sigma_next: float, z: torch.Tensor
    ) -> torch.Tensor:
        """Re-noise ``x0`` to level ``sigma_next``.

        Args:
            x0: data-consistent estimate, a slice stack [N, 1, h, w].
            eps_hat: the denoiser's unit-variance noise estimate ``(x - D(x, sigma)) / sigma``.
            sigma, sigma_next: current and next noise levels (python floats, sigma_next < sigma).
            z: fresh N(0, I) noise shaped like ``x0``.
        """
        sigma_sto, sigma_det = self.split(float(sigma), float(sigma_next))
        x_next = x0 + sigma_sto * z
        if sigma_det > 0.0:
            x_next.add_(eps_hat, alpha=sigma_det)
        return x_next


RENOISE = {
    "DDPM": EtaRenoise(1.0, "DDPM"),
    "DDS": EtaRenoise(0.85, "DDS"),
    "DiffPIR": EtaRenoise(0.5, "DiffPIR"),
    "DDIM": EtaRenoise(ancestral_ddim_eta, "DDIM"),
}


def make_renoise(renoise: Union[str, float, EtaRenoise]) -> EtaRenoise:
    """Resolve a preset name of ``RENOISE``, a number eta in [0, 1], or an ``EtaRenoise``.

    Raises:
        ValueError: unknown preset name or eta outside [0, 1].
    """
    if isinstance(renoise, EtaRenoise):
        return renoise
    if isinstance(renoise, str):
        if renoise not in RENOISE:
            accepted = f"{', '.join(RENOISE)} or a number eta in [0, 1]"
            raise ValueError(f"unknown renoise preset {renoise!r}; accepted: {accepted}")
        return RENOISE[renoise]
    if isinstance(renoise, (int, float)) and not isinstance(renoise, bool):
        return EtaRenoise(float(renoise))
    accepted = f"a preset name ({', '.join(RENOISE)}), a number eta or an EtaRenoise"
    raise TypeError(f"renoise must be {accepted}, got {type(renoise).__name__}")
