"""The ISCS evidence experiment: i.i.d. versus inter-slice consistent sampler noise on held-out volumes.

One process runs a queue of cases ``(problem, volume, method, noise, sampler seed)`` in priority
order and appends one JSON line per finished case to the results file; a rerun skips the cases
already there, so the experiment resumes across calls (and machines). Every case is a
``recon.specs.RunSpec``, run in one of two ways:

- the user path (default): as a subprocess of the entry script itself,
  ``python recon_CBCT.py <recon.cli.to_argv(spec)>`` (``--workers N`` of them at once), reading
  the run's ``metrics.json`` and ``args.yaml``; without ``--precision`` the script runs at its own
  default precision (auto: bf16 on CUDA);
- the harness (``--harness``): in this process, through the entry scripts' own factories
  (``recon.factory``), with each prior loaded once and each problem's ground truth, operator and
  measurement built once per volume.

Both give the same metrics for the same case. Each generated volume is written once to a cache
folder (``--cache``; NIfTI, or the ``.pt`` tensor file ``utils.io`` reads when SimpleITK is missing)
in its natural units (CT in HU), and every case reads it from there as a user's file.

Problems, on volumes generated here from held-out seeds (deterministic for a device):

- ``SVCT-30``, ``LACT-100``: cone-beam CT (30 views over 360 degrees; the first 100 degrees of the
  arc) of procedural phantoms ``datasets.ct_phantom.EVAL_SEEDS[1:]`` (the demo volume is
  ``EVAL_SEEDS[0]``), reconstructed with the CT prior on axial slices.
- ``ZSR-4``, ``ZSR-5``: MRI z-axis super-resolution x4 and x5 (the paper's factor) of augmented
  brains ``datasets.mri.EVAL_SEEDS[1:]``, reconstructed with the MRI prior on coronal slices.
- ``<problem>:<family>``: the same problem on ``--external N`` volumes of a family of
  ``experiments/external_volumes.py`` (its ``EVAL_SEEDS``): ``SVCT-30:shepp-logan``,
  ``SVCT-30:torso``, ``LACT-100:torso`` (CT prior) and ``ZSR-4:brain-mr`` (MRI prior); they use the
  tuned weights of their base problem.

Every record names the prior that made it (checkpoint file name and the first 12 hex digits of its
sha256), and a sampler case's key ends with that prior, so that runs of one queue with different
checkpoints keep separate records in one results file. DDNM uses the problem's default
pseudo-inverse (SIRT for CT, exact for ZSR), as the entry scripts do; the record names it.

Methods: ``FDK`` (CT) / ``A_dagger`` (ZSR), ``ADMM-TV``, ``DDS``, ``DDS+TV`` (TV along the slice
axis) and ``DDNM``; sampler noise ``iid``, ``iscs`` (the published SLERP path), ``shared`` (one draw
for every slice) or ``ar1-<length>`` (AR(1) along the slices, correlation length in slices).

The two tuned weights (DDS+TV's ``w_dz`` and ADMM-TV's TV weight, per problem) come from
``--tune``, which picks each from a fixed grid by volume PSNR on one validation volume of the
TRAINING seed range (``TRAIN_SEEDS[-1]``, past every seed the priors were trained on), never on an
evaluation volume, and writes the tuning file; until it exists, the evaluation runs every other
case and leaves the cases of those two methods for later. Tuning runs in the harness.

Device usage (each call resumes where the one before stopped)::

    python experiments/iscs_eval.py --max-minutes 8.5
    python experiments/iscs_eval.py --problems LACT-100,ZSR-5 --methods DDNM,DDS --max-minutes 5
    python experiments/iscs_eval.py --tune && python experiments/iscs_eval.py --max-minutes 6

With ``OUT`` set, the results and tuning files are copied to ``$OUT`` after every case, and the
volumes of the figure cases (the first phantom's ground truth, its DDS and DDS+ISCS reconstructions
for SVCT-30 and DDNM and DDNM+ISCS for LACT-100, first seed) are saved there as five fp16 ``.pt``
files.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import fnmatch
import importlib.util
import json
import math
import os
import queue as _queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import algorithms  # noqa: E402
from experiments import external_volumes  # noqa: E402
from algorithms.noise import NOISE_KNOBS, NOISE_SOURCES, sources_taking  # noqa: E402
from datasets import ct_phantom, mri  # noqa: E402
from models.checkpoint import atomic_save  # noqa: E402
from models.precision import PRECISIONS, default_precision  # noqa: E402
from recon import factory  # noqa: E402
from recon.cli import to_argv  # noqa: E402
from recon.factory import Measured  # noqa: E402
from recon.parser import non_negative_float, positive_int  # noqa: E402
from recon.problems import PROBLEMS as PROBLEM_CLASSES  # noqa: E402
from recon.problems import PROFILES  # noqa: E402
from recon.results import environment, volume_name  # noqa: E402
from recon.specs import MethodSpec, NoiseSpec, OutputSpec, PriorSpec, RunSpec  # noqa: E402
from utils.device import default_device, synchronize  # noqa: E402
from utils.io import read_volume, write_text, write_verified, write_volume  # noqa: E402
from utils.metrics import volume_metrics  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
DEFAULT_RESULTS = RESULTS / "iscs_eval.jsonl"
DEFAULT_TUNING = RESULTS / "iscs_tuning.json"
DEFAULT_CACHE = ROOT / "data" / "cache" / "iscs_eval"
# The entry scripts' default priors.
CHECKPOINTS = {"ct": PROFILES["SVCT"].checkpoint, "mri": PROFILES["ZSR"].checkpoint}
DEFAULT_TEMPLATE = ROOT / "data" / "cache" / "mni152_t1.pt"

# The validation volume lies in the training range but past the few thousand seeds training drew.
VALIDATION_SEED = mri.check_train_seed(ct_phantom.check_train_seed(ct_phantom.TRAIN_SEEDS[-1]))
W_DZ_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
TV_WEIGHT_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
# ADMM-TV keeps algorithms.admm_tv's default ratio of penalty to weight (rho = 1e-2 for lam = 1e-3).
ADMM_RHO_PER_WEIGHT = 10.0
KNOB_NOISES = ("iid", "ar1-1", "ar1-4", "ar1-16", "ar1-64", "ar1-256", "iscs", "shared")
NOISE_LABELS = {"none": "", "iid": "", "iscs": "+ISCS", "shared": "+shared"}
# Settings that the tuned weights depend on; the tuning file must match them.
TUNING_KEYS = ("size", "depth", "nfe", "num_cg", "w_tik", "renoise", "admm_iter", "checkpoints")
# Settings that may differ between the records of one results file: each record names its prior
# (and its key holds the prior's hash), the precision it ran at and whether it was compiled.
PER_RECORD_SETTINGS = ("checkpoints", "precision", "compile")


@dataclass(frozen=True)
class Problem:
    """One reconstruction problem.

    Args:
        task: a task of ``recon.problems.PROBLEMS`` ("SVCT", "LACT", "ZSR").
        parameter: the task's named parameter: views (SVCT), arc in degrees (LACT) or averaging
            factor (ZSR).
        source: where its volumes come from, a key of ``SOURCES``.
        prior: the prior that reconstructs it, a key of ``CHECKPOINTS``.
        classical: its closed-form baseline, a method its problem class names.
        options: further fields of its problem class.
        tuned_as: the problem whose tuned weights it uses (None: its own).
    """

    task: str
    parameter: int
    source: str
    prior: str
    classical: str
    options: Mapping[str, Any] = field(default_factory=dict)
    tuned_as: Optional[str] = None


# The CT baselines are torch's on every device, so that FDK is the same computation everywhere.
TORCH_BASELINES = {"baseline_backend": "torch"}
PROBLEMS: Dict[str, Problem] = {
    "SVCT-30": Problem("SVCT", 30, "phantom", "ct", "FDK", TORCH_BASELINES),
    "LACT-100": Problem("LACT", 100, "phantom", "ct", "FDK", TORCH_BASELINES),
    "ZSR-4": Problem("ZSR", 4, "mri", "mri", "A_dagger"),
    "ZSR-5": Problem("ZSR", 5, "mri", "mri", "A_dagger"),
    "SVCT-30:shepp-logan": Problem("SVCT", 30, "shepp-logan", "ct", "FDK", TORCH_BASELINES, "SVCT-30"),
    "SVCT-30:torso": Problem("SVCT", 30, "torso", "ct", "FDK", TORCH_BASELINES, "SVCT-30"),
    "LACT-100:torso": Problem("LACT", 100, "torso", "ct", "FDK", TORCH_BASELINES, "LACT-100"),
    "ZSR-4:brain-mr": Problem("ZSR", 4, "brain-mr", "mri", "A_dagger", {}, "ZSR-4"),
}
EXTERNAL_PROBLEMS = tuple(
    name for name, problem in PROBLEMS.items() if problem.source in external_volumes.FAMILIES
)


def tuned_problem(problem: str) -> str:
    """The problem whose tuned weights ``problem`` uses."""
    return PROBLEMS[problem].tuned_as or problem


@dataclass(frozen=True)
class Case:
    """One reconstruction: a method with its sampler noise and seed on one volume of one problem.

    ``volume`` is the seed of the generated volume; ``noise`` is "none" for methods without a
    sampler, and ``seed`` seeds the sampler's generator. ``prior`` is the tag of the prior a sampler
    method runs with (:func:`prior_tag`), "" for methods without one.
    """

    problem: str
    volume: int
    method: str
    noise: str = "none"
    seed: int = 0
    prior: str = ""

    @property
    def key(self) -> str:
        """The case's identity in the results file (records made before priors were tagged have no tag)."""
        source = PROBLEMS[self.problem].source
        key = f"{self.problem}/{source}-{self.volume}/{self.method}/{self.noise}/seed{self.seed}"
        return f"{key}/{self.prior}" if self.prior else key


