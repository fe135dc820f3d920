"""The reconstruction problems: cone-beam CT (LACT, SVCT) and MRI z-axis super-resolution (ZSR).

A problem is a frozen value, :class:`ProblemSpec`, whose subclass carries the problem's own named
parameters (``arc_degrees``, ``num_views``, ``factor``...). It turns the input volume into the
ground-truth slice stack the prior sees, builds the operator, simulates the measurement, computes
the classical baselines from that same measurement, and says how slice stacks map back to volumes
``[D, H, W]`` and how the measurement is written.

Adding a problem takes this module (its class and its :class:`ScriptProfile` in ``PROFILES``) and
its entry script, which passes the profile to ``recon.run.main``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, NamedTuple, Optional, Tuple

import torch

from recon.factory import SAMPLER_STEPS, SOLVERS
from recon.parser import ScriptProfile, count, sino_noise
from utils.io import Meta
from utils.volume import (
    HU_WINDOW,
    crop_slices,
    hu_to_unit,
    min_max_with_range,
    reorient,
    resize_plane,
    source_axis,
    unit_to_range,
)

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
class Intensity:
    """How the prior's [0, 1] values map back to the input's intensities.

    Args:
        value_range: the input intensities that 0 and 1 stand for (CT: the HU window; MRI: the
            input volume's minimum and maximum).
        units: their unit ("HU" for CT; "" when the input's scale has no known unit).
    """

    value_range: Tuple[float, float]
    units: str = ""

    def to_input(self, volume: torch.Tensor) -> torch.Tensor:
        """``volume`` in [0, 1] -> the input's intensities."""
        return unit_to_range(volume, self.value_range)

    def describe(self, what: str) -> str:
        """A NIfTI ``descrip`` naming ``what`` the volume holds and its unit (at most 79 characters)."""
        unit = self.units or "input intensity scale"
        return f"{what}, {unit}"[:79]


class Prepared(NamedTuple):
    """The ground truth as the prior sees it, the geometry of its volume, its intensity map, and the
    shape ``[D, H, W]`` of the input volume it was resized from (reoriented and cropped)."""

    gt: torch.Tensor
    meta: Meta
    intensity: Intensity
    source_shape: Tuple[int, int, int]


@dataclass(frozen=True)
class Baselines:
    """The classical reconstructions of one measurement, in the order they are written.

    Args:
        stacks: name -> slice stack ``[N, 1, h, w]``; the name is the file name.
        main: the name of the main baseline: the figure's comparison and ``--use-init``'s start.
        methods: classical method -> the name of the baseline it returns (e.g. "FDK" -> "FBP-LV").
    """

    stacks: Dict[str, torch.Tensor]
    main: str
    methods: Dict[str, str]

    def __post_init__(self):
        missing = sorted(({self.main} | set(self.methods.values())) - set(self.stacks))
        if missing:
            raise ValueError(f"Baselines: {missing} name no stack; accepted: {', '.join(self.stacks)}")

    @property
    def main_stack(self) -> torch.Tensor:
        """The main baseline's slice stack."""
        return self.stacks[self.main]

    def of_method(self, method: str) -> torch.Tensor:
        """The slice stack that the classical ``method`` returns."""
        if method not in self.methods:
            raise ValueError(
                f"method {method!r} returns no baseline here; accepted: {', '.join(self.methods)}"
            )
        return self.stacks[self.methods[method]]


@dataclass(frozen=True, kw_only=True)
class ProblemSpec:
    """What is reconstructed: one task of a problem family, its input volume and the part kept.

    Subclasses add the problem's own named parameters as fields and implement :meth:`normalise`,
    :meth:`operator`, :meth:`measure`, :meth:`baselines` and :meth:`measurement`.

    Args:
        task: a key of the class's ``PARAMETERS``.
        data: the input volume file (NIfTI, or a tensor file ``utils.io`` reads).
        slice_begin, slice_end: the slices kept along the prior's slice axis; both 0: all.
        recon_size: side of the square planes the prior sees, after antialiased resizing; None
            keeps the input size.
    """

    task: str
    data: Path
    slice_begin: int = 0
    slice_end: int = 0
    recon_size: Optional[int] = None

    slice_axis: ClassVar[int]
    """Array axis of ``[D, H, W]`` along which the prior's slices are stacked."""
    PARAMETERS: ClassVar[Dict[str, str]]
    """task -> the field holding its named parameter (what the command line's ``--degree`` sets)."""
    BASELINE_METHODS: ClassVar[Tuple[str, ...]] = ()
    """The classical methods that return one of the baselines."""
    DDNM_PINV: ClassVar[str] = "cg"
    """DDNM's pseudo-inverse when the run names none (a key of ``physics.PSEUDO_INVERSES``)."""

    def __post_init__(self):
        name = type(self).__name__
        if self.task not in self.PARAMETERS:
            accepted = ", ".join(self.PARAMETERS)
            raise ValueError(f"{name}: task {self.task!r} is not accepted; accepted: {accepted}")
        if self.parameter is None:
            raise ValueError(f"{name}: task {self.task} needs {self.PARAMETERS[self.task]}")

    def folder_options(self) -> Dict[str, object]:
        """The problem's part of the results folder's name (label -> value): the slice range."""
        whole = self.slice_begin == 0 and self.slice_end == 0
        return {"s": "all" if whole else f"{self.slice_begin}-{self.slice_end}"}

    @property
    def parameter(self):
        """The value of the task's named parameter (views, arc in degrees, factor...)."""
        return getattr(self, self.PARAMETERS[self.task])

    def to_stack(self, volume: torch.Tensor) -> torch.Tensor:
        """Volume ``[D, H, W]`` -> the prior's slice stack ``[N, 1, h, w]``."""
        return volume.movedim(self.slice_axis, 0).unsqueeze(1).contiguous()

    def to_volume(self, stack: torch.Tensor) -> torch.Tensor:
        """Slice stack ``[N, 1, h, w]`` -> volume ``[D, H, W]``."""
        return stack[:, 0].movedim(0, self.slice_axis)

    def normalise(self, volume: torch.Tensor) -> Tuple[torch.Tensor, Intensity]:
        """Map the whole volume (before cropping) to [0, 1]; also how to map back."""
        raise NotImplementedError

    def prepare(self, array, meta: Meta, device: torch.device) -> Prepared:
        """Reorient to LPI, normalise to [0, 1], crop the slice range, resize the planes.

        Args:
            array: the volume as read from ``data``, ``[D, H, W]``.
            meta: its geometry.
            device: where the ground truth lives.

        Returns:
            ``(gt, meta, intensity)``: the ground-truth slice stack ``[N, 1, h, w]``, the geometry of
            the volume it stacks back into (written into every output file), and the map from
            [0, 1] back to the input's intensities (every output volume is written in those).
        """
        begin, end = self._oriented_range(array.shape, meta)
        oriented, meta = reorient(array, meta, ORIENTATION)
        volume = torch.from_numpy(oriented.copy()).to(device)
        _require_finite(volume, self.data)
        volume, intensity = self.normalise(volume)
        volume, meta = crop_slices(volume, meta, self.slice_axis, begin, end)
        cropped = self.slice_begin != 0 or self.slice_end != 0
        kept = f" in slices [{self.slice_begin}, {self.slice_end})" if cropped else ""
        _require_structure(volume, f"{self.data}{kept}")
        source_shape = tuple(volume.shape)
        if self.recon_size is not None:
            volume, meta = resize_plane(volume, meta, self.slice_axis, self.recon_size)
        return Prepared(self.to_stack(volume), meta, intensity, source_shape)

    def _oriented_range(self, shape, meta: Meta) -> Tuple[int, int]:
        """The slice range after reorientation to LPI of the range given in the file's own order.

        ``slice_begin``/``slice_end`` count slices along the file's axis that becomes the prior's
        slice axis, in the order a viewer shows the file; reorientation may reverse that order.
        """
        begin, end = self.slice_begin, self.slice_end
        axis, flipped = source_axis(meta, ORIENTATION, self.slice_axis)
        length = shape[axis]
        if begin == 0 and end == 0:
            return 0, 0
        if not 0 <= begin < end <= length:
            raise ValueError(
                f"slice range [{begin}, {end}) is empty or outside the volume; "
                f"accepted: 0 <= begin < end <= {length} (or both 0 for the whole volume)"
            )
        oriented = (length - end, length - begin) if flipped else (begin, end)
        log.info(
            "slices [%d, %d) along the file's array axis %d are [%d, %d) after reorientation to %s",
            begin, end, axis, *oriented, ORIENTATION,
        )
        return oriented

    def operator(self, gt: torch.Tensor, source_shape: Optional[Tuple[int, int, int]] = None):
        """The forward operator for the ground-truth stack ``gt`` (validates the named parameter);
        ``source_shape`` is the input volume's shape before resizing (None: ``gt``'s own grid)."""
        raise NotImplementedError

    def measure(self, op, gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The simulated (noisy) measurement ``y`` of ``gt``."""
        raise NotImplementedError

    def baselines(self, op, y: torch.Tensor, gt: torch.Tensor, only: Optional[str] = None) -> Baselines:
        """The classical reconstructions from ``y``; with ``only`` (one of ``BASELINE_METHODS``),
        just the one that method returns, so a baseline run costs no more than itself."""
        raise NotImplementedError

    def measurement(self, y: torch.Tensor, meta: Meta, op) -> Tuple[str, torch.Tensor, Meta, Optional[str]]:
        """How ``y`` is written: ``(file name, 3D tensor, meta, description)``; the description is
        None for a measurement in the volume's own intensities (written like the volumes), else
        what the array holds (it is written as non-anatomical data, e.g. projections)."""
        raise NotImplementedError


# ---------------------------------------------------------------- cone-beam CT (LACT, SVCT)


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


@dataclass(frozen=True, kw_only=True)
class CBCTProblem(ProblemSpec):
    """Cone-beam CT of a limited arc (LACT) or of sparse views (SVCT), on axial slices.

    Args:
        arc_degrees: LACT: the covered arc in degrees (1..360).
        num_views: SVCT: the number of views, evenly spaced over the full circle (1..360).
        sino_noise: projection noise: <= 0 none, (0, 100) Gaussian with std sqrt(value), >= 100
            Poisson with I0 = value (``physics.noise_from_sino_noise``).
        sirt_iter: iterations of the SIRT-LV baseline.
        baseline_backend: "astra" (CUDA only), "torch", or "auto" (astra when usable).
    """

    arc_degrees: Optional[int] = None
    num_views: Optional[int] = None
    sino_noise: float = 0.0
    sirt_iter: int = 30
    baseline_backend: str = "auto"

    slice_axis: ClassVar[int] = 0
    PARAMETERS: ClassVar[Dict[str, str]] = {"SVCT": "num_views", "LACT": "arc_degrees"}
    BASELINE_METHODS: ClassVar[Tuple[str, ...]] = ("FDK", "SIRT")
    DDNM_PINV: ClassVar[str] = "sirt"

    def folder_options(self) -> Dict[str, object]:
        """The slice range, and the projection noise when there is any."""
        options = super().folder_options()
        if self.sino_noise > 0:
            options["sino"] = self.sino_noise
        return options

    def normalise(self, volume: torch.Tensor) -> Tuple[torch.Tensor, Intensity]:
        """Clamp HU to the CT window and map it to [0, 1]."""
        return hu_to_unit(volume), Intensity(HU_WINDOW, "HU")

    def operator(self, gt: torch.Tensor, source_shape: Optional[Tuple[int, int, int]] = None):
        """The cone-beam projector of the task's views for a volume shaped like ``gt``."""
        import physics

        depth, _, height, width = gt.shape
        geometry = physics.ConeBeamGeometry.for_volume((depth, height, width))
        views = physics.select_views(self.task, self.parameter)
        return physics.ConeBeamCT(geometry, views=views, device=gt.device)

    def measure(self, op, gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The projections of ``gt`` with the ``sino_noise`` model's noise."""
        import physics

        clean = op.A(gt)
        noise = physics.noise_from_sino_noise(self.sino_noise)
        y = noise.noise(clean, generator)
        if self.sino_noise > 0:
            log.info("measurement noise: %s, SNR %.2f dB", noise, physics.snr_db(clean, y))
        return y

    def baselines(self, op, y: torch.Tensor, gt: torch.Tensor, only: Optional[str] = None) -> Baselines:
        """FDK of the kept views (FBP-LV) and of all views (FBP-FV), and SIRT of the kept views;
        ``only="FDK"`` or ``"SIRT"`` computes just that one."""
        import physics

        if _use_astra(self.baseline_backend, gt.device):
            from physics import astra_baselines

            prefix = "astra-"
            makers = {
                "FBP-LV": lambda: astra_baselines.fdk_astra(op.geometry, y, views=op.views),
                "FBP-FV": lambda: astra_baselines.fdk_astra(op.geometry, op.A_full(gt)),
                "SIRT-LV": lambda: astra_baselines.sirt_astra(op.geometry, y, self.sirt_iter, views=op.views),
            }
        else:
            prefix = ""
            makers = {
                "FBP-LV": lambda: op.fdk(y),
                "FBP-FV": lambda: op.fdk(op.A_full(gt), full=True),
                "SIRT-LV": lambda: physics.sirt(op, y, self.sirt_iter),
            }
        returns = {"FDK": "FBP-LV", "SIRT": "SIRT-LV"}
        names = [returns[only]] if only is not None else list(makers)
        stacks = {f"{prefix}{name}": makers[name]() for name in names}
        methods = {method: f"{prefix}{name}" for method, name in returns.items() if name in names}
        return Baselines(stacks, main=f"{prefix}{names[0]}", methods=methods)

    def measurement(self, y: torch.Tensor, meta: Meta, op) -> Tuple[str, torch.Tensor, Meta, Optional[str]]:
        """The projections, one detector image per kept view, at the detector's spacing: line
        integrals of the normalised volume (value x mm), not anatomy."""
        spacing = op.geometry.det_spacing
        what = "projections [views, rows, cols], line integrals (value x mm)"
        return "measurement", y, {"spacing": (spacing, spacing, 1.0)}, what


# ---------------------------------------------------------------- MRI z-axis super-resolution


@dataclass(frozen=True, kw_only=True)
class ZSRProblem(ProblemSpec):
    """MRI z-axis super-resolution: groups of ``factor`` thin slices averaged into thick ones, on
    coronal planes (which contain z).

    Args:
        factor: thin slices averaged into one thick slice (2 .. slices along z).
    """

    factor: Optional[int] = None

    slice_axis: ClassVar[int] = 1
    PARAMETERS: ClassVar[Dict[str, str]] = {"ZSR": "factor"}
    BASELINE_METHODS: ClassVar[Tuple[str, ...]] = ("A_dagger",)
    DDNM_PINV: ClassVar[str] = "exact"

    def normalise(self, volume: torch.Tensor) -> Tuple[torch.Tensor, Intensity]:
        """Map the volume's range to [0, 1]."""
        unit, value_range = min_max_with_range(volume)
        return unit, Intensity(value_range)

    def operator(self, gt: torch.Tensor, source_shape: Optional[Tuple[int, int, int]] = None):
        """The slab-averaging operator along z of the stack ``gt``: each thick slice averages
        ``factor`` slices of the INPUT's own z grid (``source_shape[0]`` slices), also when the
        planes were resized to another number of slices along z."""
        import physics

        length = gt.shape[2]
        source = length if source_shape is None else source_shape[0]
        if source < 2:
            raise ValueError(f"{self.data}: {source} slice along z; ZSR needs a volume of at least 2 slices")
        if not 2 <= self.factor <= source:
            raise ValueError(
                f"ZSR factor {self.factor} is out of range; accepted: 2 <= factor <= {source} "
                "(the input's slices along z)"
            )
        if source == length:
            return physics.ZAxisSuperResolution(self.factor, axis=2, length=length)
        op = physics.SlabAverage(self.factor, source, length, axis=2)
        log.info(
            "ZSR: %d input slices along z resampled to %d; each thick slice averages %d input slices "
            "(%.3g slices of the prior's grid)",
            source, length, self.factor, op.slab,
        )
        return op

    def measure(self, op, gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The thick slices (noise-free)."""
        return op.A(gt)

    def baselines(self, op, y: torch.Tensor, gt: torch.Tensor, only: Optional[str] = None) -> Baselines:
        """The pseudo-inverse of the thick slices (ATy)."""
        return Baselines({"ATy": op.A_dagger(y)}, main="ATy", methods={"A_dagger": "ATy"})

    def measurement(self, y: torch.Tensor, meta: Meta, op) -> Tuple[str, torch.Tensor, Meta, Optional[str]]:
        """The thick slices, centred in the middle of each group of ``factor`` thin slices."""
        factor = getattr(op, "slab", op.factor)
        spacing = list(meta["spacing"])
        shift = (factor - 1) / 2 * spacing[2]
        direction_z = meta["direction"][2::3]
        origin = tuple(o + d * shift for o, d in zip(meta["origin"], direction_z))
        spacing[2] *= factor
        return "y", self.to_volume(y), {**meta, "spacing": tuple(spacing), "origin": origin}, None


# ---------------------------------------------------------------- the entry scripts

# Methods every script offers besides its problem's baselines: the factory's registry.
GENERAL_METHODS = (*SAMPLER_STEPS, *SOLVERS)

CBCT_PROFILE = ScriptProfile(
    prog="recon_CBCT.py",
    description="Cone-beam CT from a limited arc (LACT) or sparse views (SVCT) with a 2D diffusion prior "
    "and inter-slice consistent noise; simulates the projections of --data and reconstructs them.",
    problem=CBCTProblem,
    degree=30,
    degree_help="LACT: covered arc in degrees (1..360); SVCT: number of views (1..360)",
    methods=GENERAL_METHODS + CBCTProblem.BASELINE_METHODS,
    data=REPO / "data/demo/ct_phantom_demo.nii.gz",
    checkpoint=REPO / "checkpoints/ct_dr_128.pt",
    extra=(
        (
            "--sino-noise",
            dict(
                type=sino_noise,
                default=CBCTProblem.sino_noise,
                help="projection noise: 0 none, (0, 100) Gaussian "
                "with std sqrt(value), >= 100 Poisson with I0 = value (physics.noise_from_sino_noise)",
            ),
        ),
        (
            "--sirt-iter",
            dict(type=count, default=CBCTProblem.sirt_iter, help="iterations of the SIRT-LV baseline"),
        ),
        (
            "--baseline-backend",
            dict(
                choices=BASELINE_BACKENDS,
                default=CBCTProblem.baseline_backend,
                help="FDK/SIRT baselines: astra (CUDA only), torch, or auto (astra when usable)",
            ),
        ),
    ),
)
ZSR_PROFILE = ScriptProfile(
    prog="recon_MRI_ZSR.py",
    description="MRI z-axis super-resolution: averages groups of --degree slices along z of --data and "
    "recovers the thin slices with a 2D diffusion prior on planes that contain z (coronal).",
    problem=ZSRProblem,
    degree=4,
    degree_help="ZSR: the factor, number of thin slices averaged into one thick slice (>= 2)",
    methods=GENERAL_METHODS + ZSRProblem.BASELINE_METHODS,
    data=REPO / "data/demo/mri_demo.nii.gz",
    checkpoint=REPO / "checkpoints/mri_dr_128.pt",
)

PROFILES: Dict[str, ScriptProfile] = {
    task: profile for profile in (CBCT_PROFILE, ZSR_PROFILE) for task in profile.tasks
}
"""task -> the profile of the entry script that runs it."""

PROBLEMS: Dict[str, type] = {task: profile.problem for task, profile in PROFILES.items()}
"""task -> its problem class."""
