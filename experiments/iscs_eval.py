"""The ISCS evidence experiment: i.i.d. versus inter-slice consistent sampler noise on held-out volumes.

One process runs a queue of cases ``(problem, volume, method, noise, sampler seed)`` in priority
order and appends one JSON line per finished case to the results file; a rerun skips the cases
already there, so the experiment resumes across calls (and machines). Each prior is loaded once,
and each problem's ground truth, operator and measurement are built once per volume.

Problems, on volumes generated here from held-out seeds (deterministic for a device):

- ``SVCT-30``, ``LACT-100``: cone-beam CT (30 views over 360 degrees; the first 100 degrees of the
  arc) of procedural phantoms ``datasets.ct_phantom.EVAL_SEEDS[1:]`` (the demo volume is
  ``EVAL_SEEDS[0]``), reconstructed with the CT prior on axial slices.
- ``ZSR-4``: MRI z-axis super-resolution x4 of augmented brains ``datasets.mri.EVAL_SEEDS[1:]``,
  reconstructed with the MRI prior on coronal slices.

Methods: ``FDK`` (CT) / ``A_dagger`` (ZSR), ``ADMM-TV``, ``DDS``, ``DDS+TV`` (TV along the slice
axis) and ``DDNM``; sampler noise ``iid``, ``iscs`` (the published SLERP path), ``shared`` (one draw
for every slice) or ``ar1-<length>`` (AR(1) along the slices, correlation length in slices).

The two tuned weights (DDS+TV's ``w_dz`` and ADMM-TV's TV weight, per problem) come from
``--tune``, which picks each from a fixed grid by volume PSNR on one validation volume of the
TRAINING seed range (``TRAIN_SEEDS[-1]``, past every seed the priors were trained on), never on an
evaluation volume, and writes the tuning file; until it exists, the evaluation runs every other
case and leaves the cases of those two methods for later.

Device usage (each call resumes where the one before stopped)::

    python experiments/iscs_eval.py --max-minutes 8.5
    python experiments/iscs_eval.py --tune && python experiments/iscs_eval.py --max-minutes 6

With ``OUT`` set, the results and tuning files are copied to ``$OUT`` after every case, and the
volumes of the figure cases (the first phantom's ground truth, its DDS and DDS+ISCS reconstructions
for SVCT-30 and DDNM and DDNM+ISCS for LACT-100, first seed) are saved there as five fp16 ``.pt``
files.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import algorithms  # noqa: E402
from datasets import ct_phantom, mri  # noqa: E402
from utils.metrics import volume_metrics  # noqa: E402
from utils.results import environment  # noqa: E402
from utils.tasks import TASKS, Task  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
DEFAULT_RESULTS = RESULTS / "iscs_eval.jsonl"
DEFAULT_TUNING = RESULTS / "iscs_tuning.json"
CHECKPOINTS = {
    "ct": ROOT / "checkpoints" / "ct_phantom_128.pt",
    "mri": ROOT / "checkpoints" / "mri_zsr_128.pt",
}
DEFAULT_TEMPLATE = ROOT / "data" / "cache" / "mni152_t1.pt"

# The validation volume lies in the training range but past the few thousand seeds training drew.
VALIDATION_SEED = mri.check_train_seed(ct_phantom.check_train_seed(ct_phantom.TRAIN_SEEDS[-1]))
W_DZ_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
TV_WEIGHT_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
# ADMM-TV keeps algorithms.admm_tv's default ratio of penalty to weight (rho = 1e-2 for lam = 1e-3).
ADMM_RHO_PER_WEIGHT = 10.0
KNOB_NOISES = ("iid", "ar1-1", "ar1-4", "ar1-16", "ar1-64", "ar1-256", "iscs", "shared")
NOISE_PARAMETER = {"iscs": "span", "ar1": "corr_length"}
NOISE_LABELS = {"none": "", "iid": "", "iscs": "+ISCS", "shared": "+shared"}
# Settings that the tuned weights depend on; the tuning file must match them.
TUNING_KEYS = ("size", "depth", "nfe", "num_cg", "w_tik", "renoise", "admm_iter", "checkpoints")


@dataclass(frozen=True)
class Problem:
    """One reconstruction problem.

    Args:
        task: key of ``utils.tasks.TASKS`` ("SVCT", "LACT", "ZSR").
        degree: views (SVCT), arc in degrees (LACT) or averaging factor (ZSR).
        source: where its volumes come from, a key of ``SOURCES``.
        prior: the prior that reconstructs it, a key of ``CHECKPOINTS``.
        classical: its closed-form baseline, a key of ``METHODS``.
    """

    task: str
    degree: int
    source: str
    prior: str
    classical: str


PROBLEMS: Dict[str, Problem] = {
    "SVCT-30": Problem("SVCT", 30, "phantom", "ct", "FDK"),
    "LACT-100": Problem("LACT", 100, "phantom", "ct", "FDK"),
    "ZSR-4": Problem("ZSR", 4, "mri", "mri", "A_dagger"),
}


@dataclass(frozen=True)
class Case:
    """One reconstruction: a method with its sampler noise and seed on one volume of one problem.

    ``volume`` is the seed of the generated volume; ``noise`` is "none" for methods without a
    sampler, and ``seed`` seeds the sampler's generator.
    """

    problem: str
    volume: int
    method: str
    noise: str = "none"
    seed: int = 0

    @property
    def key(self) -> str:
        """The case's identity in the results file."""
        source = PROBLEMS[self.problem].source
        return f"{self.problem}/{source}-{self.volume}/{self.method}/{self.noise}/seed{self.seed}"


