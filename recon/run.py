"""The run routine both entry scripts share: load, simulate, reconstruct, evaluate, write.

``main(profile, argv)`` is what ``recon_CBCT.py`` and ``recon_MRI_ZSR.py`` call: it parses the
command line into a ``RunSpec`` (``recon.cli``) and runs it with :func:`run`. Expected failures
(bad input, missing files, a checkpoint that does not fit its config...) print one line
``error: <message>`` to stderr and return exit code 2; anything else keeps its traceback. SIGINT
(Ctrl-C), SIGTERM and SIGHUP stop a run alike: the folder stays marked INCOMPLETE with the signal's
name, one line goes to stderr, and the exit code is 128 + the signal's number (130, 143, 129).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch

from algorithms import SamplerConfig
from algorithms.noise import NOISE_KNOBS, noise_source_name
from recon import distributed, factory
from recon.cli import spec_from_args, spec_options
from recon.factory import PRIOR_METHODS, Measured
from recon.parser import ScriptProfile, parse_args
from recon.results import (
    LOG_NAME,
    RunFolder,
    console_logging,
    create_run_dir,
    environment,
    problem_name,
    run_parent,
    volume_name,
)
from recon.problems import Intensity
from recon.specs import RunSpec
from utils.figures import save_scroll_gif, save_slices_figure
from utils.io import Meta, read_volume
from utils.metrics import PLANES, compute_metrics, format_table
from utils.volume import unit_to_range

log = logging.getLogger("iscs")

METRICS_SPACE = (
    "normalised [0, 1] of the prior: CT HU window [-1000, 1600] mapped to [0, 1], MRI min-max of the input"
)
# The figures' grey window for CT in HU: soft tissue and lung both visible.
CT_DISPLAY_WINDOW = (-1000.0, 600.0)



class StageMemoryError(MemoryError):
    """A stage ran out of memory that the program could not avoid (its message says what to change)."""


# The project's modules report bad input with these; main() turns them into one-line errors.
EXPECTED_ERRORS = (ValueError, TypeError, OSError, MemoryError)

# Signals that stop a run like Ctrl-C; SIGINT itself raises KeyboardInterrupt already.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Stopped(KeyboardInterrupt):
    """The run was stopped by a signal; the process exits with 128 + ``signum``."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def stop_signal(err: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interruption: a :class:`Stopped`'s own, else SIGINT (Ctrl-C)."""
    return signal.Signals(getattr(err, "signum", signal.SIGINT))


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Raise :class:`Stopped` on SIGTERM and SIGHUP while the block runs (main thread only).

    A signal the process inherited as ignored (``nohup``) stays ignored, and a repeat is ignored
    once the first arrived, so that the cleanup that marks the folder finishes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def physical_memory() -> Optional[int]:
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_volume_memory(size: Optional[int], shape: Sequence[int]) -> None:
    """Refuse a ``--recon-size`` whose reconstructed float32 volume alone exceeds physical memory.

    The volume has at most ``max(shape)`` slices (resizing keeps the slice count, ZSR's planes
    contain z) of ``size`` x ``size``, or ``size`` slices where the planes are resized along z.
    """
    memory = physical_memory()
    if size is None or memory is None:
        return
    needed = max(*shape, size) * size * size * 4
    if needed > memory:
        raise MemoryError(
            f"--recon-size {size}: its float32 volume needs {needed / 2**30:.1f} GiB, more than this "
            f"machine's {memory / 2**30:.1f} GiB of memory; accepted: a smaller --recon-size"
        )


@dataclass
class Run:
    """Everything one run works with once its folder exists."""

    spec: RunSpec
    gt: torch.Tensor
    meta: Meta
    intensity: Intensity
    op: Any
    net: Optional[torch.nn.Module]
    sampler: Optional[SamplerConfig]
    folder: distributed.RankZero
    generator: torch.Generator


def prior_name(spec: RunSpec) -> str:
    """The ``<prior>`` level of the results folder: the checkpoint's file name (whatever config it
    is read with), or ``no-prior`` for a method without one."""
    return volume_name(spec.prior.checkpoint) if spec.method.name in PRIOR_METHODS else "no-prior"


