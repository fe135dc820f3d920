"""The two reconstruction problems the entry scripts run: cone-beam CT (LACT, SVCT) and MRI ZSR.

A task turns the input volume into the ground-truth slice stack the prior sees, simulates the
measurement, computes the classical baselines from that same measurement, and says how slice
stacks map back to volumes ``[D, H, W]`` for writing. ``TASKS`` maps ``--task`` to its task.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

from utils.cli import ScriptProfile, finite_float, positive_int
from utils.io import Meta
from utils.volume import crop_slices, hu_to_unit, min_max, reorient, resize_plane

log = logging.getLogger("iscs")

# Default inputs live in the repository, so the scripts find them from any working directory.
REPO = Path(__file__).resolve().parents[1]
ORIENTATION = "LPI"
BASELINE_BACKENDS = ("auto", "torch", "astra")


def _require_finite(volume: torch.Tensor, path: Path) -> None:
    if not bool(torch.isfinite(volume).all()):
        raise ValueError(f"{path}: the volume contains NaN or infinite values; a finite volume is accepted")


def _require_structure(volume: torch.Tensor, what: str) -> None:
    if not bool(volume.max() > volume.min()):
        raise ValueError(
            f"{what}: the volume is constant (every voxel is {float(volume.min()):g} after normalisation); "
            "a volume with structure is accepted"
        )


@dataclass(frozen=True)
class Task:
    """One problem family: how the volume is prepared and measured.

    Args:
        slice_axis: array axis of ``[D, H, W]`` along which the prior's slices are stacked
            (0: axial planes for CT, 1: coronal planes, which contain z, for ZSR).
        normalise: maps the whole volume (before cropping) to [0, 1].
        operator: ``(gt, args) -> op``, the forward operator (validates ``--degree``).
        measure: ``(op, gt, args, generator) -> y``, the simulated (noisy) measurement.
        baselines: ``(op, y, gt, args) -> {name: slice stack}``, the first entry the main baseline.
        measurement: ``(y, meta, op) -> (file name, 3D tensor, meta)``: how ``y`` is written.
    """

    slice_axis: int
    normalise: Callable[[torch.Tensor], torch.Tensor]
    operator: Callable
    measure: Callable
    baselines: Callable
    measurement: Callable

    def to_stack(self, volume: torch.Tensor) -> torch.Tensor:
        """Volume ``[D, H, W]`` -> the prior's slice stack ``[N, 1, h, w]``."""
        return volume.movedim(self.slice_axis, 0).unsqueeze(1).contiguous()

    def to_volume(self, stack: torch.Tensor) -> torch.Tensor:
        """Slice stack ``[N, 1, h, w]`` -> volume ``[D, H, W]``."""
        return stack[:, 0].movedim(0, self.slice_axis)

    def prepare(
        self, array, meta: Meta, args: argparse.Namespace, device: torch.device
    ) -> Tuple[torch.Tensor, Meta]:
        """Reorient to LPI, normalise to [0, 1], crop the slice range, resize the planes.

        Args:
            array: the volume as read, ``[D, H, W]``.
            meta: its geometry.
            args: the resolved options (``data``, ``slice_begin``, ``slice_end``, and ``recon_size``:
                the side of the prior's square planes, or None to keep the input size).
            device: where the ground truth lives.

        Returns:
            ``(gt, meta)``: the ground-truth slice stack ``[N, 1, h, w]`` and the geometry of the
            volume it stacks back into (written into every output file).
        """
        oriented, meta = reorient(array, meta, ORIENTATION)
        volume = torch.from_numpy(oriented.copy()).to(device)
        _require_finite(volume, args.data)
        volume = self.normalise(volume)
        volume, meta = crop_slices(volume, meta, self.slice_axis, args.slice_begin, args.slice_end)
        cropped = args.slice_begin != 0 or args.slice_end != 0
        _require_structure(
            volume, f"{args.data}" + (f" in slices [{args.slice_begin}, {args.slice_end})" if cropped else "")
        )
        if args.recon_size is not None:
            volume, meta = resize_plane(volume, meta, self.slice_axis, args.recon_size)
        return self.to_stack(volume), meta


# ---------------------------------------------------------------- cone-beam CT (LACT, SVCT)


def _cbct_operator(gt: torch.Tensor, args: argparse.Namespace):
    import physics

    depth, _, height, width = gt.shape
    geometry = physics.ConeBeamGeometry.for_volume((depth, height, width))
    return physics.ConeBeamCT(geometry, views=physics.select_views(args.task, args.degree), device=gt.device)


def _measure_cbct(op, gt: torch.Tensor, args: argparse.Namespace, generator: torch.Generator) -> torch.Tensor:
    import physics

    clean = op.A(gt)
    noise = physics.noise_from_sino_noise(args.sino_noise)
    y = noise.noise(clean, generator)
    if args.sino_noise > 0:
        log.info("measurement noise: %s, SNR %.2f dB", noise, physics.snr_db(clean, y))
    return y


def _astra_baselines(
    op, y: torch.Tensor, gt: torch.Tensor, args: argparse.Namespace
) -> Dict[str, torch.Tensor]:
    from physics import astra_baselines

    return {
        "astra-FBP-LV": astra_baselines.fdk_astra(op.geometry, y, views=op.views),
        "astra-FBP-FV": astra_baselines.fdk_astra(op.geometry, op.A_full(gt)),
        "astra-SIRT-LV": astra_baselines.sirt_astra(op.geometry, y, args.sirt_iter, views=op.views),
    }