def checkpoint_hash(path: Path) -> str:
    """The first 12 hex digits of the sha256 of a checkpoint file."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def prior_tag(path: Path, digest: str) -> str:
    """The tag of a checkpoint in case keys: its file stem and hash, e.g. "ct_dr_128-0123456789ab"."""
    return f"{Path(path).stem}-{digest}"


def label(method: str, noise: str) -> str:
    """Display name of a method with its noise: "DDS" (iid), "DDS+ISCS", "DDS+shared", "DDS+AR1(16)"."""
    if noise in NOISE_LABELS:
        return method + NOISE_LABELS[noise]
    name, _, value = noise.partition("-")
    return f"{method}+{name.upper()}({value})"


def _knobs_of(source: str) -> List[str]:
    return [knob for knob in NOISE_KNOBS if source in sources_taking(knob)]


def noise_spec(noise: str) -> NoiseSpec:
    """The noise source of a case's noise label: a name of ``algorithms.NOISE_SOURCES``, or
    ``name-value`` for the one knob of a source that has one (``iscs-<span>``, ``ar1-<corr_length>``)."""
    name, _, value = noise.partition("-")
    if not value:
        return NoiseSpec(name)
    tunable = [source for source in NOISE_SOURCES if len(_knobs_of(source)) == 1]
    if name not in tunable:
        raise ValueError(f"noise spec {noise!r}: only {', '.join(tunable)} take a value after '-'")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"noise spec {noise!r}: the value after '-' must be a number") from None
    return NoiseSpec(name, {_knobs_of(name)[0]: number})


def make_noise_source(noise: str):
    """The noise source of a case's noise label (see :func:`noise_spec`)."""
    return factory.make_noise_source(noise_spec(noise))


# ---------------------------------------------------------------- volumes


def _phantom_volume(evaluation: "Evaluation", seed: int):
    shape = (evaluation.settings["depth"], evaluation.settings["size"], evaluation.settings["size"])
    hu = ct_phantom.generate_phantom(seed, shape, device=evaluation.device)
    return hu.cpu().numpy(), ct_phantom.phantom_meta(shape)


def _brain_volume(evaluation: "Evaluation", seed: int):
    augmenter = evaluation.brain_augmenter()
    return augmenter(seed).cpu().numpy(), augmenter.output_meta()


def external_shape(family: str, settings: Mapping[str, int]) -> Tuple[int, int, int]:
    """The grid of an external family's volumes: its default shape scaled by the settings' size
    (planes) and, for CT, by the depth (slices); 128 is the scale of the default shapes."""
    spec = external_volumes.FAMILIES[family]
    depth_scale = (settings["depth"] if spec.modality == "ct" else settings["size"]) / 128
    scales = (depth_scale, settings["size"] / 128, settings["size"] / 128)
    return tuple(max(2, round(n * scale)) for n, scale in zip(spec.shape, scales))


def _external(family: str) -> Callable:
    def volume(evaluation: "Evaluation", seed: int):
        shape = external_shape(family, evaluation.settings)
        array, meta = external_volumes.external_volume(
            family, seed, shape, device=evaluation.device, template=evaluation.template
        )
        return array.cpu().numpy(), meta

    return volume


