"""Diffusion posterior sampling (DPS) as a sampler step: the data misfit's gradient through the denoiser.

Chung, Kim, McCann, Klasky and Ye, "Diffusion Posterior Sampling for General Noisy Inverse
Problems", ICLR 2023, Algorithm 1, on the VE-SDE: at each level the Tweedie estimate
``x0(x_t) = D(x_t, sigma)`` is computed with gradients and the next sample is pulled towards the data,

    x_next = x'_next - zeta_i grad_{x_t} ||y - A x0(x_t)||^2,   zeta_i = step_size / ||y - A x0(x_t)||,

where ``x'_next`` is the unguided re-noised sample. As a :class:`~algorithms.sampler.Step` this is
``(x0, x0 - zeta_i grad)``: the sampler re-noises ``x0_dc = x0 - zeta_i grad`` with the noise
estimate of the unguided ``x0``, which is the update above. The gradient is the vector-Jacobian
product of the denoiser with ``-2 A^T (y - A x0)``, so any operator with an exact ``A_adjoint``
serves; only the denoiser must be differentiable.
"""

from __future__ import annotations

from typing import Tuple

import torch


class DPSStep:
    """The DPS step ``step(denoiser, x, sigma) -> (x0, x0 - zeta grad)`` for ``algorithms.sample``.

    Args:
        op: the forward operator (``A``, ``A_adjoint``).
        y: the measurement.
        step_size: ``zeta'`` of the paper; the step is ``zeta' / ||y - A x0||`` times the gradient.
    """

    def __init__(self, op, y: torch.Tensor, step_size: float = 1.0):
        if not step_size > 0:
            raise ValueError(f"DPS step_size must be > 0, got {step_size}")
        self.op = op
        self.y = y
        self.step_size = float(step_size)

    def __call__(self, denoiser, x: torch.Tensor, sigma: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """The denoised estimate of ``x`` and that estimate moved down the misfit's gradient in ``x``."""
        with torch.enable_grad():
            x_t = x.detach().requires_grad_(True)
            x0 = denoiser(x_t, sigma)
            if not x0.requires_grad:
                raise TypeError(
                    "DPSStep: the denoiser returned a tensor without gradient; accepted: a denoiser that "
                    "autograd can differentiate (models.Denoiser runs without gradients)"
                )
            residual = self.y - self.op.A(x0.detach())
            (grad,) = torch.autograd.grad(x0, x_t, grad_outputs=-2.0 * self.op.A_adjoint(residual))
        # A zero residual has a zero gradient; the floor keeps its step finite (and the loop sync-free).
        zeta = self.step_size / residual.norm().clamp_min(torch.finfo(residual.dtype).tiny)
        x0 = x0.detach()
        return x0, x0 - zeta * grad