def problem_options(spec: RunSpec) -> Dict[str, Any]:
    """The options that name the ``<problem>`` folder, in order (label -> value)."""
    method = spec.method
    options = spec.problem.folder_options()
    if method.name == "ADMM-TV":
        options.update(
            lam=method.tv_weight, rho=method.admm_rho, it=method.admm_iter, nCG=method.admm_cg_iters
        )
    if method.name in PRIOR_METHODS:
        options.update(
            NFE=method.nfe, init=method.use_init, nCG=method.dc_cg_iters, wTIK=method.w_tik, wDZ=method.w_dz
        )
        knobs = "".join(f"-{spec.noise.knobs[knob]:g}" for knob in NOISE_KNOBS if knob in spec.noise.knobs)
        options.update(noise=f"{spec.noise.source}{knobs}", renoise=method.renoise)
    return options


def results_parent(spec: RunSpec) -> Path:
    """The folder that holds the timestamped run folders of ``spec``'s problem."""
    problem = spec.problem
    return run_parent(
        spec.output.results_dir,
        prior_name(spec),
        volume_name(problem.data),
        problem.task,
        problem.parameter,
        spec.method.name,
        problem_name(problem_options(spec)),
    )


def _intermediates_saver(run: Run) -> Callable[[dict], None]:
    def save(step: dict) -> None:
        index, problem = step["i"], run.spec.problem
        _write(run, f"X_hat/step_{index:03d}", problem.to_volume(step["x0"]), f"denoised, step {index}")
        _write(run, f"X_0/step_{index:03d}", problem.to_volume(step["x0_dc"]), f"data-consistent, step {index}")

    return save


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    """Log a stage's start and, when it succeeds, its duration."""
    log.info("%s ...", what)
    start = time.perf_counter()
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise StageMemoryError(
            f"out of GPU memory in {what}; accepted: fewer slices (--slice-begin/--slice-end), "
            "smaller planes (--recon-size), a smaller --slice-batch, or a GPU with more free memory"
        ) from None
    log.info("%s done in %.1f s", what, time.perf_counter() - start)


def _write_figures(
    run: Run, gt: torch.Tensor, volumes: Dict[str, torch.Tensor], main_baseline: str, report: dict
) -> None:
    """``figure.png`` (GT, the main baseline, the method and their errors, in the input's
    intensities) and, with ``--gif``, ``slices.gif``."""
    shown = {main_baseline: main_baseline, "recon": method_label(run.spec)}
    panels = {label: volumes[key].detach().float().cpu().numpy() for key, label in shown.items()}
    captions = {
        shown[key]: f"PSNR {values['psnr']:.2f} / SSIM {values['ssim']:.3f}"
        for key, values in report["metrics"].items()
        if key in shown and values["psnr"] is not None
    }
    intensity = run.intensity
    display = dict(
        units=intensity.units,
        to_units=lambda v: unit_to_range(v, intensity.value_range),
        window=CT_DISPLAY_WINDOW if intensity.units == "HU" else None,
    )
    gt_cpu = gt.detach().float().cpu().numpy()
    problem = run.spec.problem
    title = f"{problem.task}-{problem.parameter} | {volume_name(problem.data)}"
    save_slices_figure(
        run.folder.path / "figure.png",
        gt_cpu,
        panels,
        run.meta["spacing"],
        captions,
        errors=list(panels),
        title=title,
        **display,
    )
    if run.spec.output.gif:
        # The GIF scrolls through the prior's own planes: axial for CT, coronal (containing z) for ZSR.
        plane = next(name for name, axis in PLANES.items() if axis == problem.slice_axis)
        save_scroll_gif(
            run.folder.path / "slices.gif",
            {"GT": gt_cpu, **panels},
            plane=plane,
            spacing=run.meta["spacing"],
            **display,
        )


def _write(run: Run, name: str, volume: torch.Tensor, what: str, meta: Optional[Meta] = None) -> None:
    """Write a volume in the input's intensities (HU for CT), on the run's grid unless ``meta``."""
    intensity = run.intensity
    run.folder.volume(
        name,
        intensity.to_input(volume),
        meta,
        descrip=intensity.describe(what),
        cal_range=intensity.value_range,
    )


NOISE_LABELS = {"iid": "", "iscs": "+ISCS", "shared": "+shared", "ar1": "+AR1"}


def method_label(spec: RunSpec) -> str:
    """The method as figures and file descriptions name it, e.g. "DDS+ISCS", "DDNM", "ADMM-TV"."""
    name = spec.method.name
    if name not in PRIOR_METHODS:
        return name
    label = NOISE_LABELS.get(noise_source_name(spec.noise.source), f"+{spec.noise.source}")
    knobs = ",".join(f"{value:g}" for value in spec.noise.knobs.values())
    return f"{name}{label}" + (f"({knobs})" if knobs else "")