SOURCES: Dict[str, Callable] = {
    "phantom": _phantom_volume,
    "mri": _brain_volume,
    **{family: _external(family) for family in external_volumes.FAMILIES},
}
EVAL_SEEDS = {
    "phantom": ct_phantom.EVAL_SEEDS,
    "mri": mri.EVAL_SEEDS,
    **{family: external_volumes.EVAL_SEEDS for family in external_volumes.FAMILIES},
}
# Methods of the queue that run the sampler, and the spec's method of those named otherwise.
SAMPLER_METHODS = ("DDS", "DDS+TV", "DDNM")
SPEC_METHODS = {"DDS+TV": "DDS"}
# Methods with a tuned weight -> (name of the weight in the tuning file, its grid).
TUNED = {"DDS+TV": ("w_dz", W_DZ_GRID), "ADMM-TV": ("tv_weight", TV_WEIGHT_GRID)}
METHODS = (*dict.fromkeys(problem.classical for problem in PROBLEMS.values()), "ADMM-TV", *SAMPLER_METHODS)


# ---------------------------------------------------------------- the queue


PRIORITIES = ("evidence", "paper")
NEW_PRIOR_EXTERNAL = ("SVCT-30:shepp-logan", "SVCT-30:torso")


def case_queue(
    volumes: Mapping[str, Sequence[int]],
    seeds: Sequence[int],
    tags: Optional[Mapping[str, str]] = None,
    priority: str = "evidence",
) -> List[Case]:
    """Every case of the experiment on the problems of ``volumes``, most important first, without repeats.

    Args:
        volumes: problem name -> its volumes' seeds.
        seeds: the sampler seeds of every iid/ISCS pair.
        tags: prior name ("ct", "mri") -> its tag (:func:`prior_tag`) in the sampler cases' keys.
        priority: "paper": SVCT-30 DDS, LACT-100 DDNM and ZSR-4 DDS iid/ISCS pairs; the classical
            baselines; DDS+TV and DDS+shared; the remaining iid/ISCS pairs; the correlation-knob
            curve (DDS SVCT-30 on the first phantom). "evidence": first LACT-100 DDNM pairs,
            DDS pairs of SVCT-30 on the external families, ZSR-5 DDS pairs, SVCT-30 DDS pairs, the
            classical baselines (and ADMM-TV) of the external problems; then the "paper" order.

    Pairs run seed by seed, so a queue cut short still covers every volume with the first seeds.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r}: accepted {', '.join(PRIORITIES)}")
    tags = tags or {}
    problems = [name for name in PROBLEMS if name in volumes]

    def case(problem: str, volume: int, method: str, noise: str = "none", seed: int = 0) -> Case:
        tag = tags.get(PROBLEMS[problem].prior, "") if method in SAMPLER_METHODS else ""
        return Case(problem, volume, method, noise, seed, tag)

    def pairs(names: Sequence[str], method: str) -> List[Case]:
        return [
            case(problem, volume, method, noise, seed)
            for seed in seeds
            for problem in names
            if problem in volumes
            for volume in volumes[problem]
            for noise in ("iid", "iscs")
        ]

    def classical(names: Sequence[str]) -> List[Case]:
        return [
            case(name, volume, method)
            for name in names
            if name in volumes
            for volume in volumes[name]
            for method in (PROBLEMS[name].classical, "ADMM-TV")
        ]

    queue = pairs(["SVCT-30"], "DDS") + pairs(["LACT-100"], "DDNM") + pairs(["ZSR-4"], "DDS")
    queue += classical(problems)
    for name in problems:
        queue += [case(name, v, "DDS+TV", "iid", seeds[0]) for v in volumes[name]]
        queue += [case(name, v, "DDS", "shared", seeds[0]) for v in volumes[name]]
    for name in problems:
        queue += pairs([name], "DDS") + pairs([name], "DDNM")
    if "SVCT-30" in volumes:
        first = volumes["SVCT-30"][0]
        queue += [case("SVCT-30", first, "DDS", noise, seed) for seed in seeds for noise in KNOB_NOISES]
    if priority == "evidence":
        head = pairs(["LACT-100"], "DDNM") + pairs(NEW_PRIOR_EXTERNAL, "DDS") + pairs(["ZSR-5"], "DDS")
        queue = head + pairs(["SVCT-30"], "DDS") + classical(EXTERNAL_PROBLEMS) + queue
    return list(dict.fromkeys(queue))


def select(
    queue: Sequence[Case], problems: Optional[Sequence[str]], methods: Optional[Sequence[str]]
) -> List[Case]:
    """The cases of ``queue`` on ``problems`` with ``methods`` (None: all), in queue order."""
    return [
        case
        for case in queue
        if (problems is None or case.problem in problems) and (methods is None or case.method in methods)
    ]


def figure_cases(
    phantoms: Sequence[int], seeds: Sequence[int], tags: Optional[Mapping[str, str]] = None
) -> Tuple[Case, ...]:
    """The cases whose volumes the slice figure shows."""
    tag = (tags or {}).get("ct", "")
    return tuple(
        Case(problem, phantoms[0], method, noise, seeds[0], tag)
        for problem, method in (("SVCT-30", "DDS"), ("LACT-100", "DDNM"))
        for noise in ("iid", "iscs")
    )


# ---------------------------------------------------------------- running cases


def _volume_file(folder: Path, name: str) -> Path:
    """The volume ``name`` of a results folder (NIfTI, or the tensor file written without SimpleITK)."""
    (path,) = (path for path in folder.iterdir() if volume_name(path) == name)
    return path


def _slice_gap(recon: torch.Tensor, gt: torch.Tensor) -> Optional[float]:
    """The inter-slice gap along the prior's slice axis: mean |D (recon - GT)| over the slice stacks."""
    gap = float((recon - gt).diff(dim=0).abs().mean())
    return gap if math.isfinite(gap) else None


@dataclass
class Outcome:
    """A finished case: its reconstruction and ground truth (volumes [D, H, W]) and its record."""

    recon: torch.Tensor
    gt: torch.Tensor
    record: dict


