"""Brain MRI volumes from the MNI152 2009 T1 template, with random augmentation for training.

The template (197 x 233 x 189 voxels of 1 mm, uint8) ships inside the ``nilearn`` package
(``pip install --no-deps nilearn`` is enough); it is located without importing nilearn and read
with SimpleITK. An augmented volume resamples it onto a 128^3 grid of 1.5 mm (a 192 mm cube centred
on the brain, in LPI orientation: array axes D, H, W point inferior, posterior, left, so a coronal
slice ``volume[:, j, :]`` shows the head upright) through a random smooth deformation (cubic
B-spline displacement on a 6^3 control grid, about 3 mm), a small affine jitter (up to 6 degrees,
+-7 % scale, 6 mm shift), then changes the intensities (gamma, a smooth multiplicative bias field,
a soft contrast curve) and min-max normalises the result to [0, 1].

With an ``MRIAppearance`` the augmenter also covers what a user's T1 or T2 volume looks like (the
training default of ``--data mri-dr``): a contrast remap of the template's tissue classes before the
intensity changes (T1-like; T2-like, a non-monotonic remap with bright CSF and gray matter above white
matter; PD-like; FLAIR-like, dark CSF), a stronger bias field, lower resolution along random axes
(Gaussian blur or block averaging and linear upsampling) and Rician noise. Its random draws come from
a second stream of the seed, so the original augmentation of a seed is unchanged by it.

Held-out rule, stated plainly: every volume is the same template brain; training draws its
augmentation seeds from ``TRAIN_SEEDS`` (0 .. 999,999) only, and evaluation volumes (the shipped demo
uses ``DEMO_SEED`` = 1,000,000) use ``EVAL_SEEDS`` (1,000,000 .. 1,000,999), which
:func:`check_train_seed` refuses. An evaluation volume is therefore a deformation and contrast the
prior never saw, of an anatomy it did see: it tests reconstruction, not generalisation to new
subjects.

CLI: ``python -m datasets.mri --seed 1000000 --out data/demo/mri_demo.nii.gz``; ``python -m datasets.mri
--save-template --out data/cache/mni152_t1.pt`` writes a copy of the template that loads without
SimpleITK or nilearn (for training on a GPU machine that has neither).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from datasets.fields import blur_axis, bspline_matrix, interpolate_grid, piecewise_linear
from datasets.seeds import check_seed
from utils.volume import min_max

TEMPLATE_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TRAIN_SEEDS = range(1_000_000)
EVAL_SEEDS = range(1_000_000, 1_001_000)
DEMO_SEED = EVAL_SEEDS[0]
OUTPUT_SHAPE = (128, 128, 128)
OUTPUT_SPACING = 1.5
# Centre of the brain in template voxel coordinates (x, y, z): the middle of its bounding box.
BRAIN_CENTER = (98.0, 117.0, 77.0)
# Output axis directions: the array axes W, H, D point to the patient's left, posterior and inferior
# (LPI), the orientation the reconstruction scripts reorient every volume to.
LPI = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
# Offset between a seed's augmentation stream and its appearance stream (larger than any seed range).
_APPEARANCE_STREAM = 1 << 40


def check_train_seed(seed: int) -> int:
    """Return ``seed`` if it may be used for training; raise ValueError for held-out or unknown seeds."""
    return check_seed(seed, TRAIN_SEEDS, EVAL_SEEDS, "augmentation seed")


def template_path() -> Path:
    """Path of the MNI152 T1 template inside the installed nilearn package (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MNI152 template ships with nilearn, which is not installed; "
                                "run `pip install --no-deps nilearn`")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / TEMPLATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"MNI152 template not found at {path}; reinstall nilearn")
    return path


def load_template(path: str | Path | None = None,
                  device: str | torch.device | None = None) -> tuple[torch.Tensor, dict[str, tuple]]:
    """The template as float32 ``[189, 233, 197]`` (z, y, x) in [0, 1] on ``device``, and its geometry dict.

    Args:
        path: the template file; default the one inside nilearn (read with SimpleITK). A copy
            written with ``--save-template x.pt`` loads without SimpleITK or nilearn (for GPU machines).
        device: where the volume is placed.
    """
    from utils.io import read_volume

    array, meta = read_volume(template_path() if path is None else path)
    volume = torch.from_numpy(array)
    return (volume / volume.max()).to(device), meta


def _uniforms(gen: torch.Generator, lo: float, hi: float, n: int = 3) -> list[float]:
    """``n`` uniform draws in [lo, hi) from ``gen`` (float64, one call)."""
    return (lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)).tolist()


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return _uniforms(gen, lo, hi, 1)[0]


