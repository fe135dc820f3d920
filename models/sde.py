"""The variance-exploding SDE (Song et al., ICLR 2021) and its reverse-diffusion predictor step."""

import math

import torch


def ve_sigma(t, sigma_min: float, sigma_max: float):
    """The VE noise schedule sigma_min (sigma_max / sigma_min)^t of t (a float or tensor, returned alike)."""
    return sigma_min * (sigma_max / sigma_min) ** t


class VESDE:
    """dx = sqrt(d sigma(t)^2 / dt) dw on t in [0, T=1], sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    Args:
        sigma_min: smallest noise standard deviation (t = 0), > 0.
        sigma_max: largest noise standard deviation (t = 1), > sigma_min.
        N: number of discretisation steps; the discrete noise levels are N geometric steps from
            sigma_min to sigma_max.
    """

    T = 1.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 378.0, N: int = 2000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if int(N) != N or N < 2:
            raise ValueError(f"VESDE needs an integer N >= 2 steps, got N={N!r}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.N = int(N)
        self.discrete_sigmas = ve_sigma(
            torch.linspace(0.0, 1.0, self.N, dtype=torch.float64), self.sigma_min, self.sigma_max
        )

    def sigma(self, t):
        """Marginal noise standard deviation at time t (python float or tensor, returned alike)."""
        return ve_sigma(t, self.sigma_min, self.sigma_max)

    def sde(self, x, t):
        """(drift, diffusion) of the forward SDE at x and time t; the drift is zero."""
        diffusion = self.sigma(t) * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.zeros_like(x), _per_sample(diffusion, x)

    def marginal_prob(self, x, t):
        """(mean, std) of p_t(x_t | x_0 = x): mean x, std sigma(t) broadcast against x."""
        return x, _per_sample(self.sigma(t), x)

    def prior_sampling(self, shape, generator: torch.Generator, device=None, dtype=torch.float32):
        """A draw from the prior N(0, sigma_max^2 I).

        The noise is drawn on the generator's device and moved to ``device`` (default: the
        generator's), so one seed gives the same sample on every device.
        """
        z = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
        return (z * self.sigma_max).to(device or generator.device)

    def discretize(self, x, t):
        """(f, G) of the discrete reverse chain (SMLD): x_{i-1} = x_i + G^2 score + G z.

        The step index is floor(t (N - 1) / T); G^2 = sigma_i^2 - sigma_{i-1}^2 (sigma_{-1} = 0).
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        step = (t * (self.N - 1) / self.T).long().clamp(0, self.N - 1)
        table = self.discrete_sigmas.to(step.device)
        sigma = table[step]
        previous = torch.where(step == 0, torch.zeros_like(sigma), table[(step - 1).clamp(min=0)])
        g = torch.sqrt(sigma**2 - previous**2).to(device=x.device, dtype=x.dtype)
        return torch.zeros_like(x), _per_sample(g, x)

    def reverse_diffusion_step(self, score_fn, x, t, noise=None):
        """One reverse-diffusion predictor step (score_sde's ReverseDiffusionPredictor).

        The score is evaluated at the continuous marginal std sigma(t), as for continuously trained
        VE models, and the step uses the discrete G of ``discretize``.

        Args:
            score_fn: f(x, sigma) -> score, e.g. models.Denoiser.score.
            x: current sample [N, C, H, W].
            t: time in (0, 1] (python float or 0-d tensor).
            noise: standard normal tensor like x, or None for the noise-free final denoise.

        Returns:
            (x_next, x_mean): x_mean = x + G^2 score; x_next = x_mean + G noise (= x_mean without noise).
        """
        _, g = self.discretize(x, t)
        x_mean = x + g**2 * score_fn(x, self.sigma(t))
        if noise is None:
            return x_mean, x_mean
        return x_mean + g * noise, x_mean


def _per_sample(value, x):
    """A scalar or [B] tensor reshaped to broadcast against x [B, ...]."""
    value = torch.as_tensor(value, device=x.device, dtype=x.dtype)
    return value.reshape(-1, *([1] * (x.dim() - 1))) if value.dim() == 1 else value