class Evaluation:
    """Runs cases with the priors, volumes and operators built once and kept.

    Args:
        settings: the run settings (see :func:`settings_of`).
        device: where everything runs.
        checkpoints: prior name -> checkpoint file.
        template: the MNI152 template file for the brain volumes.
        cache: the folder of the generated volumes' files.
        tuning: the tuned weights (``{"w_dz": {problem: w}, "tv_weight": {problem: w}}``); None or
            empty when there are none yet.
    """

    def __init__(
        self,
        settings: dict,
        device: torch.device,
        checkpoints: Dict[str, Path],
        template: Path,
        cache: Path = DEFAULT_CACHE,
        tuning: Optional[dict] = None,
    ):
        self.settings = settings
        self.device = device
        self.checkpoints = checkpoints
        self.template = template
        self.cache = cache
        self.tuning = tuning or {}
        self._nets: Dict[str, torch.nn.Module] = {}
        self._denoisers: Dict[str, object] = {}
        self._measured: Dict[Tuple[str, int], Measured] = {}
        self._augmenter = None
        self.hashes = {name: checkpoint_hash(path) for name, path in checkpoints.items()}
        # The user path's worker threads share the volume cache and the loaded priors.
        self._lock = threading.Lock()

    @property
    def tags(self) -> Dict[str, str]:
        """Prior name -> its tag in the sampler cases' keys."""
        return {name: prior_tag(path, self.hashes[name]) for name, path in self.checkpoints.items()}

    def prior_spec(self, name: str) -> PriorSpec:
        """The spec of prior ``name``: its checkpoint at the settings' precision (config embedded);
        "auto" is resolved as the entry scripts resolve it (bf16 on CUDA, fp32 on the CPU)."""
        precision = self.settings["precision"]
        if precision == "auto":
            precision = default_precision(self.device)
        return PriorSpec(checkpoint=self.checkpoints[name], precision=precision, compile=self.settings.get("compile"))

    def net(self, name: str) -> torch.nn.Module:
        """The score network of prior ``name`` (loaded on first use)."""
        if name not in self._nets:
            self._nets[name] = factory.load_prior(self.prior_spec(name), self.device)
        return self._nets[name]

    def denoiser(self, name: str):
        """The denoiser of prior ``name`` (built on first use)."""
        if name not in self._denoisers:
            self._denoisers[name] = factory.make_denoiser(self.prior_spec(name), self.net(name))
        return self._denoisers[name]

    def brain_augmenter(self) -> mri.MRIAugmenter:
        """The brain volume generator on the template, for cubes of the settings' size."""
        if self._augmenter is None:
            template, meta = mri.load_template(self.template, self.device)
            size = self.settings["size"]
            spacing = mri.OUTPUT_SPACING * mri.OUTPUT_SHAPE[0] / size
            self._augmenter = mri.MRIAugmenter(template, meta, (size, size, size), spacing)
        return self._augmenter

    def volume_file(self, source: str, seed: int) -> Path:
        """The file of volume ``seed`` of ``source``, generated and written on first use.

        The name holds what the volume depends on: the grid, the device type it is generated on
        (generation is deterministic per device) and, for brains, the template.
        """
        size, depth = self.settings["size"], self.settings["depth"]
        grid = f"{depth}x{size}x{size}" if source == "phantom" else f"{size}x{size}x{size}"
        if source in external_volumes.FAMILIES:
            grid = "x".join(map(str, external_shape(source, self.settings)))
        uses_template = source == "mri" or source == "brain-mr"
        template = f"_{Path(self.template).stem}" if uses_template else ""
        suffix = ".nii.gz" if importlib.util.find_spec("SimpleITK") is not None else ".pt"
        path = self.cache / f"{source}-{seed}_{grid}_{self.device.type}{template}{suffix}"
        if not path.is_file():
            array, meta = SOURCES[source](self, seed)
            write_volume(path, array, meta)
        return path

    def spec(self, case: Case, weight: Optional[float] = None) -> RunSpec:
        """The run specification of ``case`` with the method's tuned ``weight`` (None: the tuning's)."""
        weight = self.weight(case.method, case.problem) if weight is None else weight
        problem = PROBLEMS[case.problem]
        problem_class = PROBLEM_CLASSES[problem.task]
        with self._lock:
            data = self.volume_file(problem.source, case.volume)
            recon_size = int(self.net(problem.prior).config.data.image_size)
        problem_spec = problem_class(
            task=problem.task,
            data=data,
            recon_size=recon_size,
            **{problem_class.PARAMETERS[problem.task]: problem.parameter},
            **problem.options,
        )
        return RunSpec(
            problem=problem_spec,
            prior=self.prior_spec(problem.prior),
            method=self.method_spec(case.method, weight),
            noise=NoiseSpec() if case.noise == "none" else noise_spec(case.noise),
            device=self.device.type,
            gpu=self.device.index or 0,
            seed=case.seed,
        )

    def method_spec(self, method: str, weight: Optional[float]) -> MethodSpec:
        """The method of the queue's ``method`` with its tuned ``weight``, in the settings."""
        settings = self.settings
        if method == "ADMM-TV":
            cg_iters = MethodSpec.admm_cg_iters
            return MethodSpec(
                name=method,
                tv_weight=weight,
                admm_rho=ADMM_RHO_PER_WEIGHT * weight,
                admm_iter=settings["admm_iter"],
                dc_cg_iters=cg_iters,
                admm_cg_iters=cg_iters,
            )
        if method in SAMPLER_METHODS:
            return MethodSpec(
                name=SPEC_METHODS.get(method, method),
                nfe=settings["nfe"],
                dc_cg_iters=settings["num_cg"],
                admm_cg_iters=settings["num_cg"],
                w_tik=settings["w_tik"],
                w_dz=0.0 if weight is None else weight,
                renoise=settings["renoise"],
            )
        return MethodSpec(name=method)

    def measured(self, spec: RunSpec) -> Measured:
        """Ground truth, operator and measurement of ``spec``'s problem (built once per volume)."""
        key = (spec.problem.task, spec.problem.data)
        if key not in self._measured:
            problem = spec.problem
            array, meta = read_volume(problem.data)
            prepared = problem.prepare(array, meta, self.device)
            gt = prepared.gt
            op = problem.operator(gt, prepared.source_shape)
            y = problem.measure(op, gt, torch.Generator(self.device).manual_seed(0))
            self._measured[key] = Measured(problem, gt, op, y)
        return self._measured[key]

    def has_weight(self, method: str, problem: str) -> bool:
        """Whether ``method`` on ``problem`` can run: it has no tuned weight, or the tuning gives it."""
        return method not in TUNED or tuned_problem(problem) in self.tuning.get(TUNED[method][0], {})

    def weight(self, method: str, problem: str) -> Optional[float]:
        """The tuned weight of ``method`` on ``problem`` (None for methods without one)."""
        if method not in TUNED:
            return None
        if not self.has_weight(method, problem):
            name, base = TUNED[method][0], tuned_problem(problem)
            raise ValueError(f"the tuning file has no {name} for {base}; run --tune --problems {base}")
        return float(self.tuning[TUNED[method][0]][tuned_problem(problem)])

    def _record(
        self, case: Case, weight: Optional[float], metrics: dict, seconds: float, runner: str, ran: RunSpec
    ) -> dict:
        """The record of a finished case; ``ran`` is the run's resolved spec (its precision and pinv)."""
        prior = PROBLEMS[case.problem].prior
        sampling = case.method in SAMPLER_METHODS
        return {
            "key": case.key,
            **asdict(case),
            "label": label(case.method, case.noise),
            "weight": weight,
            "slice_axis": PROBLEM_CLASSES[PROBLEMS[case.problem].task].slice_axis,
            "metrics": metrics,
            "seconds": seconds,
            "runner": runner,
            "prior": prior if sampling else None,
            "checkpoint": self.checkpoints[prior].name if sampling else None,
            "checkpoint_sha256": self.hashes[prior] if sampling else None,
            "precision": ran.prior.precision if sampling else None,
            "compile": bool(ran.prior.compile) if sampling else None,
            "pinv": ran.method.pinv,
        }

    def run(self, case: Case, weight: Optional[float] = None) -> Outcome:
        """Reconstruct ``case`` in this process (the harness) and measure it against its ground truth.

        Args:
            case: the case.
            weight: the method's tuned weight; None takes the tuning's.

        Returns:
            The outcome, whose record holds the case, its label, the weight used, every metric of
            ``utils.metrics.volume_metrics`` plus ``abs_delta_slices`` (the inter-slice gap along
            the prior's slice axis), ``seconds`` of the reconstruction (for a baseline method: of
            the problem's baselines, computed once per volume) and ``runner`` ("harness").
        """
        weight = self.weight(case.method, case.problem) if weight is None else weight
        prior = PROBLEMS[case.problem].prior
        spec = factory.resolve(self.spec(case, weight), self.net(prior).config)
        measured = self.measured(spec)
        sampling = spec.method.name in factory.PRIOR_METHODS
        synchronize(self.device)
        start = time.perf_counter()
        recon = factory.reconstruct(
            spec,
            measured,
            generator=torch.Generator(self.device).manual_seed(case.seed),
            denoiser=self.denoiser(prior) if sampling else None,
            sampler=factory.sampler_config(spec) if sampling else None,
        )
        synchronize(self.device)
        seconds = time.perf_counter() - start
        problem = spec.problem
        metrics = volume_metrics(problem.to_volume(recon), problem.to_volume(measured.gt))
        metrics["abs_delta_slices"] = _slice_gap(recon, measured.gt)
        record = self._record(case, weight, metrics, seconds, "harness", spec)
        return Outcome(problem.to_volume(recon), problem.to_volume(measured.gt), record)

    def run_script(self, case: Case, gpu: Optional[int] = None) -> Outcome:
        """Reconstruct ``case`` with its entry script in a subprocess (the user path).

        The script runs ``recon.cli.to_argv`` of the case's spec (on GPU ``gpu`` when given) into a
        temporary results folder, with this process's CPU thread count (so that CPU reductions
        round alike); the record is :meth:`run`'s, with the metrics of the run's ``metrics.json``,
        the precision and pseudo-inverse its ``args.yaml`` says it used, ``abs_delta_slices`` from
        its ``recon`` and ``GT`` volumes, the script's wall ``seconds`` and ``runner`` "entry
        script". Precision "auto" is left to the script's default, so no ``--precision`` is passed.
        """
        import yaml

        weight = self.weight(case.method, case.problem)
        spec = self.spec(case, weight)
        spec = spec if gpu is None else replace(spec, gpu=gpu)
        script = ROOT / PROFILES[spec.problem.task].prog
        with tempfile.TemporaryDirectory(prefix="iscs_eval_") as folder:
            spec = replace(spec, output=OutputSpec(results_dir=Path(folder)))
            argv = to_argv(spec)
            if self.settings["precision"] == "auto":
                at = argv.index("--precision")
                del argv[at : at + 2]
            command = [sys.executable, str(script), *argv]
            env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
            start = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise RuntimeError(f"{case.key}: {script.name} exited with {done.returncode}: {reason}")
            (run,) = (path.parent for path in Path(folder).rglob("metrics.json"))
            report = json.loads((run / "metrics.json").read_text())
            used = yaml.safe_load((run / "args.yaml").read_text())["options"]
            metrics = report["metrics"]["recon"]
            recon, gt = (
                torch.from_numpy(read_volume(_volume_file(run, name))[0]) for name in ("recon", "GT")
            )
        # The volumes are written in the input's intensities, a linear map of the normalised space
        # the metrics use; GT's range in both gives its scale, so the gap is back in that space.
        low, scale = float(gt.min()), float(gt.max() - gt.min()) / report["data_range"]
        recon, gt = (recon - low) / scale, (gt - low) / scale
        problem = spec.problem
        metrics["abs_delta_slices"] = _slice_gap(problem.to_stack(recon), problem.to_stack(gt))
        ran = replace(
            spec,
            prior=replace(spec.prior, precision=used["precision"], compile=used["compile"]),
            method=replace(spec.method, pinv=used["pinv"]),
        )
        return Outcome(recon, gt, self._record(case, weight, metrics, seconds, "entry script", ran))


