"""The one argument parser of the entry scripts (``recon_CBCT.py``, ``recon_MRI_ZSR.py``).

Both scripts share every argument; a :class:`ScriptProfile` supplies the problem, the defaults,
choices and the few arguments only one script has. Option names and meanings follow the reference
code (``--NFE``, ``--num-cg``, ``--degree``...); the defaults are the run specifications' own
(``recon.specs``), and ``--help`` shows every one. ``recon.cli`` turns the parsed options into a
``RunSpec``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from algorithms import NOISE_ALIASES, NOISE_SOURCES, RENOISE
from algorithms.noise import NOISE_KNOBS
from models.precision import PRECISIONS
from physics.pinv import PSEUDO_INVERSES
from recon.specs import MethodSpec, NoiseSpec, OutputSpec, PriorSpec, RunSpec
from utils.device import default_device

DEVICES = ("cpu", "cuda")
NOISE_CONTROLS = tuple(str(name) for name in NOISE_ALIASES if isinstance(name, str)) + tuple(NOISE_SOURCES)


MAX_COUNT = 100_000
"""Largest iteration count, NFE or slice batch accepted: far above any useful run, low enough that
a typo cannot allocate a schedule or batch beyond memory."""
MAX_SIGMA = 1e4
"""Largest noise level accepted: VE priors are trained up to a few hundred; 1e4 leaves room without
letting float32 slices lose all their signal."""
MIN_SIGMA = 1e-6
"""Smallest noise level accepted: four decades below the priors' 0.01, while sigma^2 (the denoiser's
score weight) stays a normal float32 and sigma_max / sigma_min stays finite."""
MAX_SINO_NOISE = 1e12
"""Largest --sino-noise (Poisson I0): its relative noise 1e-6 is already below float32 resolution."""
MAX_RECON_SIZE = 2048
"""Largest plane side: one 2048^3 float32 volume is 32 GiB."""
SEED_LIMIT = 2**63
"""Seeds are accepted in [0, 2^63): what ``torch.Generator.manual_seed`` takes on every platform."""


def _show(value: float) -> str:
    return "2^63" if value == SEED_LIMIT else f"{value:g}"


def _accepted(name: str, low, high, strict: bool) -> str:
    if high is None:
        return f"{name} {'>' if strict else '>='} {_show(low)}"
    return f"{name} in {'(' if strict else '['}{_show(low)}, {_show(high)}{')' if high == SEED_LIMIT else ']'}"


def _bounded(kind: type, low: float, name: str, strict: bool = False, high: Optional[float] = None):
    """An argparse type converter for finite ``kind`` values ``>= low`` (``> low`` if strict) and, with
    ``high``, ``<= high`` (``< high`` for the seed limit); nan and inf are refused."""
    accepted = _accepted(name, low, high, strict)

    def convert(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}; {accepted} is accepted") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; {accepted} is accepted")
        below = value <= low if strict else value < low
        above = high is not None and (value >= high if high == SEED_LIMIT else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; {accepted} is accepted")
        return value

    return convert


def finite_float(text: str) -> float:
    """An argparse type converter for finite numbers."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; a finite number is")
    return value


def optional_float(text: str) -> Optional[float]:
    """An argparse type converter for a finite number or ``none``."""
    return None if text.strip().lower() == "none" else finite_float(text)


positive_int = _bounded(int, 1, "an integer")
non_negative_int = _bounded(int, 0, "an integer")
non_negative_float = _bounded(float, 0.0, "a number")
positive_float = _bounded(float, 0.0, "a number", strict=True)
count = _bounded(int, 1, "an integer", high=MAX_COUNT)
non_negative_count = _bounded(int, 0, "an integer", high=MAX_COUNT)
sigma = _bounded(float, MIN_SIGMA, "a number", high=MAX_SIGMA)
sino_noise = _bounded(float, 0.0, "a number", high=MAX_SINO_NOISE)
recon_size = _bounded(int, 1, "an integer", high=MAX_RECON_SIZE)
seed = _bounded(int, 0, "an integer", high=SEED_LIMIT)


def length_or_inf(text: str) -> float:
    """An argparse type converter for a number >= 0 or ``inf`` (an unbounded correlation length)."""
    if text.strip().lower() in ("inf", "+inf", "infinity"):
        return math.inf
    try:
        return non_negative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; a number >= 0 or inf is") from None


# Noise knobs whose converter differs from non_negative_float: an infinite AR(1) length shares the noise.
KNOB_TYPES = {"corr_length": length_or_inf}


def knob_option(knob: str) -> str:
    """The command-line option of a noise-source knob: ``corr_length`` -> ``--noise-corr-length``."""
    return "--noise-" + knob.replace("_", "-")