def label(method: str, noise: str) -> str:
    """Display name of a method with its noise: "DDS" (iid), "DDS+ISCS", "DDS+shared", "DDS+AR1(16)"."""
    if noise in NOISE_LABELS:
        return method + NOISE_LABELS[noise]
    name, _, value = noise.partition("-")
    return f"{method}+{name.upper()}({value})"


def make_noise_source(spec: str):
    """A noise source from a spec: a name of ``algorithms.NOISE_SOURCES``, or ``name-value`` for
    the source's parameter (``iscs-<span>``, ``ar1-<corr_length>``)."""
    name, _, value = spec.partition("-")
    if not value:
        return algorithms.make_noise(name)
    if name not in NOISE_PARAMETER:
        raise ValueError(f"noise spec {spec!r}: only {', '.join(NOISE_PARAMETER)} take a value after '-'")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"noise spec {spec!r}: the value after '-' must be a number") from None
    return algorithms.make_noise(name, **{NOISE_PARAMETER[name]: number})


# ---------------------------------------------------------------- volumes


def _phantom_volume(evaluation: "Evaluation", seed: int):
    shape = (evaluation.settings["depth"], evaluation.settings["size"], evaluation.settings["size"])
    hu = ct_phantom.generate_phantom(seed, shape, device=evaluation.device)
    return hu.cpu().numpy(), ct_phantom.phantom_meta(shape)


def _brain_volume(evaluation: "Evaluation", seed: int):
    augmenter = evaluation.brain_augmenter()
    return augmenter(seed).cpu().numpy(), augmenter.output_meta()


SOURCES: Dict[str, Callable] = {"phantom": _phantom_volume, "mri": _brain_volume}
EVAL_SEEDS = {"phantom": ct_phantom.EVAL_SEEDS, "mri": mri.EVAL_SEEDS}


@dataclass
class Context:
    """A problem on one volume: its task, ground-truth slice stack, operator and clean measurement."""

    task: Task
    gt: torch.Tensor
    op: object
    y: torch.Tensor


# ---------------------------------------------------------------- methods


def _fdk(evaluation: "Evaluation", case: Case, context: Context, weight) -> torch.Tensor:
    return context.op.fdk(context.y)


def _pseudo_inverse(evaluation: "Evaluation", case: Case, context: Context, weight) -> torch.Tensor:
    return context.op.A_dagger(context.y)


def _admm_tv(evaluation: "Evaluation", case: Case, context: Context, weight) -> torch.Tensor:
    n_iter = evaluation.settings["admm_iter"]
    return algorithms.admm_tv(
        context.op, context.y, lam=weight, rho=ADMM_RHO_PER_WEIGHT * weight, n_iter=n_iter
    )


def _sampler(method: str) -> Callable:
    def run(evaluation: "Evaluation", case: Case, context: Context, weight) -> torch.Tensor:
        denoiser = evaluation.prior(PROBLEMS[case.problem].prior)
        model, settings = denoiser.net.config.model, evaluation.settings
        return algorithms.reconstruct(
            method,
            denoiser,
            context.op,
            context.y,
            shape=tuple(context.gt.shape),
            nfe=settings["nfe"],
            sigma_min=float(model.sigma_min),
            sigma_max=float(model.sigma_max),
            num_cg=settings["num_cg"],
            w_tik=settings["w_tik"],
            w_dz=0.0 if weight is None else weight,
            renoise=settings["renoise"],
            noise=make_noise_source(case.noise),
            generator=torch.Generator(evaluation.device).manual_seed(case.seed),
            disable=True,
        )

    return run