# ---------------------------------------------------------------- files


def _mirror(path: Path) -> None:
    """Copy ``path`` to $OUT (when set), so that a device call hands back what it wrote so far."""
    out = os.environ.get("OUT")
    if out:
        write_verified(Path(out) / path.name, lambda temporary: shutil.copyfile(path, temporary))


def read_records(path: Path) -> List[dict]:
    """The records of a results file; lines cut off by a killed run are skipped with a warning."""
    if not path.is_file():
        return []
    records, broken = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            broken.append(number)
    if broken:
        print(
            f"warning: {path}: lines {broken} are cut off (interrupted writes) and ignored", file=sys.stderr
        )
    return records


def append_record(path: Path, record: dict) -> None:
    """Append one record as a JSON line, flushed to disk, and mirror the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else ""
    with path.open("a") as handle:
        # A line cut off by a killed run is ended first, so that the new record stays on its own line.
        if text and not text.endswith("\n"):
            handle.write("\n")
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    _mirror(path)


def save_volume(folder: Path, name: str, volume: torch.Tensor, key: str) -> Path:
    """Save ``volume`` [D, H, W] as fp16 in ``folder/name.pt`` (``{"volume", "key"}``)."""
    path = folder / f"{name}.pt"
    atomic_save({"volume": volume.detach().to("cpu", torch.float16), "key": key}, path)
    return path


def volume_file_name(key: str) -> str:
    """File name (without suffix) of a saved volume: the key with "/" as "__"."""
    return key.replace("/", "__")


# ---------------------------------------------------------------- tuning


def tune(evaluation: Evaluation, problems: Sequence[str]) -> dict:
    """Pick w_dz (DDS+TV) and the TV weight (ADMM-TV) per problem by volume PSNR on the validation volume.

    Each weight of ``TUNED``'s grid reconstructs the validation volume once (DDS+TV with iid noise
    and sampler seed 0); the weight with the highest volume PSNR is kept.

    Returns:
        The tuning file's content: the chosen weights, every score, the grids and the settings.
    """
    chosen: Dict[str, Dict[str, float]] = {name: {} for name, _ in TUNED.values()}
    scores: Dict[str, Dict[str, Dict[str, float]]] = {}
    for problem in problems:
        for method, (name, grid) in TUNED.items():
            noise = "iid" if method in SAMPLER_METHODS else "none"
            case = Case(problem, VALIDATION_SEED, method, noise, 0)
            psnr = {str(w): evaluation.run(case, weight=w).record["metrics"]["psnr"] for w in grid}
            best = max(grid, key=lambda w: psnr[str(w)] if psnr[str(w)] is not None else float("-inf"))
            chosen[name][problem] = best
            scores.setdefault(problem, {})[method] = psnr
            cells = "  ".join(f"{w:g}: {psnr[str(w)]:.2f}" for w in grid)
            print(f"tune {problem:9s} {method:8s} {name}  {cells}  -> {best:g}", flush=True)
    return {
        **chosen,
        "scores_volume_psnr": scores,
        "grids": {name: list(grid) for name, grid in TUNED.values()},
        "validation_volumes": {source: f"{source}-{VALIDATION_SEED}" for source in SOURCES},
        "admm_rho_per_weight": ADMM_RHO_PER_WEIGHT,
        "settings": {key: evaluation.settings[key] for key in TUNING_KEYS},
    }


def tuning_settings(settings: dict) -> dict:
    """The part of the settings that the tuned weights depend on."""
    return {key: settings[key] for key in TUNING_KEYS}


def load_tuning(path: Path, settings: dict) -> dict:
    """The tuning file's content, checked against the settings it was made with; {} when there is none."""
    if not path.is_file():
        return {}
    tuning = json.loads(path.read_text())
    if tuning.get("settings") != tuning_settings(settings):
        raise ValueError(
            f"tuning file {path} was made with settings {tuning.get('settings')}, not "
            f"{tuning_settings(settings)}; run --tune with these settings (and another --tuning file "
            "to keep the old one)"
        )
    return tuning