def _execute(run: Run) -> None:
    spec, problem, folder = run.spec, run.spec.problem, run.folder
    # The measurement is simulated once; every baseline and the method see this same y.
    with _stage("simulating the measurement"):
        y = problem.measure(run.op, run.gt, run.generator)
        only = spec.method.name if spec.method.name in problem.BASELINE_METHODS else None
        measured = Measured(problem, run.gt, run.op, y, only)
    name, stack, meta, what = problem.measurement(measured.y, run.meta, run.op)
    if what is None:
        _write(run, name, stack, "measurement", meta)
    else:
        folder.volume(name, stack, meta, descrip=what, intent="projections")
    _write(run, "GT", problem.to_volume(run.gt), "ground truth")

    with _stage("baselines"):
        baselines = measured.baselines
    for name, stack in baselines.stacks.items():
        _write(run, name, problem.to_volume(stack), f"baseline {name}")

    # A volume that already failed to write ends the run now, not after the reconstruction.
    folder.raise_failed()
    with _stage(f"reconstruction ({spec.method.name})"):
        recon = factory.reconstruct(
            spec,
            measured,
            generator=run.generator,
            denoiser=None if run.net is None else factory.make_denoiser(spec.prior, run.net),
            sampler=run.sampler,
            callback=_intermediates_saver(run) if spec.output.save_intermediates else None,
            disable=not (sys.stderr.isatty() and distributed.is_main_process()),
        )
    # Rank 0 evaluates and writes only what every rank finished; the other ranks are done here.
    distributed.check_peers()
    if not distributed.is_main_process():
        return

    # Metrics and figures compare volumes in the normalised [0, 1] space of the ground truth.
    gt = problem.to_volume(run.gt)
    volumes = {name: problem.to_volume(stack) for name, stack in baselines.stacks.items()}
    volumes["recon"] = problem.to_volume(recon)
    with _stage("metrics"):
        report = {"intensity": METRICS_SPACE, **compute_metrics(gt, volumes)}
    folder.json("metrics.json", report)
    table = format_table(report)
    folder.text("metrics.txt", table)
    log.info("metrics (data range %.4g):\n%s", report["data_range"], table)

    _write_figures(run, gt, volumes, baselines.main, report)

    # recon.nii.gz is written last, so a run that fails earlier leaves none.
    folder.flush()
    _write(run, "recon", volumes["recon"], f"recon {method_label(spec)}")


def run(spec: RunSpec, command: Sequence[str] = ()) -> Optional[Path]:
    """Run one reconstruction as ``spec`` says; returns the results folder.

    ``command`` is the command line recorded in ``args.yaml``.

    Stages: device, input volume, prior (DDS/DDNM), preprocessing; then a new results folder with
    ``args.yaml`` and ``run.log``; the simulated measurement, the baselines, the reconstruction,
    ``metrics.json``/``metrics.txt``, figures and ``recon.nii.gz``; the folder's ``INCOMPLETE``
    marker goes away only when all of it is written.

    Under ``torchrun`` every rank runs all of it on the whole volume except the network, whose
    slices the ranks share (``recon.distributed``); only rank 0 writes, and its folder is returned
    (None on the other ranks). A failure on any rank ends every rank with that error.
    """
    device = factory.make_device(spec)
    with distributed.session(device) as launch:
        return _run(spec, device, launch, command)


