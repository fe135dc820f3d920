"""The one diffusion sampler loop for 3D reconstruction with a 2D prior, and its convenience entry.

:func:`sample` runs DDS (Chung et al., "Decomposed Diffusion Sampler for Accelerating Large-Scale
Inverse Problems", ICLR 2024) and DDNM (Wang et al., "Zero-Shot Image Restoration Using Denoising
Diffusion Null-Space Model", ICLR 2023) on a VE-SDE, with the noise of every stochastic step drawn
for all slices at once by a noise source, which is how ISCS ("Improving 2D Diffusion Models for 3D
Medical Imaging with Inter-Slice Consistent Stochasticity", ICLR 2026) aligns the trajectories of
neighbouring slices. The method and the task differ only in the data-consistency callable and the
physics operator inside it: a :class:`Step`, which sees the noisy sample and may differentiate
through the denoiser (``algorithms.dps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Tuple, Union

import torch
from tqdm import tqdm

from models.sde import ve_sigma

from .noise import NoiseSource, make_noise
from .renoise import EtaRenoise, make_renoise

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Consistency = Callable[[torch.Tensor, float], torch.Tensor]


class Step(Protocol):
    """One level of the sampler: ``step(denoiser, x, sigma) -> (x0, x0_dc)``.

    ``x`` is the noisy sample at level ``sigma`` (a python float); ``x0`` is the denoiser's own
    estimate, from which the sampler measures the noise ``(x - x0) / sigma``, and ``x0_dc`` the
    estimate the sampler re-noises (the one that agrees with the measurement). A step may call the
    denoiser with gradients enabled (``torch.enable_grad``); the sampler itself runs without.
    """

    def __call__(
        self, denoiser: Denoiser, x: torch.Tensor, sigma: float
    ) -> Tuple[torch.Tensor, torch.Tensor]: ...


class ConsistencyStep:
    """The step of DDS and DDNM: ``x0 = denoiser(x, sigma)``, then ``x0_dc = consistency(x0, sigma)``.

    Args:
        consistency: ``consistency(x0, sigma) -> x``, e.g. :class:`~algorithms.DDSConsistency` or
            :class:`~algorithms.DDNMConsistency`.
    """

    def __init__(self, consistency: Consistency):
        self.consistency = consistency

    def __call__(
        self, denoiser: Denoiser, x: torch.Tensor, sigma: float
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The denoised estimate and its data-consistent version."""
        x0 = denoiser(x, sigma)
        return x0, self.consistency(x0, sigma)


