"""The one place that builds a run's parts from its specification.

The entry scripts (``recon.run``), the evidence experiment and the benchmarks build through these:
the compute device, the prior and its denoiser (precision, compile, slice batch), the config's
defaults resolved into a new spec, the sampler's noise source (its knobs checked) and settings, and
the method: ``SAMPLER_STEPS`` and ``SOLVERS`` are the one registry of methods, and
:func:`reconstruct` runs any of them on a :class:`Measured` problem, the sampler's parts shared
over the ranks of a multi-GPU launch. The problem builds its own operator
(``ProblemSpec.operator``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Callable, Dict, Optional

import torch

import algorithms
from algorithms.noise import noise_source_name, sources_taking
from models.precision import default_precision
from recon import distributed
from recon.parser import knob_option
from recon.specs import MethodSpec, NoiseSpec, PriorSpec, RunSpec


def make_device(spec: RunSpec) -> torch.device:
    """The compute device of ``spec`` (under torchrun: the local rank's GPU); asking for a GPU that
    is not there is an error."""
    if spec.prior.compile and spec.device == "cpu":
        raise ValueError(
            "--compile runs the network in a CUDA graph; accepted: --device cuda, or --no-compile"
        )
    if spec.device == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError("--device cuda: no CUDA GPU is available here; accepted: --device cpu")
    device = torch.device("cuda", distributed.cuda_index(spec.gpu, count))
    # CUDA work that names no device (Triton launches, graph capture, compiled code) goes to --gpu's.
    torch.cuda.set_device(device)
    return device


def load_prior(prior: PriorSpec, device: torch.device) -> torch.nn.Module:
    """The score network (EMA weights, eval mode) of ``prior``'s checkpoint and config."""
    from models import load_score_model

    return load_score_model(prior.config, prior.checkpoint, device=device, trust=prior.trust)


def make_denoiser(prior: PriorSpec, net: torch.nn.Module):
    """The slice denoiser of ``net`` as ``prior`` says: precision, slice batch, and with ``compile``
    channels_last, torch.compile and a CUDA graph (eager: the Denoiser's automatic layout and graph)."""
    from models import Denoiser

    fast = {"channels_last": True, "compile": True, "cuda_graph": True} if prior.compile else {}
    return Denoiser(net, slice_batch=prior.slice_batch, precision=prior.precision, **fast)


def check_slice_batch(prior: PriorSpec, num_slices: int) -> None:
    """A ``--slice-batch`` larger than the volume's slices is an error (one line)."""
    from models.denoiser import check_slice_batch

    try:
        check_slice_batch(prior.slice_batch, num_slices)
    except ValueError as err:
        raise ValueError(f"--slice-batch: {err}") from None


def resolve(spec: RunSpec, config) -> RunSpec:
    """``spec`` with the defaults the prior's ``config`` gives (noise range, plane size), as a new spec.

    Args:
        spec: the run specification.
        config: the prior's model config (``net.config``), or None for a run without a prior.
    """
    if config is None:
        return spec
    model, data = config.model, config.data
    prior = spec.prior
    sigma_max = float(model.sigma_max) if prior.sigma_max is None else prior.sigma_max
    sigma_min = float(model.sigma_min) if prior.sigma_min is None else prior.sigma_min
    size = int(data.image_size) if spec.problem.recon_size is None else spec.problem.recon_size
    step = 2 ** (len(model.ch_mult) - 1)
    if size % step:
        raise ValueError(
            f"--recon-size {size}: the prior's network halves the planes "
            f"{len(model.ch_mult) - 1} times; accepted: a multiple of {step}"
        )
    if not sigma_max > sigma_min:
        raise ValueError(f"--sigma-max {sigma_max:g} must exceed --sigma-min {sigma_min:g}")
    method = spec.method
    if method.name == "DDNM" and method.pinv is None:
        method = replace(method, pinv=spec.problem.DDNM_PINV)
    return replace(
        spec,
        prior=replace(prior, sigma_min=sigma_min, sigma_max=sigma_max, precision=_precision(spec)),
        problem=replace(spec.problem, recon_size=size),
        method=method,
    )


def _precision(spec: RunSpec) -> str:
    """The network precision: "auto" is bf16 on CUDA and fp32 on the CPU, where bf16 is far slower."""
    precision = spec.prior.precision
    if precision == "auto":
        return default_precision(spec.device)
    if precision == "bf16" and spec.device == "cpu":
        raise ValueError(
            "--precision bf16 on the CPU runs the network hundreds of times slower than fp32; "
            "accepted on --device cpu: --precision fp32 or auto"
        )
    return precision


def resolve_compile(spec: RunSpec, stack_shape) -> RunSpec:
    """``spec`` with ``--compile``'s "auto" (None) decided for the slice stack ``stack_shape``: compile
    on CUDA when the slices x NFE pay the compilation back (``models.denoiser.should_compile``)."""
    if spec.prior.compile is not None:
        return spec
    from models.denoiser import should_compile

    slices, _, height, width = stack_shape
    wanted = spec.device == "cuda" and should_compile(slices, spec.method.nfe, max(height, width), spec.device)
    return replace(spec, prior=replace(spec.prior, compile=bool(wanted)))


def make_noise_source(noise: NoiseSpec):
    """The noise source of ``noise`` with its knobs set; a knob the source does not have is an error."""
    name = noise_source_name(noise.source)
    for knob, value in noise.knobs.items():
        owners = sources_taking(knob)
        if name not in owners:
            raise ValueError(
                f"{knob_option(knob)} {value:g}: --noise-control {noise.source} has no such knob; "
                f"accepted with --noise-control {' or '.join(owners)}"
            )
    return algorithms.make_noise(noise.source, **noise.knobs)


def sampler_config(spec: RunSpec) -> algorithms.SamplerConfig:
    """The sampler's levels, re-noising and noise source of a resolved ``spec`` (see :func:`resolve`)."""
    return algorithms.SamplerConfig(
        nfe=spec.method.nfe,
        sigma_min=spec.prior.sigma_min,
        sigma_max=spec.prior.sigma_max,
        renoise=spec.method.renoise,
        noise=make_noise_source(spec.noise),
    )


def _dds(method: MethodSpec, op, y: torch.Tensor) -> algorithms.ConsistencyStep:
    if method.dc_cg_iters < 1:
        raise ValueError(
            f"--num-cg {method.dc_cg_iters} turns DDS's data consistency off; accepted: --num-cg >= 1"
        )
    consistency = algorithms.DDSConsistency(
        op, y, num_cg=method.dc_cg_iters, w_tik=method.w_tik, w_dz=method.w_dz
    )
    return algorithms.ConsistencyStep(consistency)


def _ddnm(method: MethodSpec, op, y: torch.Tensor) -> algorithms.ConsistencyStep:
    if method.w_tik != 0.0 or method.w_dz != 0.0:
        weights = f"w_tik={method.w_tik}, w_dz={method.w_dz}"
        raise ValueError(f"w_tik and w_dz apply to method 'DDS' only, got {weights} for 'DDNM'")
    return algorithms.ConsistencyStep(algorithms.DDNMConsistency(op, y, make_pinv(method, op)))


def make_pinv(method: MethodSpec, op):
    """DDNM's pseudo-inverse of ``op`` as ``method`` says (``--pinv``, ``--pinv-iter``, ``--pinv-min``);
    one that ``op`` does not have is a one-line error naming ``--pinv``."""
    from physics import make_pseudo_inverse

    options = {"sirt": dict(n_iter=method.pinv_iter, min_value=method.pinv_min), "cg": dict(n_iter=method.pinv_iter)}
    try:
        return make_pseudo_inverse(method.pinv, op, **options.get(method.pinv, {}))
    except ValueError as err:
        raise ValueError(f"--pinv {method.pinv}: {err}") from None


def _admm_tv(method: MethodSpec, op, y: torch.Tensor) -> torch.Tensor:
    return algorithms.admm_tv(
        op, y, lam=method.tv_weight, rho=method.admm_rho, n_iter=method.admm_iter, n_cg=method.admm_cg_iters
    )


SAMPLER_STEPS: Dict[str, Callable[[MethodSpec, Any, torch.Tensor], algorithms.Step]] = {
    "DDS": _dds,
    "DDNM": _ddnm,
}
"""Methods that sample with the prior: name -> ``(method spec, op, y) -> sampler step``."""

SOLVERS: Dict[str, Callable[[MethodSpec, Any, torch.Tensor], torch.Tensor]] = {
    "ADMM-TV": _admm_tv,
}
"""Methods without the prior: name -> ``(method spec, op, y) -> reconstruction``. Every other
method returns the baseline its problem names for it (``Baselines.methods``)."""

PRIOR_METHODS = tuple(SAMPLER_STEPS)


@dataclass
class Measured:
    """A problem measured on one volume: what every method reconstructs from.

    Args:
        problem: the problem (a ``recon.problems.ProblemSpec``).
        gt: the ground-truth slice stack.
        op: the problem's operator for ``gt``.
        y: the measurement.
        only: a classical method of ``problem.BASELINE_METHODS``: compute only its baseline.
    """

    problem: Any
    gt: torch.Tensor
    op: Any
    y: torch.Tensor
    only: Optional[str] = None

    @cached_property
    def baselines(self):
        """The problem's baselines from ``y`` (computed on first use); with ``only``, just the one
        that classical method returns."""
        return self.problem.baselines(self.op, self.y, self.gt, only=self.only)


def reconstruct(
    spec: RunSpec,
    measured: Measured,
    *,
    generator: torch.Generator,
    denoiser=None,
    sampler: Optional[algorithms.SamplerConfig] = None,
    callback: Optional[Callable[[dict], Any]] = None,
    disable: bool = True,
) -> torch.Tensor:
    """Reconstruct ``measured`` with ``spec``'s method.

    Args:
        spec: the resolved run specification (see :func:`resolve`).
        measured: the problem, its ground truth (for the shape), operator and measurement.
        generator: the only source of randomness (sampler methods).
        denoiser: the prior's denoiser (:func:`make_denoiser`), for sampler methods.
        sampler: the sampler's settings (:func:`sampler_config`), for sampler methods.
        callback, disable: see ``algorithms.sample``.

    Returns:
        The reconstruction, a slice stack shaped like ``measured.gt``.
    """
    name = spec.method.name
    if name in SAMPLER_STEPS:
        denoiser, op, y = distributed.parallel(denoiser, measured.op, measured.y)
        x_init = measured.baselines.main_stack if spec.method.use_init else None
        step = SAMPLER_STEPS[name](spec.method, op, y)
        return algorithms.reconstruct(
            denoiser,
            step,
            measured.gt.shape,
            sampler,
            generator=generator,
            x_init=x_init,
            callback=callback,
            disable=disable,
        )
    if name in SOLVERS:
        return SOLVERS[name](spec.method, measured.op, measured.y)
    return measured.baselines.of_method(name)