METHODS: Dict[str, Callable] = {
    "FDK": _fdk,
    "A_dagger": _pseudo_inverse,
    "ADMM-TV": _admm_tv,
    "DDS": _sampler("DDS"),
    "DDS+TV": _sampler("DDS"),
    "DDNM": _sampler("DDNM"),
}
SAMPLER_METHODS = ("DDS", "DDS+TV", "DDNM")
# Methods with a tuned weight -> (name of the weight in the tuning file, its grid).
TUNED = {"DDS+TV": ("w_dz", W_DZ_GRID), "ADMM-TV": ("tv_weight", TV_WEIGHT_GRID)}


# ---------------------------------------------------------------- the queue


def case_queue(phantoms: Sequence[int], brains: Sequence[int], seeds: Sequence[int]) -> List[Case]:
    """Every case of the experiment, most important first, without repeats.

    Order: SVCT-30 DDS iid/ISCS pairs, LACT-100 DDNM pairs, ZSR-4 DDS pairs; the classical
    baselines; DDS+TV and DDS+shared; the remaining iid/ISCS pairs (SVCT-30 DDNM, LACT-100 DDS,
    ZSR-4 DDNM); the correlation-knob curve (DDS SVCT-30 on the first phantom). Pairs run seed by
    seed, so a queue cut short still covers every volume with the first seeds.
    """
    volumes = {"SVCT-30": phantoms, "LACT-100": phantoms, "ZSR-4": brains}

    def pairs(problem: str, method: str) -> List[Case]:
        return [
            Case(problem, volume, method, noise, seed)
            for seed in seeds
            for volume in volumes[problem]
            for noise in ("iid", "iscs")
        ]

    queue = pairs("SVCT-30", "DDS") + pairs("LACT-100", "DDNM") + pairs("ZSR-4", "DDS")
    for name, problem in PROBLEMS.items():
        queue += [Case(name, v, method) for v in volumes[name] for method in (problem.classical, "ADMM-TV")]
    for name in PROBLEMS:
        queue += [Case(name, v, "DDS+TV", "iid", seeds[0]) for v in volumes[name]]
        queue += [Case(name, v, "DDS", "shared", seeds[0]) for v in volumes[name]]
    queue += pairs("SVCT-30", "DDNM") + pairs("LACT-100", "DDS") + pairs("ZSR-4", "DDNM")
    queue += [Case("SVCT-30", phantoms[0], "DDS", noise, seed) for seed in seeds for noise in KNOB_NOISES]
    return list(dict.fromkeys(queue))


def figure_cases(phantoms: Sequence[int], seeds: Sequence[int]) -> Tuple[Case, ...]:
    """The cases whose volumes the slice figure shows."""
    return tuple(
        Case(problem, phantoms[0], method, noise, seeds[0])
        for problem, method in (("SVCT-30", "DDS"), ("LACT-100", "DDNM"))
        for noise in ("iid", "iscs")
    )