# ---------------------------------------------------------------- main


@dataclass(frozen=True)
class Options:
    """The experiment's command line (see :func:`build_parser`), parsed once by :func:`options_from_args`.

    ``settings`` are shared by every record of one results file (a rerun must use the same ones);
    the other fields name the files, the queue, the budget and how cases run.
    """

    settings: dict
    device: torch.device
    checkpoints: Dict[str, Path]
    template: Path
    cache: Path
    problems: Tuple[str, ...]
    methods: Tuple[str, ...]
    priority: str
    phantoms: int
    brains: int
    external: int
    seeds: int
    results: Path
    tuning: Path
    tune: bool
    only: Optional[Tuple[str, ...]]
    list_queue: bool
    max_minutes: Optional[float]
    max_cases: Optional[int]
    save_volumes: Optional[Path]
    git_commit: Optional[str]
    user_path: bool
    workers: int


def options_from_args(args: argparse.Namespace) -> Options:
    """The options of a parsed command line; running cases at once needs the user path."""
    if args.workers is not None and args.workers > 1 and args.harness:
        raise ValueError(
            f"--workers {args.workers}: the harness runs one case at a time; accepted with --harness: 1"
        )
    device = torch.device(args.device)
    cuda_workers = min(8, max(1, (os.cpu_count() or 2) // 2))
    workers = args.workers or (1 if args.harness or device.type != "cuda" else cuda_workers)
    settings = {
        "size": args.size,
        "depth": args.depth or args.size,
        "nfe": args.nfe,
        "num_cg": args.num_cg,
        "w_tik": args.w_tik,
        "renoise": args.renoise,
        "admm_iter": args.admm_iter,
        "precision": args.precision,
        "compile": args.compile,
        # File names, not paths, so that a run resumes on a machine with another checkout path.
        "checkpoints": {"ct": args.ct_checkpoint.name, "mri": args.mri_checkpoint.name},
    }
    return Options(
        settings=settings,
        device=device,
        # Absolute, because the entry scripts run from the repository root.
        checkpoints={"ct": args.ct_checkpoint.resolve(), "mri": args.mri_checkpoint.resolve()},
        template=args.mri_template,
        cache=args.cache.resolve(),
        problems=tuple(args.problems),
        methods=tuple(args.methods),
        priority=args.priority,
        phantoms=args.phantoms,
        brains=args.brains,
        external=args.external,
        seeds=args.seeds,
        results=args.results,
        tuning=args.tuning,
        tune=args.tune,
        only=None if args.only is None else tuple(args.only),
        list_queue=args.list,
        max_minutes=args.max_minutes,
        max_cases=args.max_cases,
        save_volumes=args.save_volumes,
        git_commit=args.git_commit,
        user_path=not args.harness,
        workers=workers,
    )


def shared_settings(settings: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The settings every record of one results file must share (all but ``PER_RECORD_SETTINGS``)."""
    return {key: value for key, value in (settings or {}).items() if key not in PER_RECORD_SETTINGS}


def _check_records(records: List[dict], evaluation: Evaluation, path: Path) -> None:
    """Every record must share the settings, and a tuned method's record the tuned weight (where the
    tuning file gives one)."""
    expected = shared_settings(evaluation.settings)
    for record in records:
        if shared_settings(record.get("settings")) != expected:
            raise ValueError(
                f"{path} holds case {record.get('key')} made with settings {record.get('settings')}, "
                f"not {evaluation.settings}; use another --results file for other settings"
            )
        known = record["problem"] in PROBLEMS
        if not known or not evaluation.has_weight(record["method"], record["problem"]):
            continue
        weight = evaluation.weight(record["method"], record["problem"])
        if record["weight"] != weight:
            raise ValueError(
                f"{path} holds case {record['key']} made with weight {record['weight']}, but the tuning "
                f"file now gives {weight}; use another --results file"
            )


def build_parser() -> argparse.ArgumentParser:
    """The command line (every default shown in ``--help``)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default=default_device(), help="cuda, cuda:<n> or cpu")
    parser.add_argument(
        "--precision",
        choices=(*PRECISIONS, "auto"),
        default="auto",
        help="network precision; auto: the entry scripts' default (bf16 on CUDA, fp32 on the CPU)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the network compiled (--compile) or eager (--no-compile); unset: the entry scripts' rule",
    )
    parser.add_argument("--size", type=positive_int, default=128, help="volume side in voxels (cubes)")
    parser.add_argument("--depth", type=positive_int, default=None, help="CT slices (default: --size)")
    parser.add_argument("--nfe", type=positive_int, default=50, help="sampler noise levels")
    parser.add_argument(
        "--num-cg", type=positive_int, default=5, help="CG iterations of DDS / DDNM's A_dagger"
    )
    parser.add_argument("--w-tik", type=non_negative_float, default=0.0, help="DDS proximal weight")
    parser.add_argument(
        "--renoise", choices=tuple(algorithms.RENOISE), default="DDS", help="re-noising preset"
    )
    parser.add_argument("--admm-iter", type=positive_int, default=50, help="ADMM-TV iterations")
    parser.add_argument(
        "--problems",
        type=_names_of("problem", PROBLEMS),
        default=tuple(PROBLEMS),
        help="comma-separated problems to run or tune",
    )
    parser.add_argument(
        "--methods",
        type=_names_of("method", METHODS),
        default=METHODS,
        help="comma-separated methods to run",
    )
    parser.add_argument(
        "--priority",
        choices=PRIORITIES,
        default="evidence",
        help="queue order (see case_queue): evidence (new priors and external volumes first) or paper",
    )
    parser.add_argument("--phantoms", type=positive_int, default=3, help="evaluation phantoms (CT)")
    parser.add_argument("--brains", type=positive_int, default=2, help="evaluation brains (ZSR)")
    parser.add_argument(
        "--external", type=positive_int, default=2, help="volumes per external family (external problems)"
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="sampler seeds of every iid/ISCS pair")
    parser.add_argument("--ct-checkpoint", type=Path, default=CHECKPOINTS["ct"], help="CT prior")
    parser.add_argument("--mri-checkpoint", type=Path, default=CHECKPOINTS["mri"], help="MRI prior")
    parser.add_argument("--mri-template", type=Path, default=DEFAULT_TEMPLATE, help="MNI152 template file")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder of the generated volumes")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSONL results file")
    parser.add_argument("--tuning", type=Path, default=DEFAULT_TUNING, help="tuning file (JSON)")
    parser.add_argument(
        "--tune", action="store_true", help="tune the weights on the validation volume and stop"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="PATTERN", help="run only keys matching a glob"
    )
    parser.add_argument("--list", action="store_true", help="print the queue (keys, done or not) and stop")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop between cases before this")
    parser.add_argument("--max-cases", type=positive_int, default=None, help="stop after this many new cases")
    parser.add_argument(
        "--harness",
        action="store_true",
        help="run the cases in this process instead of as subprocesses of the entry scripts",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="entry-script subprocesses at once, on CUDA spread over the visible GPUs "
        "(default: 1 on the CPU, min(8, CPU cores / 2) on CUDA; 1 with --harness)",
    )
    parser.add_argument(
        "--save-volumes",
        type=Path,
        default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
        help="folder for the figure cases' volumes (default: $OUT when set, else none saved)",
    )
    parser.add_argument("--git-commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    return parser


def _names_of(what: str, accepted: Sequence[str]) -> Callable[[str], Tuple[str, ...]]:
    """An argparse type: a comma-separated list of names of ``accepted``."""

    def parse(text: str) -> Tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in accepted]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{what} {', '.join(unknown) or repr(text)} unknown; "
                f"accepted: a comma-separated list of {', '.join(accepted)}"
            )
        return names

    return parse