# Template intensity of the tissue classes (the MNI152 T1 template in [0, 1]): CSF, gray and white matter.
_CLASS_LEVELS = {"csf": (0.2, 0.32), "gm": (0.58, 0.68), "wm": (0.8, 0.88)}
# Signal of each class per contrast, as ranges relative to the brightest tissue: (CSF, GM, WM).
CONTRASTS: dict[str, tuple[tuple[float, float], ...]] = {
    "t1": ((0.2, 0.35), (0.55, 0.7), (0.85, 1.0)),
    "t2": ((0.85, 1.0), (0.45, 0.65), (0.3, 0.45)),
    "pd": ((0.7, 0.9), (0.72, 0.88), (0.55, 0.7)),
    "flair": ((0.05, 0.2), (0.6, 0.8), (0.45, 0.6)),
}


def remap_contrast(volume: torch.Tensor, gen: torch.Generator, weights: dict[str, float]) -> torch.Tensor:
    """Remap the template's intensities so its tissue classes take another contrast's levels.

    A contrast is drawn from ``weights`` (names of ``CONTRASTS``); the curve passes through 0 at the
    background, the drawn class levels at the drawn template levels of CSF, gray and white matter, and
    stays at the white-matter level above it (T2, PD and FLAIR are not monotonic in the T1 template).
    """
    names = list(weights)
    probabilities = torch.tensor([weights[n] for n in names], dtype=torch.float64)
    name = names[int(torch.multinomial(probabilities, 1, generator=gen))]
    xs = [0.0] + [_uniform(gen, *_CLASS_LEVELS[c]) for c in ("csf", "gm", "wm")] + [1.0]
    ys = [0.0] + [_uniform(gen, *level) for level in CONTRASTS[name]]
    ys.append(ys[-1])
    kw = {"device": volume.device, "dtype": volume.dtype}
    return piecewise_linear(volume, torch.tensor(xs, **kw), torch.tensor(ys, **kw)).clamp_min(0)


