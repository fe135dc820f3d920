"""The one diffusion sampler loop for 3D reconstruction with a 2D prior, and its convenience entry.

:func:`sample` runs DDS (Chung et al., "Decomposed Diffusion Sampler for Accelerating Large-Scale
Inverse Problems", ICLR 2024) and DDNM (Wang et al., "Zero-Shot Image Restoration Using Denoising
Diffusion Null-Space Model", ICLR 2023) on a VE-SDE, with the noise of every stochastic step drawn
for all slices at once by a noise source, which is how ISCS ("Improving 2D Diffusion Models for 3D
Medical Imaging with Inter-Slice Consistent Stochasticity", ICLR 2026) aligns the trajectories of
neighbouring slices. The method and the task differ only in the data-consistency callable and the
physics operator inside it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from tqdm import tqdm

from .consistency import DDNMConsistency, DDSConsistency
from .noise import NoiseSource, make_noise
from .renoise import EtaRenoise, make_renoise

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Consistency = Callable[[torch.Tensor, float], torch.Tensor]


def get_sigmas(nfe: int, sigma_min: float, sigma_max: float, eps: float = 1e-5) -> torch.Tensor:
    """The VE-SDE noise levels of the reference: ``sigma_min (sigma_max / sigma_min)^t``.

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
    t = torch.linspace(1.0, eps, nfe, dtype=torch.float64)
    return sigma_min * (sigma_max / sigma_min) ** t


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
    consistency: Optional[Consistency],
    renoise: EtaRenoise,
    noise: NoiseSource,
    generator: torch.Generator,
    callback: Optional[Callable[[dict], Any]] = None,
    disable: bool = False,
) -> torch.Tensor:
    """Posterior sampling with a slice-wise 2D prior: DDS / DDNM with ISCS noise.

    At each level ``sigma_i``: ``x0 = denoiser(x, sigma_i)`` (Tweedie), ``x0_dc =
    consistency(x0, sigma_i)``, and unless it is the last level ``x = renoise(x0_dc, eps_hat,
    sigma_i, sigma_(i+1), noise(...))`` with ``eps_hat = (x - x0) / sigma_i``. The last level
    (sigma(eps), about sigma_min) returns its data-consistent ``x0_dc``: the final denoising step.

    Args:
        denoiser: ``D(x, sigma) -> x0`` for a slice stack and a python float sigma.
        x: the start ``x_T`` at ``sigmas[0]``, a slice stack [N, 1, h, w]; not modified.
        sigmas: decreasing noise levels (see :func:`get_sigmas`); read to the host once.
        consistency: ``consistency(x0, sigma) -> x`` (e.g. :class:`DDSConsistency`), or None for
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
        x0 = denoiser(x, sigma)
        x0_dc = x0 if consistency is None else consistency(x0, sigma)
        x_next = None
        if i < last:
            eps_hat = (x - x0).div_(sigma)
            z = noise(x.shape, generator, dtype=x.dtype)
            x_next = renoise(x0_dc, eps_hat, sigma, levels[i + 1], z)
        if callback is not None:
            callback(dict(i=i, sigma=sigma, x0=x0, x0_dc=x0_dc, x_next=x_next))
        x = x_next
    return x0_dc


def _dds(op, y, *, num_cg: int, w_tik: float, w_dz: float) -> DDSConsistency:
    return DDSConsistency(op, y, num_cg=num_cg, w_tik=w_tik, w_dz=w_dz)


def _ddnm(op, y, *, num_cg: int, w_tik: float, w_dz: float) -> DDNMConsistency:
    if w_tik != 0.0 or w_dz != 0.0:
        raise ValueError(
            f"w_tik and w_dz apply to method 'DDS' only, got w_tik={w_tik}, w_dz={w_dz} for 'DDNM'"
        )
    return DDNMConsistency(op, y, n_iter=num_cg)


METHODS = {
    "DDS": _dds,
    "DDNM": _ddnm,
}


def reconstruct(
    method: str,
    denoiser: Denoiser,
    op,
    y: torch.Tensor,
    *,
    shape,
    nfe: int,
    sigma_min: float,
    sigma_max: float,
    num_cg: int = 5,
    w_tik: float = 0.0,
    w_dz: float = 0.0,
    renoise: Union[str, float, EtaRenoise] = "DDS",
    noise: Union[str, None, NoiseSource] = "iscs",
    use_init: bool = False,
    x_init: Optional[torch.Tensor] = None,
    generator: torch.Generator,
    callback: Optional[Callable[[dict], Any]] = None,
    disable: bool = False,
) -> torch.Tensor:
    """Reconstruct a slice stack from a measurement ``y`` with DDS or DDNM and a 2D prior.

    Args:
        method: "DDS" (CG data consistency) or "DDNM" (null-space projection), see ``METHODS``.
        denoiser: ``D(x, sigma) -> x0`` (``models.Denoiser`` in practice).
        op: the physics operator with ``A``, ``A_adjoint``, ``A_dagger`` on slice stacks.
        y: the measurement.
        shape: the slice stack's shape [N, 1, h, w].
        nfe: number of noise levels (denoiser evaluations).
        sigma_min, sigma_max: the VE-SDE's noise range (the model config's values).
        num_cg: CG iterations of the DDS step; for DDNM, the iteration count passed to an
            iterative ``A_dagger`` (one that takes ``n_iter``, e.g. CT).
        w_tik: DDS proximal weight; rho = w_tik / sigma^2 ties x to the denoised estimate.
        w_dz: DDS+TV weight of the TV penalty along the slice axis (0: plain DDS).
        renoise: a preset of ``RENOISE`` ("DDPM", "DDS", "DiffPIR", "DDIM"), a number eta, or
            an ``EtaRenoise``.
        noise: a noise source instance or a name of ``NOISE_SOURCES`` (or an alias).
        use_init: start from ``x_init + sigma_max * noise`` instead of ``sigma_max * noise``.
        x_init: the starting estimate for ``use_init`` (e.g. FDK, SIRT or ``A_dagger(y)``), shaped
            like ``shape``.
        generator: the only source of randomness, on the device of ``y``.
        callback, disable: see :func:`sample`.

    Returns:
        The reconstruction [N, 1, h, w] on the generator's device.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[1] != 1:
        raise ValueError(f"shape must be a slice stack [N, 1, h, w], got {shape}")
    renoise_step = make_renoise(renoise)
    noise_source = noise if callable(noise) else make_noise(noise)
    _check_same_device(y, generator, "y")
    if use_init and (x_init is None or tuple(x_init.shape) != shape):
        got = None if x_init is None else tuple(x_init.shape)
        raise ValueError(f"use_init=True needs x_init shaped like {shape}, got {got}")
    consistency = METHODS[method](op, y, num_cg=num_cg, w_tik=w_tik, w_dz=w_dz)
    sigmas = get_sigmas(nfe, sigma_min, sigma_max)

    # The start is noised by the same source as every later step, so ISCS holds from x_T on.
    x = noise_source(shape, generator, dtype=torch.float32).mul_(float(sigmas[0]))
    if use_init:
        x.add_(x_init.to(device=x.device, dtype=x.dtype))
    return sample(denoiser, x, sigmas, consistency, renoise_step, noise_source, generator, callback, disable)