class Budget:
    """Decides, between cases, whether the next one still fits the wall-clock budget."""

    def __init__(self, max_minutes: Optional[float]):
        self.start = time.perf_counter()
        self.limit = None if max_minutes is None else 60.0 * max_minutes
        self.seconds: Dict[bool, List[float]] = {True: [], False: []}

    def expected(self, case: Case) -> float:
        """Typical wall seconds of a case of this kind so far (the first, with warm-up, left out)."""
        times = self.seconds[case.method in SAMPLER_METHODS]
        return statistics.median(times[1:] or times) if times else 0.0

    def fits(self, case: Case) -> bool:
        """Whether ``case`` is expected to end within the budget."""
        return self.limit is None or self.elapsed() + self.expected(case) <= self.limit

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, case: Case, seconds: float) -> None:
        self.seconds[case.method in SAMPLER_METHODS].append(seconds)

    def remaining_minutes(self, cases: Sequence[Case]) -> float:
        """Expected minutes for ``cases`` at the pace so far."""
        return sum(self.expected(case) for case in cases) / 60.0


def _number(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _summary(record: dict) -> str:
    m = record["metrics"]
    psnr = "/".join(_number(m[f"psnr_{plane}"], 2) for plane in ("axial", "coronal", "sagittal"))
    return f"PSNR a/c/s {psnr}  |dz| {_number(m['abs_delta'], 4)}"


def _gpus(device: torch.device, workers: int) -> List[Optional[int]]:
    """The GPU of each of ``workers`` subprocesses: the visible GPUs in turn from ``device``'s (CPU: None)."""
    if device.type != "cuda":
        return [None] * workers
    count = torch.cuda.device_count()
    return [((device.index or 0) + worker) % count for worker in range(workers)]


def _run_now(run: Callable[[Case], Outcome], case: Case) -> concurrent.futures.Future:
    """``run(case)`` in this thread, as a finished future (the harness runs one case at a time)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(run(case))
    except Exception as err:  # noqa: BLE001 -- the caller raises it from future.result()
        future.set_exception(err)
    return future


def evaluate(evaluation: Evaluation, options: Options, queue: List[Case], env: dict) -> int:
    """Run the queue's cases that the results file lacks, within the budget; returns how many ran.

    The harness runs one case at a time in this process; the user path runs ``options.workers``
    entry-script subprocesses at once and records each case as it finishes.
    """
    records = read_records(options.results)
    _check_records(records, evaluation, options.results)
    done = {record["key"] for record in records}
    pending = [case for case in queue if case.key not in done]
    print(
        f"{len(queue)} cases, {len(queue) - len(pending)} already in {options.results}, {len(pending)} to run"
    )
    runnable = [case for case in pending if evaluation.has_weight(case.method, case.problem)]
    if len(runnable) < len(pending):
        lacking = len(pending) - len(runnable)
        print(f"{lacking} of them need tuned weights that {options.tuning} lacks: run --tune")
        pending = runnable
    phantoms = _eval_seeds("phantom", options.phantoms)
    figures = set(figure_cases(phantoms, range(options.seeds), evaluation.tags))
    gpus: _queue.Queue = _queue.Queue()
    for gpu in _gpus(evaluation.device, options.workers):
        gpus.put(gpu)

    def run_script(case: Case) -> Outcome:
        gpu = gpus.get()
        try:
            return evaluation.run_script(case, gpu)
        finally:
            gpus.put(gpu)

    budget = Budget(options.max_minutes)
    ran, estimated, submitted, stopped = 0, False, 0, False
    running: Dict[concurrent.futures.Future, Tuple[int, Case, float]] = {}
    with concurrent.futures.ThreadPoolExecutor(options.workers) as pool:
        while True:
            while not stopped and submitted < len(pending) and len(running) < options.workers:
                case = pending[submitted]
                if options.max_cases is not None and submitted >= options.max_cases:
                    print(f"stopping after {submitted} cases (--max-cases)")
                    stopped = True
                    break
                if not budget.fits(case):
                    print(
                        f"stopping: {budget.elapsed() / 60:.1f} min used, the next case needs about "
                        f"{budget.expected(case):.0f} s of the {options.max_minutes} min budget; "
                        f"{len(pending) - submitted} cases left, rerun to continue"
                    )
                    stopped = True
                    break
                start = time.perf_counter()
                future = (
                    pool.submit(run_script, case) if options.user_path else _run_now(evaluation.run, case)
                )
                running[future] = (submitted, case, start)
                submitted += 1
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                index, case, start = running.pop(future)
                outcome = future.result()
                record = outcome.record
                record.update(
                    settings=evaluation.settings, device=env["device_name"], torch=torch.__version__
                )
                record.update(
                    git_commit=env["git_commit"], finished=_dt.datetime.now().isoformat(timespec="seconds")
                )
                append_record(options.results, record)
                if case in figures and options.save_volumes is not None:
                    save_volume(options.save_volumes, volume_file_name(case.key), outcome.recon, case.key)
                    # SVCT and LACT share each phantom's ground truth, which is saved once per volume.
                    gt_key = case.key.split("/")[1] + "/GT"
                    save_volume(options.save_volumes, volume_file_name(gt_key), outcome.gt, gt_key)
                wall = time.perf_counter() - start
                budget.add(case, wall)
                ran += 1
                left = budget.remaining_minutes(pending[submitted:]) / options.workers
                timing = f"{record['seconds']:.1f} s (wall {wall:.1f} s)  {_summary(record)}"
                print(f"[{index + 1}/{len(pending)}] {case.key}: {timing}  left ~{left:.1f} min", flush=True)
                if not estimated and case.method in SAMPLER_METHODS:
                    estimated = True
                    samplers = sum(c.method in SAMPLER_METHODS for c in pending[index:])
                    print(
                        f"estimate: this first sampler case took {wall:.1f} s including one-time warm-up; "
                        f"{samplers} sampler cases at that pace take {samplers * wall / 60:.1f} min "
                        "(an upper bound)",
                        flush=True,
                    )
    return ran


def _eval_seeds(source: str, count: int) -> List[int]:
    seeds = EVAL_SEEDS[source]
    if source in external_volumes.FAMILIES:
        return list(seeds[:count])
    # The first held-out seed is the shipped demo volume; the evaluation starts after it.
    return list(seeds[1 : 1 + count])


def problem_volumes(options: Options) -> Dict[str, List[int]]:
    """Problem -> the seeds of its evaluation volumes, for the options' counts."""
    counts = {"phantom": options.phantoms, "mri": options.brains}
    return {
        name: _eval_seeds(problem.source, counts.get(problem.source, options.external))
        for name, problem in PROBLEMS.items()
    }


def _evaluation(options: Options, tuning: Optional[dict] = None) -> Evaluation:
    return Evaluation(
        options.settings, options.device, options.checkpoints, options.template, options.cache, tuning
    )


def _run_tuning(options: Options, env: dict) -> None:
    """Tune the problems the tuning file lacks for these settings, and merge them into it."""
    path, settings = options.tuning, options.settings
    existing = json.loads(path.read_text()) if path.is_file() else {}
    if existing.get("settings") != tuning_settings(settings):
        existing = {}
    bases = dict.fromkeys(tuned_problem(problem) for problem in options.problems)
    missing = [problem for problem in bases if problem not in existing.get("w_dz", {})]
    if missing:
        start = time.perf_counter()
        tuning = tune(_evaluation(options), missing)
        merged = ("scores_volume_psnr",) + tuple(name for name, _ in TUNED.values())
        for key in merged:
            tuning[key] = {**existing.get(key, {}), **tuning[key]}
        tuning.update(
            device=env["device_name"], git_commit=env["git_commit"], seconds=time.perf_counter() - start
        )
        write_text(path, json.dumps(tuning, indent=1) + "\n")
        existing = tuning
    print(f"tuned: w_dz {existing['w_dz']}, tv_weight {existing['tv_weight']} ({path})")
    _mirror(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the experiment (or ``--tune`` / ``--list``) as the command line says; returns the exit code."""
    options = options_from_args(build_parser().parse_args(argv))
    tags = {name: prior_tag(path, checkpoint_hash(path)) for name, path in options.checkpoints.items()}
    queue = case_queue(problem_volumes(options), range(options.seeds), tags, options.priority)
    queue = select(queue, options.problems, options.methods)
    if options.only:
        queue = [case for case in queue if any(fnmatch.fnmatchcase(case.key, p) for p in options.only)]
    if options.list_queue:
        done = {record["key"] for record in read_records(options.results)}
        for case in queue:
            print(f"{'done' if case.key in done else 'todo'}  {case.key}")
        return 0
    command = ["experiments/iscs_eval.py", *(sys.argv[1:] if argv is None else argv)]
    env = environment(options.device, command)
    env["git_commit"] = options.git_commit or env["git_commit"]
    print(f"device {env['device_name']}, torch {torch.__version__}, commit {env['git_commit']}")
    print(f"settings {options.settings}")
    if options.tune:
        _run_tuning(options, env)
        return 0
    tuning = load_tuning(options.tuning, options.settings)
    evaluate(_evaluation(options, tuning), options, queue, env)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