def knob_dest(knob: str) -> str:
    """The parsed attribute of a noise-source knob: ``corr_length`` -> ``noise_corr_length``."""
    return "noise_" + knob


@dataclass(frozen=True)
class ScriptProfile:
    """What one entry script reconstructs, and its defaults.

    Args:
        prog: script name shown in ``--help``, relative to the repository root.
        description: one paragraph for ``--help``.
        problem: the problem class (a ``recon.problems.ProblemSpec`` subclass); its tasks are the
            accepted ``--task`` values (the first is the default).
        degree: default ``--degree``.
        degree_help: what ``--degree`` means for these tasks (each task's named parameter).
        methods: accepted ``--method`` values (the first is the default).
        data, checkpoint: default ``--data`` and ``--checkpoint-path``.
        extra: arguments only this script has: ``(flag, argparse keyword arguments)`` pairs, each
            setting the problem's field of the same name.
    """

    prog: str
    description: str
    problem: type
    degree: int
    degree_help: str
    methods: Tuple[str, ...]
    data: Path
    checkpoint: Path
    extra: Tuple[Tuple[str, Dict[str, Any]], ...] = field(default_factory=tuple)

    @property
    def tasks(self) -> Tuple[str, ...]:
        """The accepted ``--task`` values."""
        return tuple(self.problem.PARAMETERS)

    @property
    def extra_fields(self) -> Tuple[str, ...]:
        """The problem fields that the extra arguments set."""
        return tuple(flag[2:].replace("-", "_") for flag, _ in self.extra)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block): the bad value and what is accepted."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(profile: ScriptProfile) -> argparse.ArgumentParser:
    """The shared parser with ``profile``'s defaults; every option shows its default in ``--help``."""
    method, noise, prior, output = MethodSpec(), NoiseSpec(), PriorSpec(profile.checkpoint), OutputSpec()
    run_defaults = {item.name: item.default for item in fields(RunSpec)}
    parser = OneLineParser(
        prog=profile.prog,
        description=profile.description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    problem = parser.add_argument_group("problem")
    problem.add_argument(
        "--task", choices=profile.tasks, default=profile.tasks[0], help="measurement to simulate"
    )
    problem.add_argument("--degree", type=positive_int, default=profile.degree, help=profile.degree_help)
    problem.add_argument(
        "--method", choices=profile.methods, default=profile.methods[0], help="reconstruction method"
    )
    problem.add_argument(
        "--data", type=Path, default=profile.data, help="input volume (NIfTI, or .pt/.npy tensor file)"
    )
    problem.add_argument(
        "--slice-begin",
        type=non_negative_int,
        default=0,
        help="first slice kept along the prior's slice axis (CBCT: axial, ZSR: coronal); both 0: all",
    )
    problem.add_argument(
        "--slice-end", type=non_negative_int, default=0, help="one past the last slice kept; both 0: all"
    )
    problem.add_argument(
        "--recon-size",
        type=recon_size,
        default=None,
        help="side of the square planes the prior sees, after antialiased resizing; "
        "None: the prior's data.image_size for DDS/DDNM, the input size otherwise",
    )
    for flag, kwargs in profile.extra:
        problem.add_argument(flag, **kwargs)

    sampler = parser.add_argument_group("diffusion sampler (DDS, DDNM)")
    sampler.add_argument(
        "--NFE", type=count, default=method.nfe, help="number of denoiser evaluations (noise levels)"
    )
    sampler.add_argument(
        "--num-cg",
        type=non_negative_count,
        default=method.dc_cg_iters,
        help="CG iterations of each data-consistency step (ADMM-TV: of each x-update)",
    )
    sampler.add_argument(
        "--w-tik", type=non_negative_float, default=method.w_tik, help="DDS proximal (Tikhonov) weight"
    )
    sampler.add_argument(
        "--w-dz",
        type=non_negative_float,
        default=method.w_dz,
        help="DDS+TV weight of the TV across the prior's slices (CBCT: z, ZSR: y), relative to ||A||^2 (0: off)",
    )
    sampler.add_argument(
        "--sigma-max",
        type=sigma,
        default=prior.sigma_max,
        help="largest noise level; None: model.sigma_max of the config",
    )
    sampler.add_argument(
        "--sigma-min",
        type=sigma,
        default=prior.sigma_min,
        help="smallest noise level; None: model.sigma_min of the config",
    )
    sampler.add_argument(
        "--noise-control",
        choices=NOISE_CONTROLS,
        default=noise.source,
        help="noise drawn across slices: SLERP = ISCS (the paper), None = iid, BCS = shared; "
        "iscs/iid/shared/ar1 are the registry names",
    )
    for knob, meaning in NOISE_KNOBS.items():
        sampler.add_argument(
            knob_option(knob),
            type=KNOB_TYPES.get(knob, non_negative_float),
            default=None,
            help=f"{meaning}; None: the source's default",
        )
    sampler.add_argument(
        "--renoise-method",
        choices=tuple(RENOISE),
        default=method.renoise,
        help="re-noising preset (eta of the step)",
    )
    sampler.add_argument(
        "--use-init",
        action=argparse.BooleanOptionalAction,
        default=method.use_init,
        help="start from the main baseline plus noise",
    )
    sampler.add_argument(
        "--checkpoint-path",
        type=Path,
        default=prior.checkpoint,
        help="score model checkpoint (score_sde or exported)",
    )
    sampler.add_argument(
        "--config-path",
        type=Path,
        default=prior.config,
        help="model config YAML (optional when the checkpoint embeds its config)",
    )
    sampler.add_argument(
        "--slice-batch",
        type=count,
        default=prior.slice_batch,
        help="slices per network call; None: chosen from free memory",
    )
    sampler.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default=prior.precision,
        help="network precision; auto: bf16 on CUDA, fp32 on the CPU",
    )
    sampler.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=prior.compile,
        help="CUDA only: run the network compiled (torch.compile), channels_last and in a CUDA graph; "
        "None: only when the slices x NFE pay the compilation back (models.denoiser.should_compile)",
    )
    sampler.add_argument(
        "--trust-checkpoint",
        action=argparse.BooleanOptionalAction,
        default=prior.trust,
        help="load a checkpoint the safe loader refuses; it may run code stored in the file "
        "(or convert it once: python -m models.convert_checkpoint)",
    )
    sampler.add_argument(
        "--pinv",
        choices=tuple(PSEUDO_INVERSES),
        default=method.pinv,
        help="DDNM's pseudo-inverse; None: the problem's (CT: sirt, as the reference code; ZSR: exact)",
    )
    sampler.add_argument(
        "--pinv-iter",
        type=count,
        default=method.pinv_iter,
        help="iterations of DDNM's iterative pseudo-inverse (sirt, cg)",
    )
    sampler.add_argument(
        "--pinv-min",
        type=optional_float,
        default=method.pinv_min,
        help="lower bound of DDNM's SIRT on the values ('none': unbounded)",
    )

    admm = parser.add_argument_group("ADMM-TV (defaults: algorithms.admm_tv's)")
    admm.add_argument(
        "--tv-weight",
        type=positive_float,
        default=method.tv_weight,
        help="TV weight lam, relative to ||A||^2",
    )
    admm.add_argument(
        "--admm-rho",
        type=positive_float,
        default=method.admm_rho,
        help="ADMM penalty rho, relative to ||A||^2",
    )
    admm.add_argument("--admm-iter", type=count, default=method.admm_iter, help="ADMM iterations")

    run = parser.add_argument_group("run")
    run.add_argument("--device", choices=DEVICES, default=default_device(), help="compute device")
    run.add_argument(
        "--gpu",
        type=non_negative_int,
        default=run_defaults["gpu"],
        help="CUDA device index (with --device cuda); under torchrun each process uses its LOCAL_RANK's GPU",
    )
    run.add_argument(
        "--seed", type=seed, default=run_defaults["seed"], help="seed of the one random generator"
    )
    run.add_argument(
        "--results-dir", type=Path, default=output.results_dir, help="root of the results folders"
    )
    run.add_argument(
        "--save-intermediates",
        action=argparse.BooleanOptionalAction,
        default=output.save_intermediates,
        help="save every step's denoised (X_hat/) and data-consistent (X_0/) volumes",
    )
    run.add_argument(
        "--gif",
        action=argparse.BooleanOptionalAction,
        default=output.gif,
        help="also write a GIF scrolling through the slices",
    )
    return parser


def parse_args(profile: ScriptProfile, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``) with :func:`build_parser`; a bad value, or options
    that contradict each other or the method, exit with code 2 and one line on stderr."""
    parser = build_parser(profile)
    args = parser.parse_args(argv)
    if args.sigma_min is not None and args.sigma_max is not None and args.sigma_min >= args.sigma_max:
        parser.error(
            f"argument --sigma-min: {args.sigma_min:g} is not below --sigma-max {args.sigma_max:g}; "
            f"{MIN_SIGMA:g} <= sigma-min < sigma-max <= {MAX_SIGMA:g} is accepted"
        )
    if args.num_cg == 0 and args.method in ("DDS", "ADMM-TV"):
        parser.error(
            f"argument --num-cg: 0 turns {args.method}'s data consistency off; "
            f"an integer >= 1 is accepted with --method {args.method}"
        )
    if args.method == "DDNM":
        for flag, value in (("--w-tik", args.w_tik), ("--w-dz", args.w_dz)):
            if value != 0:
                parser.error(f"argument {flag}: {value:g} applies to --method DDS only; 0 is accepted with DDNM")
    return args