# ---------------------------------------------------------------- running cases


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Evaluation:
    """Runs cases with the priors, volumes and operators built once and kept.

    Args:
        settings: the run settings (see :func:`settings_from_args`).
        device: where everything runs.
        checkpoints: prior name -> checkpoint file.
        template: the MNI152 template file for the brain volumes.
        tuning: the tuned weights (``{"w_dz": {problem: w}, "tv_weight": {problem: w}}``); None or
            empty when there are none yet.
    """

    def __init__(
        self,
        settings: dict,
        device: torch.device,
        checkpoints: Dict[str, Path],
        template: Path,
        tuning: Optional[dict] = None,
    ):
        self.settings = settings
        self.device = device
        self.checkpoints = checkpoints
        self.template = template
        self.tuning = tuning or {}
        self._priors: Dict[str, object] = {}
        self._contexts: Dict[Tuple[str, int], Context] = {}
        self._augmenter = None

    def prior(self, name: str):
        """The denoiser of prior ``name`` (loaded on first use)."""
        if name not in self._priors:
            from models import Denoiser, load_score_model

            net = load_score_model(None, self.checkpoints[name], device=self.device)
            self._priors[name] = Denoiser(net, precision=self.settings["precision"])
        return self._priors[name]

    def brain_augmenter(self) -> mri.MRIAugmenter:
        """The brain volume generator on the template, for cubes of the settings' size."""
        if self._augmenter is None:
            template, meta = mri.load_template(self.template, self.device)
            size = self.settings["size"]
            spacing = mri.OUTPUT_SPACING * mri.OUTPUT_SHAPE[0] / size
            self._augmenter = mri.MRIAugmenter(template, meta, (size, size, size), spacing)
        return self._augmenter

    def context(self, problem_name: str, volume: int) -> Context:
        """Ground truth, operator and measurement of ``problem_name`` on volume ``volume`` (built once)."""
        key = (problem_name, volume)
        if key not in self._contexts:
            problem = PROBLEMS[problem_name]
            task = TASKS[problem.task]
            array, meta = SOURCES[problem.source](self, volume)
            # The same option names the entry scripts resolve, so the tasks prepare and measure alike.
            options = SimpleNamespace(
                data=f"{problem.source}-{volume}",
                slice_begin=0,
                slice_end=0,
                recon_size=int(self.prior(problem.prior).net.config.data.image_size),
                task=problem.task,
                degree=problem.degree,
                sino_noise=0.0,
            )
            gt, _ = task.prepare(array, meta, options, self.device)
            op = task.operator(gt, options)
            y = task.measure(op, gt, options, torch.Generator(self.device).manual_seed(0))
            self._contexts[key] = Context(task, gt, op, y)
        return self._contexts[key]

    def has_weight(self, method: str, problem: str) -> bool:
        """Whether ``method`` on ``problem`` can run: it has no tuned weight, or the tuning gives it."""
        return method not in TUNED or problem in self.tuning.get(TUNED[method][0], {})

    def weight(self, method: str, problem: str) -> Optional[float]:
        """The tuned weight of ``method`` on ``problem`` (None for methods without one)."""
        if method not in TUNED:
            return None
        if not self.has_weight(method, problem):
            name = TUNED[method][0]
            raise ValueError(f"the tuning file has no {name} for {problem}; run --tune --problems {problem}")
        return float(self.tuning[TUNED[method][0]][problem])

    def run(self, case: Case, weight: Optional[float] = None) -> Tuple[torch.Tensor, dict]:
        """Reconstruct ``case`` and measure it against its ground truth.

        Args:
            case: the case.
            weight: the method's tuned weight; None takes the tuning's.

        Returns:
            ``(recon volume [D, H, W], record)``: the record holds the case, its label, the weight
            used, every metric of ``utils.metrics.volume_metrics`` plus ``abs_delta_slices`` (the
            inter-slice gap along the prior's slice axis), and ``seconds`` of the reconstruction.
        """
        context = self.context(case.problem, case.volume)
        weight = self.weight(case.method, case.problem) if weight is None else weight
        _synchronize(self.device)
        start = time.perf_counter()
        recon = METHODS[case.method](self, case, context, weight)
        _synchronize(self.device)
        seconds = time.perf_counter() - start
        volume, gt = context.task.to_volume(recon), context.task.to_volume(context.gt)
        metrics = volume_metrics(volume, gt)
        axis = context.task.slice_axis
        gap = float((recon - context.gt).diff(dim=0).abs().mean())
        metrics["abs_delta_slices"] = gap if math.isfinite(gap) else None
        record = {
            "key": case.key,
            **asdict(case),
            "label": label(case.method, case.noise),
            "weight": weight,
            "slice_axis": axis,
            "metrics": metrics,
            "seconds": seconds,
        }
        return volume, record


# ---------------------------------------------------------------- files


def _mirror(path: Path) -> None:
    """Copy ``path`` to $OUT (when set), so that a device call hands back what it wrote so far."""
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(out) / path.name)


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
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save({"volume": volume.detach().to("cpu", torch.float16), "key": key}, path)
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
            psnr = {str(w): evaluation.run(case, weight=w)[1]["metrics"]["psnr"] for w in grid}
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


def settings_from_args(args: argparse.Namespace) -> dict:
    """The settings every record of one results file shares (a rerun must use the same ones)."""
    return {
        "size": args.size,
        "depth": args.depth or args.size,
        "nfe": args.nfe,
        "num_cg": args.num_cg,
        "w_tik": args.w_tik,
        "renoise": args.renoise,
        "admm_iter": args.admm_iter,
        "precision": args.precision,
        # File names, not paths, so that a run resumes on a machine with another checkout path.
        "checkpoints": {"ct": args.ct_checkpoint.name, "mri": args.mri_checkpoint.name},
    }