def _down_up(volume: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """Average ``volume`` over blocks of ``factor`` voxels along ``axis`` (thick slices) and interpolate back."""
    moved = volume.movedim(axis, -1)
    lines = moved.reshape(-1, 1, moved.shape[-1])
    coarse = F.interpolate(lines, scale_factor=1 / factor, mode="area")
    lines = F.interpolate(coarse, size=moved.shape[-1], mode="linear", align_corners=False)
    return lines.reshape(moved.shape).movedim(-1, axis)


@dataclass(frozen=True)
class MRIAppearance:
    """How a user's brain MRI may look, as random changes of the augmented template.

    Args:
        contrasts: weights of the contrasts (names of ``CONTRASTS``).
        bias_std: standard deviation of the log of an extra smooth bias field (3^3 control points).
        resolution_chance: probability of a lower resolution along one of ``axes`` (a second axis
            with half that chance).
        blur_mm: range of the Gaussian blur's standard deviation (mm); half of the lower-resolution
            cases average blocks of ``block`` voxels instead (thick slices).
        block: range of the block-averaging factor.
        axes: array axes (0 = D, inferior; 1 = H; 2 = W) that may lose resolution. The default
            leaves z alone: z-axis super-resolution needs a prior that knows z sharp.
        noise_chance: probability of Rician noise.
        noise: range of its standard deviation, relative to the volume's maximum.
    """

    contrasts: dict[str, float] = field(default_factory=lambda: {"t1": 0.4, "t2": 0.3, "pd": 0.15, "flair": 0.15})
    bias_std: float = 0.2
    resolution_chance: float = 0.5
    blur_mm: tuple[float, float] = (0.5, 2.5)
    block: tuple[float, float] = (1.5, 3.0)
    axes: tuple[int, ...] = (1, 2)
    noise_chance: float = 0.6
    noise: tuple[float, float] = (0.005, 0.04)

    def __post_init__(self):
        if not self.contrasts or set(self.contrasts) - set(CONTRASTS) or min(self.contrasts.values()) < 0:
            raise ValueError(f"contrasts {self.contrasts}: non-negative weights of {sorted(CONTRASTS)} are accepted")
        if not self.axes or set(self.axes) - {0, 1, 2}:
            raise ValueError(f"axes {self.axes}: a non-empty subset of (0, 1, 2) is accepted")

    def degrade(self, volume: torch.Tensor, gen: torch.Generator, spacing: float) -> torch.Tensor:
        """Extra bias field, lower resolution and Rician noise, drawn with ``gen``; ``spacing`` in mm."""
        d, h, w = volume.shape
        bias = self.bias_std * torch.randn(3, 3, 3, generator=gen)
        matrices = [bspline_matrix(torch.linspace(0, 1, n, device=volume.device), 0.0, 0.5, 3) for n in (d, h, w)]
        volume = volume * torch.exp(interpolate_grid(bias.to(volume.device), matrices))
        for chance in (self.resolution_chance, self.resolution_chance / 2):
            if _uniform(gen, 0, 1) < chance:
                axis = self.axes[int(_uniform(gen, 0, len(self.axes))) % len(self.axes)]
                if _uniform(gen, 0, 1) < 0.5:
                    volume = blur_axis(volume, axis, _uniform(gen, *self.blur_mm) / spacing)
                else:
                    volume = _down_up(volume, axis, _uniform(gen, *self.block))
        if _uniform(gen, 0, 1) < self.noise_chance:
            sigma = _uniform(gen, *self.noise) * float(volume.max())
            real = torch.randn(volume.shape, generator=gen).to(volume.device)
            imaginary = torch.randn(volume.shape, generator=gen).to(volume.device)
            volume = torch.sqrt((volume + sigma * real) ** 2 + (sigma * imaginary) ** 2)
        return volume


class MRIAugmenter:
    """Random (seeded) deformation, affine jitter and intensity change of the template.

    Args:
        template: ``[Dt, Ht, Wt]`` volume in [0, 1] (from :func:`load_template`), on the device to use.
        template_meta: its geometry dict (spacing, origin, direction).
        shape: output ``(D, H, W)`` voxels (inferior, posterior, left).
        spacing: output voxel size in mm (isotropic).
        deform_mm: standard deviation of the control-point displacements (mm).
        rotate_deg, scale, shift_mm: bounds of the uniform affine jitter.
        appearance: the contrast, bias, resolution and noise changes of a user's scan (None: the
            template's T1 appearance with the mild intensity changes only).
    """

    def __init__(self, template: torch.Tensor, template_meta: dict[str, tuple],
                 shape: Sequence[int] = OUTPUT_SHAPE, spacing: float = OUTPUT_SPACING, deform_mm: float = 3.0,
                 rotate_deg: float = 6.0, scale: float = 0.07, shift_mm: float = 6.0,
                 appearance: MRIAppearance | None = None):
        self.appearance = appearance
        self.template = template[None, None]
        self.template_meta = template_meta
        self.shape = tuple(int(n) for n in shape)
        self.spacing = float(spacing)
        self.deform_mm, self.rotate_deg, self.scale, self.shift_mm = deform_mm, rotate_deg, scale, shift_mm
        device = template.device
        # Output voxel centres in template voxel units (x, y, z), one 1D vector per axis; the sign of each
        # step turns the template's axis directions into LPI.
        t_spacing, direction = template_meta["spacing"], template_meta["direction"]
        if any(abs(direction[3 * r + c]) > 1e-6 for r in range(3) for c in range(3) if r != c):
            raise ValueError(f"template direction {tuple(direction)}: only axis-aligned (diagonal) directions are accepted")
        steps = [direction[4 * i] * LPI[4 * i] * self.spacing / t_spacing[i] for i in range(3)]
        self.axes = [BRAIN_CENTER[i] + steps[i] * (torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2)
                     for i, n in enumerate(self.shape[::-1])]
        grid_mm = [self.spacing * (torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2)
                   for n in self.shape[::-1]]
        half = max(self.spacing * (n - 1) / 2 for n in self.shape)
        self.deform_matrices = [bspline_matrix(g, -half, 2 * half / 5, 6) for g in grid_mm[::-1]]
        self.bias_matrices = [bspline_matrix(g, -half, 2 * half / 3, 4) for g in grid_mm[::-1]]

    def output_meta(self) -> dict[str, tuple]:
        """Geometry dict of the augmented volumes (LPI, isotropic spacing, centred on the brain)."""
        direction = self.template_meta["direction"]
        t_origin, t_spacing = self.template_meta["origin"], self.template_meta["spacing"]
        corner = [float(axis[0]) * s for axis, s in zip(self.axes, t_spacing)]
        origin = tuple(t_origin[r] + sum(direction[3 * r + c] * corner[c] for c in range(3)) for r in range(3))
        return {"spacing": (self.spacing,) * 3, "origin": origin, "direction": LPI}

    def __call__(self, seed: int) -> torch.Tensor:
        """The augmented volume of ``seed``: float32 ``[D, H, W]`` (LPI) in [0, 1] on the template's device."""
        gen = torch.Generator().manual_seed(int(seed))
        volume = self._warp(gen)
        if self.appearance is None:
            volume = self._intensity(volume, gen)
        else:
            look = torch.Generator().manual_seed(int(seed) + _APPEARANCE_STREAM)
            volume = remap_contrast(volume, look, self.appearance.contrasts)
            volume = self._intensity(volume, gen)
            volume = self.appearance.degrade(volume, look, self.spacing)
        return min_max(volume)

    def warp(self, seed: int) -> torch.Tensor:
        """Only the geometric part of the augmentation of ``seed``: the template's intensities ``[D, H, W]``
        resampled through the same deformation and affine jitter as ``self(seed)``."""
        return self._warp(torch.Generator().manual_seed(int(seed)))

    def _warp(self, gen: torch.Generator) -> torch.Tensor:
        device = self.template.device
        angles = [math.radians(a) for a in _uniforms(gen, -self.rotate_deg, self.rotate_deg)]
        scales = _uniforms(gen, 1 - self.scale, 1 + self.scale)
        shift = _uniforms(gen, -self.shift_mm, self.shift_mm)
        deform = self.deform_mm * torch.randn(3, 6, 6, 6, generator=gen)
        # Sampling positions: affine about the brain centre, then the smooth displacement (template voxels).
        matrix = _rotation(angles) @ torch.diag(torch.tensor(scales, dtype=torch.float64))
        t_spacing = self.template_meta["spacing"]
        rel = [axis - c for axis, c in zip(self.axes, BRAIN_CENTER)]
        displacement = interpolate_grid(deform.to(device), self.deform_matrices)
        coords = []
        for r in range(3):
            value = BRAIN_CENTER[r] + (shift[r] + displacement[r]) / t_spacing[r]
            value = value + float(matrix[r, 0]) * rel[0].view(1, 1, -1) + float(matrix[r, 1]) * rel[1].view(1, -1, 1)
            value = value + float(matrix[r, 2]) * rel[2].view(-1, 1, 1)
            size = self.template.shape[4 - r]
            coords.append(2 * value / (size - 1) - 1)
        grid = torch.stack(coords, dim=-1)[None]
        return F.grid_sample(self.template, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]

    def _intensity(self, volume: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Gamma, a soft contrast curve and a smooth multiplicative bias field (not yet normalised)."""
        bias = 0.12 * torch.randn(4, 4, 4, generator=gen)
        gamma = math.exp(_uniform(gen, -0.35, 0.35))
        contrast = _uniform(gen, -0.6, 0.6)
        volume = volume.clamp_min(0) ** gamma
        volume = volume + contrast * volume * (1 - volume)
        return volume * torch.exp(interpolate_grid(bias.to(volume.device), self.bias_matrices))


def _rotation(angles: Sequence[float]) -> torch.Tensor:
    """Rotation matrix (float64) about the x, then y, then z axis by ``angles`` radians."""
    out = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def augmented_volume(seed: int, device: str | torch.device | None = None,
                     shape: Sequence[int] = OUTPUT_SHAPE) -> tuple[torch.Tensor, dict[str, tuple]]:
    """One augmented template volume ``[D, H, W]`` in [0, 1] and its geometry (loads the template each call)."""
    template, meta = load_template(device=device)
    augmenter = MRIAugmenter(template, meta, shape)
    return augmenter(seed), augmenter.output_meta()


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: write one augmented template volume (float32 in [0, 1]) as NIfTI."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="augmentation seed (EVAL_SEEDS are held out)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(OUTPUT_SHAPE), metavar=("D", "H", "W"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="output file (.nii.gz)")
    parser.add_argument("--save-template", action="store_true",
                        help="write a copy of the template itself to --out instead (e.g. a .pt for GPU machines)")
    args = parser.parse_args(argv)
    from utils.io import write_volume

    if args.save_template:
        template, meta = load_template()
        # The template's values are 0..255 integers: uint8 keeps the copy exact and small (8.7 MB).
        path = write_volume(args.out, (template * 255).round().to(torch.uint8).numpy(), meta)
        print(f"wrote {path}: MNI152 template {tuple(template.shape)}")
        return path
    volume, meta = augmented_volume(args.seed, args.device, args.shape)
    path = write_volume(args.out, volume.cpu().numpy(), meta)
    print(f"wrote {path}: seed {args.seed}, shape {tuple(volume.shape)}, spacing {meta['spacing']} mm")
    return path


if __name__ == "__main__":
    main()
