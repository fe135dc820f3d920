"""Typed run specifications: what one reconstruction does, as frozen values.

The entry scripts turn their command line into a :class:`RunSpec` once (``recon.cli``); below that
boundary every function takes these values, never an argparse object. Defaults that the prior's
config supplies (noise range, plane size) are filled into a new spec (``recon.factory.resolve``),
never by mutation. The problem part, :class:`recon.problems.ProblemSpec`, lives with the problems,
whose own parameters it carries. The defaults here are the command line's defaults.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

from algorithms import admm_tv

if TYPE_CHECKING:
    from recon.problems import ProblemSpec

ADMM_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(admm_tv).parameters.items()}


@dataclass(frozen=True)
class MethodSpec:
    """The reconstruction method and its settings.

    Args:
        name: the method: a sampler method of ``recon.factory.SAMPLER_STEPS`` ("DDS", "DDNM"), a
            solver of ``recon.factory.SOLVERS`` ("ADMM-TV"), or a baseline the problem names
            ("FDK", "SIRT", "A_dagger").
        nfe: denoiser evaluations (noise levels) of the sampler.
        dc_cg_iters: CG iterations of each DDS data-consistency step; for DDNM, the iterations of
            an iterative pseudo-inverse.
        w_tik: DDS proximal (Tikhonov) weight.
        w_dz: DDS+TV weight of the TV across the prior's slices, relative to ``||A||^2`` (0: off).
        renoise: re-noising preset of ``algorithms.RENOISE``.
        use_init: start the sampler from the main baseline plus noise.
        tv_weight: ADMM-TV's TV weight, relative to ``||A||^2``.
        admm_rho: ADMM-TV's penalty, relative to ``||A||^2``.
        admm_iter: ADMM-TV iterations.
        admm_cg_iters: CG iterations of each ADMM-TV x-update.
        pinv: DDNM's pseudo-inverse, a name of ``physics.PSEUDO_INVERSES`` ("sirt", "cg",
            "exact"); None: the problem's (``ProblemSpec.DDNM_PINV``: SIRT for CT, as the reference
            code, the exact one for ZSR).
        pinv_iter: iterations of an iterative pseudo-inverse (SIRT, CG).
        pinv_min: SIRT's lower bound on the values (the reference's x >= 0); None: unbounded.
    """

    name: str = "DDS"
    nfe: int = 50
    dc_cg_iters: int = 5
    w_tik: float = 0.0
    w_dz: float = 0.0
    renoise: str = "DDS"
    use_init: bool = False
    tv_weight: float = ADMM_DEFAULTS["lam"]
    admm_rho: float = ADMM_DEFAULTS["rho"]
    admm_iter: int = ADMM_DEFAULTS["n_iter"]
    admm_cg_iters: int = ADMM_DEFAULTS["n_cg"]
    pinv: Optional[str] = None
    pinv_iter: int = 100
    pinv_min: Optional[float] = 0.0


@dataclass(frozen=True)
class NoiseSpec:
    """The sampler's noise source.

    Args:
        source: a name of ``algorithms.NOISE_SOURCES`` or an alias ("SLERP", "None", "BCS"), kept
            as given because it names the results folder.
        knobs: the source's parameters that are set (``algorithms.noise.NOISE_KNOBS``); the others
            keep the source's defaults. Read-only by convention.
    """

    source: str = "SLERP"
    knobs: Dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PriorSpec:
    """The diffusion prior and how its network runs.

    Args:
        checkpoint: score model checkpoint (score_sde or exported).
        config: model config YAML; None when the checkpoint embeds its config.
        sigma_min, sigma_max: the sampler's noise range; None: the config's.
        precision: network precision, a key of ``models.PRECISIONS``, or "auto" (bf16 on CUDA, fp32
            on the CPU).
        compile: run the network compiled, channels_last and in a CUDA graph (CUDA only); None:
            when the work pays the compilation back (``models.denoiser.should_compile``).
        slice_batch: slices per network call; None: chosen from measured memory.
        trust: load a checkpoint that the safe loader refuses (it may run code stored in the file).
    """

    checkpoint: Path
    config: Optional[Path] = None
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    precision: str = "auto"
    compile: Optional[bool] = None
    slice_batch: Optional[int] = None
    trust: bool = False


@dataclass(frozen=True)
class OutputSpec:
    """What the results folder receives beyond the standard files.

    Args:
        results_dir: root of the results folders.
        save_intermediates: save every step's denoised and data-consistent volumes.
        gif: also write a GIF scrolling through the slices.
    """

    results_dir: Path = Path("results")
    save_intermediates: bool = False
    gif: bool = False


@dataclass(frozen=True)
class RunSpec:
    """One reconstruction run.

    Args:
        problem: what is reconstructed (a subclass of ``recon.problems.ProblemSpec``).
        prior: the diffusion prior (loaded only by the methods that sample with it).
        method: the method and its settings.
        noise: the sampler's noise source.
        output: the results folder's options.
        device: "cpu" or "cuda".
        gpu: CUDA device index (under torchrun each process uses its LOCAL_RANK's GPU).
        seed: seed of the one random generator.
    """

    problem: "ProblemSpec"
    prior: PriorSpec
    method: MethodSpec = field(default_factory=MethodSpec)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    device: str = "cpu"
    gpu: int = 0
    seed: int = 42