def _torch_baselines(
    op, y: torch.Tensor, gt: torch.Tensor, args: argparse.Namespace
) -> Dict[str, torch.Tensor]:
    import physics

    return {
        "FBP-LV": op.fdk(y),
        "FBP-FV": op.fdk(op.A_full(gt), full=True),
        "SIRT-LV": physics.sirt(op, y, args.sirt_iter),
    }


def _use_astra(backend: str, device: torch.device) -> bool:
    """astra runs the baselines when asked for (or auto) on a CUDA device where it has CUDA."""
    if backend == "torch":
        return False
    if device.type != "cuda":
        if backend == "astra":
            warnings.warn(
                "--baseline-backend astra runs on CUDA devices only: using the torch baselines", stacklevel=2
            )
        return False
    from physics.astra_baselines import astra_cuda_available

    return astra_cuda_available()


def _cbct_baselines(
    op, y: torch.Tensor, gt: torch.Tensor, args: argparse.Namespace
) -> Dict[str, torch.Tensor]:
    use_astra = _use_astra(args.baseline_backend, gt.device)
    return (_astra_baselines if use_astra else _torch_baselines)(op, y, gt, args)


def _cbct_measurement(y: torch.Tensor, meta: Meta, op) -> Tuple[str, torch.Tensor, Meta]:
    spacing = op.geometry.det_spacing
    return "measurement", y, {"spacing": (spacing, spacing, 1.0)}


# ---------------------------------------------------------------- MRI z-axis super-resolution


def _zsr_operator(gt: torch.Tensor, args: argparse.Namespace):
    import physics

    length = gt.shape[2]
    if not 2 <= args.degree <= length:
        raise ValueError(
            f"ZSR factor {args.degree} is out of range; accepted: 2 <= factor <= {length} (slices along z)"
        )
    return physics.ZAxisSuperResolution(args.degree, axis=2, length=length)


def _measure_zsr(op, gt: torch.Tensor, args: argparse.Namespace, generator: torch.Generator) -> torch.Tensor:
    return op.A(gt)


def _zsr_baselines(
    op, y: torch.Tensor, gt: torch.Tensor, args: argparse.Namespace
) -> Dict[str, torch.Tensor]:
    return {"ATy": op.A_dagger(y)}


def _zsr_measurement(y: torch.Tensor, meta: Meta, op) -> Tuple[str, torch.Tensor, Meta]:
    # The thick slices' centres sit in the middle of each group of `factor` thin slices.
    factor = op.factor
    spacing = list(meta["spacing"])
    shift = (factor - 1) / 2 * spacing[2]
    direction_z = meta["direction"][2::3]
    origin = tuple(o + d * shift for o, d in zip(meta["origin"], direction_z))
    spacing[2] *= factor
    return "y", ZSR.to_volume(y), {**meta, "spacing": tuple(spacing), "origin": origin}


CBCT = Task(
    slice_axis=0,
    normalise=hu_to_unit,
    operator=_cbct_operator,
    measure=_measure_cbct,
    baselines=_cbct_baselines,
    measurement=_cbct_measurement,
)
ZSR = Task(
    slice_axis=1,
    normalise=min_max,
    operator=_zsr_operator,
    measure=_measure_zsr,
    baselines=_zsr_baselines,
    measurement=_zsr_measurement,
)
TASKS: Dict[str, Task] = {"LACT": CBCT, "SVCT": CBCT, "ZSR": ZSR}

# Methods that only return one of the baselines: method -> baseline name (without an "astra-" prefix).
BASELINE_METHODS = {"FDK": "FBP-LV", "SIRT": "SIRT-LV"}

CBCT_PROFILE = ScriptProfile(
    prog="recon_CBCT.py",
    description="Cone-beam CT from a limited arc (LACT) or sparse views (SVCT) with a 2D diffusion prior "
    "and inter-slice consistent noise; simulates the projections of --data and reconstructs them.",
    tasks=("LACT", "SVCT"),
    degree=90,
    degree_help="LACT: covered arc in degrees (1..360); SVCT: number of views (1..360)",
    methods=("DDS", "DDNM", "ADMM-TV", "FDK", "SIRT"),
    data=REPO / "data/demo/ct_phantom_demo.nii.gz",
    checkpoint=REPO / "checkpoints/ct_phantom_128.pt",
    extra=(
        (
            "--sino-noise",
            dict(
                type=finite_float,
                default=0.0,
                help="projection noise: <= 0 none, (0, 100) Gaussian "
                "with std sqrt(value), >= 100 Poisson with I0 = value (physics.noise_from_sino_noise)",
            ),
        ),
        ("--sirt-iter", dict(type=positive_int, default=30, help="iterations of the SIRT-LV baseline")),
        (
            "--baseline-backend",
            dict(
                choices=BASELINE_BACKENDS,
                default="auto",
                help="FDK/SIRT baselines: astra (CUDA only), torch, or auto (astra when usable)",
            ),
        ),
    ),
)
ZSR_PROFILE = ScriptProfile(
    prog="recon_MRI_ZSR.py",
    description="MRI z-axis super-resolution: averages groups of --degree slices along z of --data and "
    "recovers the thin slices with a 2D diffusion prior on planes that contain z (coronal).",
    tasks=("ZSR",),
    degree=4,
    degree_help="ZSR: the factor, number of thin slices averaged into one thick slice (>= 2)",
    methods=("DDS", "DDNM", "ADMM-TV"),
    data=REPO / "data/demo/mri_demo.nii.gz",
    checkpoint=REPO / "checkpoints/mri_zsr_128.pt",
)