def _check_records(records: List[dict], evaluation: Evaluation, path: Path) -> None:
    """Every record must share the settings, and a tuned method's record the tuned weight."""
    for record in records:
        if record.get("settings") != evaluation.settings:
            raise ValueError(
                f"{path} holds case {record.get('key')} made with settings {record.get('settings')}, "
                f"not {evaluation.settings}; use another --results file for other settings"
            )
        weight = evaluation.weight(record["method"], record["problem"])
        if record["weight"] != weight:
            raise ValueError(
                f"{path} holds case {record['key']} made with weight {record['weight']}, but the tuning "
                f"file now gives {weight}; use another --results file"
            )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not accepted; a positive integer is")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} is not accepted; a number >= 0 is")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (every default shown in ``--help``)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="cuda, cuda:<n> or cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="network precision")
    parser.add_argument("--size", type=_positive_int, default=128, help="volume side in voxels (cubes)")
    parser.add_argument("--depth", type=_positive_int, default=None, help="CT slices (default: --size)")
    parser.add_argument("--nfe", type=_positive_int, default=50, help="sampler noise levels")
    parser.add_argument(
        "--num-cg", type=_positive_int, default=5, help="CG iterations of DDS / DDNM's A_dagger"
    )
    parser.add_argument("--w-tik", type=_non_negative_float, default=0.0, help="DDS proximal weight")
    parser.add_argument(
        "--renoise", choices=tuple(algorithms.RENOISE), default="DDS", help="re-noising preset"
    )
    parser.add_argument("--admm-iter", type=_positive_int, default=50, help="ADMM-TV iterations")
    parser.add_argument(
        "--problems",
        nargs="+",
        choices=tuple(PROBLEMS),
        default=tuple(PROBLEMS),
        help="problems to run or tune",
    )
    parser.add_argument("--phantoms", type=_positive_int, default=3, help="evaluation phantoms (CT)")
    parser.add_argument("--brains", type=_positive_int, default=2, help="evaluation brains (ZSR)")
    parser.add_argument("--seeds", type=_positive_int, default=3, help="sampler seeds of every iid/ISCS pair")
    parser.add_argument("--ct-checkpoint", type=Path, default=CHECKPOINTS["ct"])
    parser.add_argument("--mri-checkpoint", type=Path, default=CHECKPOINTS["mri"])
    parser.add_argument("--mri-template", type=Path, default=DEFAULT_TEMPLATE, help="MNI152 template file")
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
    parser.add_argument(
        "--max-cases", type=_positive_int, default=None, help="stop after this many new cases"
    )
    parser.add_argument(
        "--save-volumes",
        type=Path,
        default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
        help="folder for the figure cases' volumes (default: $OUT when set, else none saved)",
    )
    parser.add_argument("--git-commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    return parser


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


def evaluate(evaluation: Evaluation, args: argparse.Namespace, queue: List[Case], env: dict) -> int:
    """Run the queue's cases that the results file lacks, within the budget; returns how many ran."""
    records = read_records(args.results)
    _check_records(records, evaluation, args.results)
    done = {record["key"] for record in records}
    pending = [case for case in queue if case.key not in done]
    print(f"{len(queue)} cases, {len(queue) - len(pending)} already in {args.results}, {len(pending)} to run")
    runnable = [case for case in pending if evaluation.has_weight(case.method, case.problem)]
    if len(runnable) < len(pending):
        print(
            f"{len(pending) - len(runnable)} of them need tuned weights that {args.tuning} lacks: run --tune"
        )
        pending = runnable
    figures = set(figure_cases(_eval_seeds("phantom", args.phantoms), range(args.seeds)))
    budget = Budget(args.max_minutes)
    ran, estimated = 0, False
    for index, case in enumerate(pending):
        if args.max_cases is not None and ran >= args.max_cases:
            print(f"stopping after {ran} cases (--max-cases)")
            break
        if not budget.fits(case):
            print(
                f"stopping: {budget.elapsed() / 60:.1f} min used, the next case needs about "
                f"{budget.expected(case):.0f} s of the {args.max_minutes} min budget; "
                f"{len(pending) - index} cases left, rerun to continue"
            )
            break
        start = time.perf_counter()
        volume, record = evaluation.run(case)
        record.update(settings=evaluation.settings, device=env["device_name"], torch=torch.__version__)
        record.update(git_commit=env["git_commit"], finished=_dt.datetime.now().isoformat(timespec="seconds"))
        append_record(args.results, record)
        if case in figures and args.save_volumes is not None:
            context = evaluation.context(case.problem, case.volume)
            save_volume(args.save_volumes, volume_file_name(case.key), volume, case.key)
            # SVCT and LACT share each phantom's ground truth, which is saved once per volume.
            gt_key = case.key.split("/")[1] + "/GT"
            save_volume(
                args.save_volumes, volume_file_name(gt_key), context.task.to_volume(context.gt), gt_key
            )
        wall = time.perf_counter() - start
        budget.add(case, wall)
        ran += 1
        left = budget.remaining_minutes(pending[index + 1 :])
        print(
            f"[{index + 1}/{len(pending)}] {case.key}: {record['seconds']:.1f} s (wall {wall:.1f} s)  "
            f"{_summary(record)}  left ~{left:.1f} min",
            flush=True,
        )
        if not estimated and case.method in SAMPLER_METHODS:
            estimated = True
            samplers = sum(c.method in SAMPLER_METHODS for c in pending[index:])
            print(
                f"estimate: this first sampler case took {wall:.1f} s including one-time warm-up; "
                f"{samplers} sampler cases at that pace take {samplers * wall / 60:.1f} min (an upper bound)",
                flush=True,
            )
    return ran


def _eval_seeds(source: str, count: int) -> List[int]:
    seeds = EVAL_SEEDS[source]
    # The first held-out seed is the shipped demo volume; the evaluation starts after it.
    return list(seeds[1 : 1 + count])


def _run_tuning(args: argparse.Namespace, settings: dict, checkpoints: Dict[str, Path], env: dict) -> None:
    """Tune the problems the tuning file lacks for these settings, and merge them into it."""
    existing = json.loads(args.tuning.read_text()) if args.tuning.is_file() else {}
    if existing.get("settings") != tuning_settings(settings):
        existing = {}
    missing = [problem for problem in args.problems if problem not in existing.get("w_dz", {})]
    if missing:
        start = time.perf_counter()
        evaluation = Evaluation(settings, torch.device(args.device), checkpoints, args.mri_template)
        tuning = tune(evaluation, missing)
        merged = ("scores_volume_psnr",) + tuple(name for name, _ in TUNED.values())
        for key in merged:
            tuning[key] = {**existing.get(key, {}), **tuning[key]}
        tuning.update(
            device=env["device_name"], git_commit=env["git_commit"], seconds=time.perf_counter() - start
        )
        args.tuning.parent.mkdir(parents=True, exist_ok=True)
        args.tuning.write_text(json.dumps(tuning, indent=1) + "\n")
        existing = tuning
    print(f"tuned: w_dz {existing['w_dz']}, tv_weight {existing['tv_weight']} ({args.tuning})")
    _mirror(args.tuning)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the experiment (or ``--tune`` / ``--list``) as the command line says; returns the exit code."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    checkpoints = {"ct": args.ct_checkpoint, "mri": args.mri_checkpoint}
    queue = case_queue(
        _eval_seeds("phantom", args.phantoms), _eval_seeds("mri", args.brains), range(args.seeds)
    )
    queue = [case for case in queue if case.problem in args.problems]
    if args.only:
        queue = [case for case in queue if any(fnmatch.fnmatchcase(case.key, p) for p in args.only)]
    if args.list:
        done = {record["key"] for record in read_records(args.results)}
        for case in queue:
            print(f"{'done' if case.key in done else 'todo'}  {case.key}")
        return 0
    device = torch.device(args.device)
    command = ["experiments/iscs_eval.py", *(sys.argv[1:] if argv is None else argv)]
    env = environment(device, command)
    env["git_commit"] = args.git_commit or env["git_commit"]
    print(f"device {env['device_name']}, torch {torch.__version__}, commit {env['git_commit']}")
    print(f"settings {settings}")
    if args.tune:
        _run_tuning(args, settings, checkpoints, env)
        return 0
    tuning = load_tuning(args.tuning, settings)
    evaluate(Evaluation(settings, device, checkpoints, args.mri_template, tuning), args, queue, env)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
