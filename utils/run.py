"""The run routine both entry scripts share: load, simulate, reconstruct, evaluate, write.

``main(profile, argv)`` is what ``recon_CBCT.py`` and ``recon_MRI_ZSR.py`` call. Expected failures
(bad input, missing files, a checkpoint that does not fit its config...) print one line
``error: <message>`` to stderr and return exit code 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch

import algorithms
from algorithms.noise import noise_source_name, sources_taking
from utils import distributed
from utils.cli import PRIOR_METHODS, ScriptProfile, parse_args
from utils.figures import save_scroll_gif, save_slices_figure
from utils.io import Meta, read_volume
from utils.metrics import PLANES, compute_metrics, format_table
from utils.results import (
    LOG_NAME,
    RunFolder,
    console_logging,
    create_run_dir,
    environment,
    problem_name,
    run_parent,
    volume_name,
)
from utils.tasks import BASELINE_METHODS, TASKS, Task

log = logging.getLogger("iscs")

# The project's modules report bad input with these; main() turns them into one-line errors.
EXPECTED_ERRORS = (ValueError, TypeError, OSError)


@dataclass
class Run:
    """Everything one run works with, filled in stage by stage."""

    args: argparse.Namespace
    task: Task
    gt: torch.Tensor
    meta: Meta
    net: Optional[torch.nn.Module]
    noise: Any
    op: Any
    folder: RunFolder
    generator: torch.Generator
    y: Optional[torch.Tensor] = None
    baselines: Dict[str, torch.Tensor] = field(default_factory=dict)


def resolve_device(args: argparse.Namespace) -> torch.device:
    """The compute device from ``--device`` and ``--gpu`` (under torchrun: the local rank's GPU);
    asking for a GPU that is not there is an error."""
    if args.compile and args.device == "cpu":
        raise ValueError(
            "--compile runs the network in a CUDA graph; accepted: --device cuda, or --no-compile"
        )
    if args.device == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError("--device cuda: no CUDA GPU is available here; accepted: --device cpu")
    return torch.device("cuda", distributed.cuda_index(args.gpu, count))


def load_prior(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The score network (EMA weights, eval mode) from ``--checkpoint-path`` and ``--config-path``."""
    from models import load_score_model

    return load_score_model(args.config_path, args.checkpoint_path, device=device)


def resolve_options(args: argparse.Namespace, net: Optional[torch.nn.Module]) -> None:
    """Fill the options whose default comes from the model config (in place)."""
    if net is None:
        return
    model, data = net.config.model, net.config.data
    args.sigma_max = float(model.sigma_max) if args.sigma_max is None else args.sigma_max
    args.sigma_min = float(model.sigma_min) if args.sigma_min is None else args.sigma_min
    args.recon_size = int(data.image_size) if args.recon_size is None else args.recon_size
    step = 2 ** (len(model.ch_mult) - 1)
    if args.recon_size % step:
        raise ValueError(
            f"--recon-size {args.recon_size}: the prior's network halves the planes "
            f"{len(model.ch_mult) - 1} times; accepted: a multiple of {step}"
        )
    if not args.sigma_max > args.sigma_min:
        raise ValueError(f"--sigma-max {args.sigma_max:g} must exceed --sigma-min {args.sigma_min:g}")


def config_name(args: argparse.Namespace) -> str:
    """The ``<config>`` level of the results folder: the config file, else the checkpoint, else none."""
    if args.config_path is not None:
        return volume_name(args.config_path)
    return volume_name(args.checkpoint_path) if args.method in PRIOR_METHODS else "no-prior"


# noise-source knob -> its option
NOISE_KNOBS = {"span": "--noise-span", "corr_length": "--noise-corr-length"}


def noise_params(args: argparse.Namespace) -> Dict[str, float]:
    """Noise-source knobs the user set (the others keep the source's defaults)."""
    given = {"span": args.noise_span, "corr_length": args.noise_corr_length}
    return {name: value for name, value in given.items() if value is not None}


def make_noise_source(args: argparse.Namespace):
    """The ``--noise-control`` source with the knobs set; a knob it does not have is an error."""
    name = noise_source_name(args.noise_control)
    for knob, value in noise_params(args).items():
        owners = sources_taking(knob)
        if name not in owners:
            raise ValueError(
                f"{NOISE_KNOBS[knob]} {value:g}: --noise-control {args.noise_control} has no such knob; "
                f"accepted with --noise-control {' or '.join(owners)}"
            )
    return algorithms.make_noise(args.noise_control, **noise_params(args))


def problem_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The options that name the ``<problem>`` folder, in order (label -> value)."""
    whole = args.slice_begin == 0 and args.slice_end == 0
    options: Dict[str, Any] = {"s": "all" if whole else f"{args.slice_begin}-{args.slice_end}"}
    if getattr(args, "sino_noise", 0.0) > 0:
        options["sino"] = args.sino_noise
    if args.method == "ADMM-TV":
        options.update(lam=args.tv_weight, rho=args.admm_rho, it=args.admm_iter, nCG=args.num_cg)
    if args.method in PRIOR_METHODS:
        options.update(NFE=args.NFE, init=args.use_init, nCG=args.num_cg, wTIK=args.w_tik, wDZ=args.w_dz)
        knobs = "".join(f"-{value:g}" for value in noise_params(args).values())
        options.update(noise=f"{args.noise_control}{knobs}", renoise=args.renoise_method)
    return options


def _reconstruct_with_prior(run: Run) -> torch.Tensor:
    from models import Denoiser

    args = run.args
    fast = {"channels_last": True, "compile": True, "cuda_graph": True} if args.compile else {}
    denoiser = distributed.slice_parallel(
        Denoiser(run.net, slice_batch=args.slice_batch, precision=args.precision, **fast)
    )
    main_baseline = next(iter(run.baselines.values()))
    op, y = distributed.view_parallel(run.op, run.y)
    return algorithms.reconstruct(
        args.method,
        denoiser,
        op,
        y,
        shape=tuple(run.gt.shape),
        nfe=args.NFE,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
        num_cg=args.num_cg,
        w_tik=args.w_tik,
        w_dz=args.w_dz,
        renoise=args.renoise_method,
        noise=run.noise,
        use_init=args.use_init,
        x_init=main_baseline if args.use_init else None,
        generator=run.generator,
        callback=_intermediates_saver(run) if args.save_intermediates else None,
        disable=not (sys.stderr.isatty() and distributed.is_main_process()),
    )


def _reconstruct_admm_tv(run: Run) -> torch.Tensor:
    args = run.args
    return algorithms.admm_tv(
        run.op, run.y, lam=args.tv_weight, rho=args.admm_rho, n_iter=args.admm_iter, n_cg=args.num_cg
    )


def _baseline_of(run: Run) -> torch.Tensor:
    name = BASELINE_METHODS[run.args.method]
    return run.baselines[name] if name in run.baselines else run.baselines[f"astra-{name}"]


METHOD_RUNNERS: Dict[str, Callable[[Run], torch.Tensor]] = {
    "DDS": _reconstruct_with_prior,
    "DDNM": _reconstruct_with_prior,
    "ADMM-TV": _reconstruct_admm_tv,
    "FDK": _baseline_of,
    "SIRT": _baseline_of,
}


def _intermediates_saver(run: Run) -> Callable[[dict], None]:
    def save(step: dict) -> None:
        index = step["i"]
        run.folder.volume(f"X_hat/step_{index:03d}", run.task.to_volume(step["x0"]))
        run.folder.volume(f"X_0/step_{index:03d}", run.task.to_volume(step["x0_dc"]))

    return save


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    """Log a stage's start and, when it succeeds, its duration."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    log.info("%s done in %.1f s", what, time.perf_counter() - start)


def _write_figures(run: Run, gt: torch.Tensor, volumes: Dict[str, torch.Tensor], report: dict) -> None:
    """``figure.png`` (GT, main baseline, recon, error) and, with ``--gif``, ``slices.gif``."""
    main_baseline = next(iter(run.baselines))
    panels = {name: volumes[name].detach().float().cpu().numpy() for name in (main_baseline, "recon")}
    gt_cpu = gt.detach().float().cpu().numpy()
    captions = {
        name: f"PSNR {values['psnr']:.2f} / SSIM {values['ssim']:.3f}"
        for name, values in report["metrics"].items()
        if values["psnr"] is not None
    }
    save_slices_figure(run.folder.path / "figure.png", gt_cpu, panels, run.meta["spacing"], captions)
    if run.args.gif:
        # The GIF scrolls through the prior's own planes: axial for CT, coronal (containing z) for ZSR.
        plane = next(name for name, axis in PLANES.items() if axis == run.task.slice_axis)
        save_scroll_gif(run.folder.path / "slices.gif", {"GT": gt_cpu, **panels}, plane=plane)


def _execute(run: Run) -> None:
    args, task, folder = run.args, run.task, run.folder
    # The measurement is simulated once; every baseline and the method see this same y.
    with _stage("simulating the measurement"):
        run.y = task.measure(run.op, run.gt, args, run.generator)
    name, measured, meta = task.measurement(run.y, run.meta, run.op)
    folder.volume(name, measured, meta)
    folder.volume("GT", task.to_volume(run.gt))

    with _stage("baselines"):
        run.baselines = task.baselines(run.op, run.y, run.gt, args)
    for name, stack in run.baselines.items():
        folder.volume(name, task.to_volume(stack))

    with _stage(f"reconstruction ({args.method})"):
        recon = METHOD_RUNNERS[args.method](run)
    # Rank 0 evaluates and writes only what every rank finished; the other ranks are done here.
    distributed.check_peers()
    if not distributed.is_main_process():
        return

    # Metrics and figures compare volumes in the normalised [0, 1] space of the ground truth.
    gt = task.to_volume(run.gt)
    volumes = {name: task.to_volume(stack) for name, stack in run.baselines.items()}
    volumes["recon"] = task.to_volume(recon)
    with _stage("metrics"):
        report = compute_metrics(gt, volumes)
    folder.json("metrics.json", report)
    table = format_table(report)
    folder.text("metrics.txt", table)
    log.info("metrics (data range %.4g):\n%s", report["data_range"], table)

    _write_figures(run, gt, volumes, report)

    # recon.nii.gz is written last, so a run that fails earlier leaves none.
    folder.volume("recon", volumes["recon"])


def run(args: argparse.Namespace, command: Sequence[str] = ()) -> Optional[Path]:
    """Run one reconstruction as the parsed options say; returns the results folder.

    ``command`` is the command line recorded in ``args.yaml``.

    Stages: device, input volume, prior (DDS/DDNM), preprocessing; then a new results folder with
    ``args.yaml`` and ``run.log``; the simulated measurement, the baselines, the reconstruction,
    ``metrics.json``/``metrics.txt``, figures and ``recon.nii.gz``; the folder's ``INCOMPLETE``
    marker goes away only when all of it is written.

    Under ``torchrun`` every rank runs all of it on the whole volume except the network, whose
    slices the ranks share (``utils.distributed``); only rank 0 writes, and its folder is returned
    (None on the other ranks). A failure on any rank ends every rank with that error.
    """
    device = resolve_device(args)
    with distributed.session(device) as launch:
        return _run(args, device, launch, command)


def _run(
    args: argparse.Namespace, device: torch.device, launch: distributed.Launch, command: Sequence[str]
) -> Optional[Path]:
    task = TASKS[args.task]
    if args.config_path is not None and not args.config_path.is_file():
        raise FileNotFoundError(f"--config-path {args.config_path}: no such file")
    array, meta = read_volume(args.data)
    net = load_prior(args, device) if args.method in PRIOR_METHODS else None
    resolve_options(args, net)
    noise = make_noise_source(args) if net is not None else None
    gt, meta = task.prepare(array, meta, args, device)
    op = task.operator(gt, args)

    parent = run_parent(
        args.results_dir,
        config_name(args),
        volume_name(args.data),
        args.task,
        args.degree,
        args.method,
        problem_name(problem_options(args)),
    )
    # Every rank is ready (input, prior, operator) before rank 0 creates the results folder.
    distributed.check_peers()
    folder = RunFolder(_new_run_dir(args, parent), meta) if launch.is_main else distributed.NullFolder()
    folder.start_log()
    try:
        log.info("results folder: %s", folder.path)
        if launch.world_size > 1 and args.method not in PRIOR_METHODS:
            log.warning(
                "%s has no network to share: each of the %d processes computes all of it",
                args.method,
                launch.world_size,
            )
        log.info("ground truth: %d slices of %d x %d on %s", gt.shape[0], gt.shape[2], gt.shape[3], device)
        if net is not None:
            log.info("prior: %s (sigma %g .. %g)", args.checkpoint_path, args.sigma_min, args.sigma_max)
        record = {"options": vars(args), **environment(device, command), "processes": launch.world_size}
        folder.yaml("args.yaml", record)
        generator = torch.Generator(device=device).manual_seed(args.seed)
        _execute(Run(args, task, gt, meta, net, noise, op, folder, generator))
        folder.complete()
        log.info("finished: %s", folder.path)
    except BaseException as err:
        reason = _describe_failure(err)
        log.error("run failed: %s (the folder stays marked INCOMPLETE; see %s)", reason, LOG_NAME)
        log.debug("traceback", exc_info=True)
        folder.fail(reason)
        raise
    finally:
        folder.stop_log()
    return folder.path


def _new_run_dir(args: argparse.Namespace, parent: Path) -> Path:
    try:
        return create_run_dir(parent)
    except OSError as err:
        raise OSError(
            f"--results-dir {args.results_dir}: cannot create {parent} ({err.strerror or err}); "
            "accepted: a directory you can write to"
        ) from None


def _describe_failure(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    return f"{type(err).__name__}: {_one_line(err)}"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(profile: ScriptProfile, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` with ``profile``'s defaults and run; returns the process exit code.

    Under torchrun only rank 0 logs and prints errors, its own or a failed peer's; another rank
    prints only an error that could not reach rank 0. A rank stopped by a peer's failure exits
    with code 0, so that torchrun names the rank that failed (and exits non-zero itself).
    """
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = parse_args(profile, argv)
    is_main = distributed.launch_from_env().is_main
    with console_logging() if is_main else distributed.silent_logging(), contextlib.ExitStack() as group:
        try:
            # The process group outlives the error printed below, so no rank exits before rank 0 printed it.
            group.enter_context(distributed.session(resolve_device(args)))
            run(args, [profile.prog, *argv])
        except EXPECTED_ERRORS as err:
            if is_main or not distributed.reported(err):
                print(f"error: {_one_line(err)}", file=sys.stderr)
            return 2
        except distributed.PeerFailure as err:
            if is_main:
                print(f"error: {_one_line(err)}", file=sys.stderr)
        except KeyboardInterrupt:
            if is_main:
                print(
                    "error: interrupted; a results folder already made stays marked INCOMPLETE",
                    file=sys.stderr,
                )
            return 130
    return 0