def _run(
    spec: RunSpec, device: torch.device, launch: distributed.Launch, command: Sequence[str]
) -> Optional[Path]:
    started = time.perf_counter()
    if spec.prior.config is not None and not spec.prior.config.is_file():
        raise FileNotFoundError(f"--config-path {spec.prior.config}: no such file")
    array, meta = read_volume(spec.problem.data)
    net = factory.load_prior(spec.prior, device) if spec.method.name in PRIOR_METHODS else None
    spec = factory.resolve(spec, None if net is None else net.config)
    check_volume_memory(spec.problem.recon_size, array.shape)
    sampler = factory.sampler_config(spec) if net is not None else None
    gt, meta, intensity, source_shape = spec.problem.prepare(array, meta, device)
    if net is not None:
        spec = factory.resolve_compile(spec, tuple(gt.shape))
        factory.check_slice_batch(spec.prior, gt.shape[0])
    op = spec.problem.operator(gt, source_shape)
    if spec.method.name == "DDNM":
        # A pseudo-inverse the operator lacks is refused before the results folder exists.
        factory.make_pinv(spec.method, op)

    parent = results_parent(spec)
    # Every rank is ready (input, prior, operator) before rank 0 creates the results folder.
    distributed.check_peers()
    folder = distributed.RankZero(lambda: RunFolder(_new_run_dir(spec, parent), meta))
    folder.start_log()
    try:
        log.info("results folder: %s", folder.path)
        if launch.world_size > 1 and spec.method.name not in PRIOR_METHODS:
            log.warning(
                "%s has no network to share: each of the %d processes computes all of it",
                spec.method.name,
                launch.world_size,
            )
        log.info("ground truth: %d slices of %d x %d on %s", gt.shape[0], gt.shape[2], gt.shape[3], device)
        if net is not None:
            log.info(
                "prior: %s (sigma %g .. %g)",
                spec.prior.checkpoint,
                spec.prior.sigma_min,
                spec.prior.sigma_max,
            )
        record = {
            "options": spec_options(spec),
            **environment(device, command),
            "processes": launch.world_size,
        }
        folder.yaml("args.yaml", record)
        generator = torch.Generator(device=device).manual_seed(spec.seed)
        _execute(Run(spec, gt, meta, intensity, op, net, sampler, folder, generator))
        folder.complete()
        log.info("finished in %.1f s: %s", time.perf_counter() - started, folder.path)
        if device.type == "cuda":
            log.info("peak GPU memory: %.2f GiB allocated", torch.cuda.max_memory_allocated(device) / 2**30)
    except BaseException as err:
        reason = _describe_failure(err)
        log.error("run failed: %s (the folder stays marked INCOMPLETE; see %s)", reason, LOG_NAME)
        log.debug("traceback", exc_info=True)
        # The queued volumes end first (a stopped run drops those not started); a folder whose
        # reason cannot be written (a full disk) keeps its first INCOMPLETE marker.
        with contextlib.suppress(Exception):
            if isinstance(err, KeyboardInterrupt):
                folder.abandon()
            else:
                folder.flush()
        with contextlib.suppress(OSError):
            folder.fail(reason)
        raise
    finally:
        folder.stop_log()
    return folder.path


def _new_run_dir(spec: RunSpec, parent: Path) -> Path:
    try:
        return create_run_dir(parent)
    except OSError as err:
        raise OSError(
            f"--results-dir {spec.output.results_dir}: cannot create {parent} ({err.strerror or err}); "
            "accepted: a directory you can write to"
        ) from None


def _describe_failure(err: BaseException) -> str:
    if isinstance(err, Stopped):
        return str(err)
    if isinstance(err, KeyboardInterrupt):
        return "stopped by SIGINT: interrupted (KeyboardInterrupt)"
    return f"{type(err).__name__}: {_one_line(err)}"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(profile: ScriptProfile, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` with ``profile``'s defaults and run; returns the process exit code.

    Under torchrun only rank 0 logs and prints errors, its own or a failed peer's; another rank
    prints only an error that could not reach rank 0. A rank stopped by a peer's failure exits
    with code 0, so that torchrun names the rank that failed (and exits non-zero itself). A signal
    (SIGINT, SIGTERM, SIGHUP; torchrun passes them to every rank) stops every rank with exit code
    128 + its number; rank 0 prints the one line.
    """
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    is_main = True
    with stopping_on_signals():
        try:
            is_main = distributed.launch_from_env().is_main
            spec = spec_from_args(parse_args(profile, argv))
            return _main(spec, profile, argv, is_main)
        except KeyboardInterrupt as err:
            number = stop_signal(err)
            if is_main:
                what = "interrupted" if number == signal.SIGINT else f"stopped by {number.name}"
                print(f"error: {what}; a results folder already made stays marked INCOMPLETE", file=sys.stderr)
            return 128 + number


def _main(spec: RunSpec, profile: ScriptProfile, argv: Sequence[str], is_main: bool) -> int:
    with console_logging() if is_main else distributed.silent_logging(), contextlib.ExitStack() as group:
        try:
            # The process group outlives the error printed below, so no rank exits before rank 0 printed it.
            group.enter_context(distributed.session(factory.make_device(spec)))
            run(spec, [profile.prog, *argv])
        except EXPECTED_ERRORS as err:
            if is_main or not distributed.reported(err):
                print(f"error: {_one_line(err)}", file=sys.stderr)
            return 2
        except distributed.PeerFailure as err:
            if is_main:
                print(f"error: {_one_line(err)}", file=sys.stderr)
    return 0