def get_sigmas(nfe: int, sigma_min: float, sigma_max: float, eps: float = 1e-5) -> torch.Tensor:
    """The VE-SDE noise levels of the reference: :func:`models.sde.ve_sigma` at ``nfe`` times from 1 to ``eps``.

    Args:
        nfe: number of levels (one denoiser evaluation each), >= 1.
        sigma_min, sigma_max: the SDE's noise range, 0 < sigma_min < sigma_max.
        eps: the last time; ``t`` runs over ``linspace(1, eps, nfe)``.

    Returns:
        float64 CPU tensor [nfe], decreasing from sigma_max.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    return ve_sigma(torch.linspace(1.0, eps, nfe, dtype=torch.float64), sigma_min, sigma_max)


def _check_same_device(x: torch.Tensor, generator: torch.Generator, what: str) -> None:
    gen_device = generator.device
    if x.device.type != gen_device.type or (x.device.index or 0) != (gen_device.index or 0):
        raise ValueError(
            f"{what} is on {x.device} but the generator is on {gen_device}; put both on one device"
        )


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: Union[torch.Tensor, list],
    step: Optional[Step],
    renoise: EtaRenoise,
    noise: NoiseSource,
    generator: torch.Generator,
    callback: Optional[Callable[[dict], Any]] = None,
    disable: bool = False,
) -> torch.Tensor:
    """Posterior sampling with a slice-wise 2D prior: DDS / DDNM with ISCS noise.

    At each level ``sigma_i``: ``(x0, x0_dc) = step(denoiser, x, sigma_i)`` (for DDS and DDNM the
    Tweedie estimate ``x0 = denoiser(x, sigma_i)`` and its data-consistent ``x0_dc``), and unless
    it is the last level ``x = renoise(x0_dc, eps_hat, sigma_i, sigma_(i+1), noise(...))`` with
    ``eps_hat = (x - x0) / sigma_i``. The last level (sigma(eps), about sigma_min) returns its
    ``x0_dc``: the final denoising step. The loop runs without gradients; a step that needs them
    (DPS) enables them itself.

    Args:
        denoiser: ``D(x, sigma) -> x0`` for a slice stack and a python float sigma.
        x: the start ``x_T`` at ``sigmas[0]``, a slice stack [N, 1, h, w]; not modified.
        sigmas: decreasing noise levels (see :func:`get_sigmas`); read to the host once.
        step: a :class:`Step` (e.g. ``ConsistencyStep(DDSConsistency(...))``), or None for
            unconditional sampling.
        renoise: a re-noising step (see ``algorithms.renoise.RENOISE``).
        noise: a noise source (see ``algorithms.noise.NOISE_SOURCES``), drawn once per step for
            the whole volume.
        generator: the only source of randomness; must live on ``x``'s device.
        callback: called after every level with ``dict(i=, sigma=, x0=, x0_dc=, x_next=)``
            (``x_next`` is None at the last level).
        disable: hide the progress bar.

    Returns:
        The reconstruction, a slice stack shaped like ``x``.
    """
    _check_same_device(x, generator, "x")
    levels = [float(s) for s in (sigmas.tolist() if torch.is_tensor(sigmas) else sigmas)]
    if not levels or levels[-1] <= 0 or any(b >= a for a, b in zip(levels, levels[1:], strict=False)):
        raise ValueError(f"sigmas must be positive and strictly decreasing, got {levels}")
    last = len(levels) - 1
    progress = tqdm(levels, disable=disable, desc="sampling")
    for i, sigma in enumerate(progress):
        progress.set_postfix(sigma=f"{sigma:.4g}", refresh=False)
        if step is None:
            x0 = x0_dc = denoiser(x, sigma)
        else:
            x0, x0_dc = step(denoiser, x, sigma)
        x_next = None
        if i < last:
            eps_hat = (x - x0).div_(sigma)
            z = noise(x.shape, generator, dtype=x.dtype)
            x_next = renoise(x0_dc, eps_hat, sigma, levels[i + 1], z)
        if callback is not None:
            callback(dict(i=i, sigma=sigma, x0=x0, x0_dc=x0_dc, x_next=x_next))
        x = x_next
    return x0_dc


@dataclass(frozen=True)
class SamplerConfig:
    """The noise levels and the stochasticity of one sampler run.

    Args:
        nfe: number of noise levels (denoiser evaluations).
        sigma_min, sigma_max: the VE-SDE's noise range (the model config's values).
        renoise: a preset of ``RENOISE`` ("DDPM", "DDS", "DiffPIR", "DDIM"), a number eta, or an
            ``EtaRenoise``.
        noise: a noise source instance or a name of ``NOISE_SOURCES`` (or an alias).
    """

    nfe: int
    sigma_min: float
    sigma_max: float
    renoise: Union[str, float, EtaRenoise] = "DDS"
    noise: Union[str, None, NoiseSource] = "iscs"


def reconstruct(
    denoiser: Denoiser,
    step: Optional[Step],
    shape,
    config: SamplerConfig,
    *,
    generator: torch.Generator,
    x_init: Optional[torch.Tensor] = None,
    callback: Optional[Callable[[dict], Any]] = None,
    disable: bool = False,
) -> torch.Tensor:
    """Reconstruct a slice stack with a 2D prior: the start ``x_T`` is drawn, then :func:`sample` runs.

    Args:
        denoiser: ``D(x, sigma) -> x0`` (``models.Denoiser`` in practice).
        step: the sampler step that holds the measurement (e.g. ``ConsistencyStep(DDSConsistency(op,
            y, num_cg))`` for DDS, or ``algorithms.dps.DPSStep``); None samples the prior.
        shape: the slice stack's shape [N, 1, h, w].
        config: the noise levels, re-noising and noise source.
        generator: the only source of randomness.
        x_init: a starting estimate shaped like ``shape`` (e.g. FDK, SIRT or ``A_dagger(y)``): the
            start is ``x_init + sigma_max * noise`` instead of ``sigma_max * noise``.
        callback, disable: see :func:`sample`.

    Returns:
        The reconstruction [N, 1, h, w] on the generator's device.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[1] != 1:
        raise ValueError(f"shape must be a slice stack [N, 1, h, w], got {shape}")
    if x_init is not None and tuple(x_init.shape) != shape:
        raise ValueError(f"x_init must be shaped like {shape}, got {tuple(x_init.shape)}")
    renoise_step = make_renoise(config.renoise)
    noise_source = config.noise if callable(config.noise) else make_noise(config.noise)
    sigmas = get_sigmas(config.nfe, config.sigma_min, config.sigma_max)

    # The start is noised by the same source as every later step, so ISCS holds from x_T on.
    x = noise_source(shape, generator, dtype=torch.float32).mul_(float(sigmas[0]))
    if x_init is not None:
        x.add_(x_init.to(device=x.device, dtype=x.dtype))
    return sample(denoiser, x, sigmas, step, renoise_step, noise_source, generator, callback, disable)
