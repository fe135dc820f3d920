"""External evaluation volumes: families the training generators do not produce, made by independent code.

Nothing here imports or reuses the project's training-data generators (``datasets.ct_phantom``,
``datasets.ct_regions``, ``datasets.ct_randomize``, ``datasets.fields``): the CT families are drawn
with numpy's random generator and rendered with their own primitives. Every volume comes with a
realistic spacing that differs from the training default (3 mm) and the geometry dict of
``utils.io`` (identity direction: x to the patient's left, y posterior, z superior; the entry
scripts reorient and resize the planes to the prior's size).

Families (``FAMILIES``):

- ``shepp-logan`` (CT, HU): phantominator's 3D modified Shepp-Logan head (``ct_shepp_logan`` with
  an explicit ellipsoid table ``E``, columns gray, semi-axes x/y/z, centre x/y/z, angle) with random
  parameters: skull size and thickness, every inner ellipsoid's centre, semi-axes, angle and gray
  value, and 0-3 extra small ellipsoids (lesions). phantominator's values are mapped to HU: outside
  the outer (skull) ellipsoid air, -1000; inside, piecewise-linearly through the knots value -0.5 ->
  -400, 0 -> CSF (0..15), 0.2 -> brain (30..45), 0.5 -> 120, 1.0 -> bone (800..1400), 2.0 -> 2000
  (so the modified phantom's skull 1.0 is bone, its brain 0.2 is brain, its ventricles 0.0 are CSF
  and its 0.3-0.4 features are 60-90 HU). In-plane spacing 1.4-1.9 mm (the head fills most of the
  field of view), z spacing 1.0-2.0 mm; default shape 128^3. Binary edges, as phantominator draws.
- ``torso`` (CT, HU): a chest and upper abdomen built from other primitives than the training
  phantoms: a superelliptic body whose layers are radial distances, lungs carved out of the cavity
  under a dome-shaped apex, vessels as the intersections of the zero sets of two band-limited random
  fields, superellipsoidal heart, generalised-cylinder aorta, vertebrae as superellipses with
  thresholded-noise trabeculae, ribs as a shell striped by a phase-perturbed cosine, liver and spleen
  as ellipsoids deformed by smooth random fields, kidneys, a stomach with an air-fluid level, bowel as
  thresholded random blobs, per-tissue texture, no noise. In-plane spacing 1.9-2.4 mm (the field of
  view sometimes cuts the flanks), z spacing 1.25-2.5 mm; default shape 96 x 160 x 160.
- ``brain-mr`` (MR, arbitrary units, for ZSR): the MNI152 template under the geometric part of
  ``datasets.mri``'s augmentation (its deformation and affine jitter, at the evaluation seed), with a
  spin-echo signal model instead of the training intensity changes: soft CSF / gray / white matter
  memberships from the template's intensities, tissue proton density, T1 and T2 (3 T values, +-10 %),
  a T2-weighted, PD-weighted or T1-weighted spin echo (TR, TE drawn per volume), a smooth polynomial
  bias field and Rician noise. The same brain as training (there is no other in the repository):
  new contrasts and noise, not a new anatomy. Default shape 128^3 at 1.5 mm (LPI).

Seeds: ``EVAL_SEEDS`` (2,000,000 .. 2,000,999) are for the final numbers only; no choice (weights,
steps, augmentation settings, these families' parameters) may look at them. ``DESIGN_SEEDS``
(3,000,000 ..) are free for designing and testing. Neither range overlaps the training ranges.

CLI: ``python experiments/external_volumes.py --family torso --seed 2000000 --out
data/external/torso_2000000.nii.gz`` (``.nii.gz`` needs SimpleITK; ``.pt`` does not);
``--list`` prints the families.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.volume import HU_STORED_RANGE  # noqa: E402

EVAL_SEEDS = range(2_000_000, 2_001_000)
DESIGN_SEEDS = range(3_000_000, 3_001_000)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
Meta = dict[str, tuple[float, ...]]


def _centred_meta(shape: Sequence[int], spacing: Sequence[float], direction=IDENTITY) -> Meta:
    """Geometry of a grid centred on the physical origin (spacing in (x, y, z) order)."""
    d, h, w = shape
    sx, sy, sz = spacing
    return {"spacing": tuple(float(s) for s in spacing),
            "origin": (-(w - 1) / 2 * sx, -(h - 1) / 2 * sy, -(d - 1) / 2 * sz), "direction": tuple(direction)}


# ----------------------------------------------------------------------------------------------
# Shepp-Logan (phantominator)
# ----------------------------------------------------------------------------------------------

# phantominator value -> HU knots; the CSF, brain and bone targets are drawn per volume.
SHEPP_LOGAN_VALUES = (-0.5, 0.0, 0.2, 0.5, 1.0, 2.0)


def shepp_logan_hu(value: torch.Tensor, inside: torch.Tensor, csf: float, brain: float, bone: float) -> torch.Tensor:
    """HU of phantominator values: air outside the skull, the piecewise-linear map of the module docstring inside."""
    xs = torch.tensor(SHEPP_LOGAN_VALUES, dtype=torch.float64)
    ys = torch.tensor((-400.0, csf, brain, 120.0, bone, 2000.0), dtype=torch.float64)
    v = value.double()
    index = torch.bucketize(v, xs).clamp(1, len(xs) - 1)
    hu = ys[index - 1] + (v - xs[index - 1]) * (ys[index] - ys[index - 1]) / (xs[index] - xs[index - 1])
    return torch.where(inside, hu, torch.full_like(hu, -1000.0)).float()


def _shepp_logan(seed: int, shape: Sequence[int], device, template) -> tuple[torch.Tensor, Meta]:
    from phantominator import ct_modified_shepp_logan_params_3d, ct_shepp_logan

    rng = np.random.default_rng(seed)
    d, h, w = shape
    sxy, sz = rng.uniform(1.4, 1.9), rng.uniform(1.0, 2.0)
    table = ct_modified_shepp_logan_params_3d().copy()  # columns: gray, semi-axes x y z, centre x y z, angle
    # Skull: one scale per axis for both outer ellipsoids, and a thickness.
    table[0, 1:4] *= rng.uniform(0.9, 1.05, 3)
    table[1, 1:4] = table[0, 1:4] - (0.69 - 0.6624) * rng.uniform(0.8, 1.6)
    inner = table[2:]
    inner[:, 1:4] *= rng.uniform(0.75, 1.3, (len(inner), 3))
    inner[:, 4:7] += rng.normal(0.0, 0.03, (len(inner), 3))
    inner[:, 7] += rng.uniform(-0.3, 0.3, len(inner))
    inner[:, 0] *= rng.uniform(0.5, 1.5, len(inner))
    extra = np.zeros((rng.integers(0, 4), 8))
    for row in extra:
        radius, angle = rng.uniform(0, 0.5), rng.uniform(0, 2 * np.pi)
        row[:] = [rng.uniform(-0.15, 0.3), *rng.uniform(0.02, 0.12, 3), radius * np.cos(angle),
                  radius * np.sin(angle), rng.uniform(-0.4, 0.4), rng.uniform(0, np.pi)]
    table = np.concatenate([table, extra])
    # One square in-plane grid (phantominator spans [-1, 1] on both axes), cropped to H x W; z keeps the scale.
    side = max(h, w)
    z_half = (d - 1) / 2 * sz / ((side - 1) / 2 * sxy)
    kwargs = {"N": (side, side, d), "zlims": (-z_half, z_half)}
    value = ct_shepp_logan(E=table, **kwargs)
    skull = table[:1].copy()
    skull[0, 0] = 1.0
    inside = ct_shepp_logan(E=skull, **kwargs) > 0.5
    top, left = (side - h) // 2, (side - w) // 2
    crop = (slice(top, top + h), slice(left, left + w))
    value = torch.from_numpy(np.ascontiguousarray(value[crop].transpose(2, 0, 1)))
    inside = torch.from_numpy(np.ascontiguousarray(inside[crop].transpose(2, 0, 1)))
    hu = shepp_logan_hu(value, inside, rng.uniform(0, 15), rng.uniform(30, 45), rng.uniform(800, 1400))
    return hu.to(device), _centred_meta(shape, (sxy, sxy, sz))


# ----------------------------------------------------------------------------------------------
# Torso
# ----------------------------------------------------------------------------------------------

class _Grid:
    """Voxel-centre coordinates (mm) of a centred grid, broadcastable as [D, H, W], and field helpers."""

    def __init__(self, shape, spacing, z_center: float, rng: np.random.Generator, device):
        d, h, w = shape
        sx, sy, sz = spacing
        kw = {"dtype": torch.float32, "device": device}
        self.x = ((torch.arange(w, **kw) - (w - 1) / 2) * sx).view(1, 1, w)
        self.y = ((torch.arange(h, **kw) - (h - 1) / 2) * sy).view(1, h, 1)
        self.z = ((torch.arange(d, **kw) - (d - 1) / 2) * sz + z_center).view(d, 1, 1)
        self.shape, self.spacing, self.rng, self.device = (d, h, w), (sz, sy, sx), rng, device
        self.edge = min(spacing)

    def soft(self, sd: torch.Tensor) -> torch.Tensor:
        """Partial-volume occupancy of a voxel at signed distance ``sd`` mm (positive inside)."""
        return (sd / self.edge + 0.5).clamp(0.0, 1.0)

    def field(self, corr_mm: float) -> torch.Tensor:
        """A zero-mean, unit-variance Gaussian random field with a Gaussian correlation of ``corr_mm``."""
        white = torch.from_numpy(self.rng.standard_normal(self.shape).astype(np.float32)).to(self.device)
        freqs = [torch.fft.fftfreq(n, s, device=self.device) for n, s in zip(self.shape[:-1], self.spacing[:-1])]
        freqs.append(torch.fft.rfftfreq(self.shape[-1], self.spacing[-1], device=self.device))
        k2 = freqs[0].view(-1, 1, 1) ** 2 + freqs[1].view(1, -1, 1) ** 2 + freqs[2].view(1, 1, -1) ** 2
        out = torch.fft.irfftn(torch.fft.rfftn(white) * torch.exp(-2 * (math.pi * corr_mm) ** 2 * k2), s=self.shape)
        return (out - out.mean()) / out.std().clamp_min(1e-8)

    def curve(self, scale: float, corr_mm: float) -> torch.Tensor:
        """A smooth random function of z ``[D, 1, 1]`` of standard deviation ``scale``."""
        knots = self.rng.standard_normal(64) * scale
        z = self.z.flatten().cpu().numpy()
        values = np.interp(z, np.linspace(-400, 400, 64), knots)
        kernel = np.exp(-0.5 * (np.arange(-40, 41) * (self.spacing[0] / corr_mm)) ** 2)
        values = np.convolve(np.pad(values, 40, mode="edge"), kernel / kernel.sum(), mode="valid")
        return torch.tensor(values, dtype=torch.float32, device=self.device).view(-1, 1, 1)


def _superellipse_sd(x, y, a, b, p: float) -> torch.Tensor:
    """Radial distance (mm, positive inside) to the superellipse ``|x/a|^p + |y/b|^p = 1``."""
    rho = torch.sqrt(x * x + y * y).clamp_min(1e-6)
    boundary = rho / ((x.abs() / a) ** p + (y.abs() / b) ** p).clamp_min(1e-12) ** (1 / p)
    return boundary - rho


def _quadric(x, y, z, center, axes, theta: float = 0.0) -> torch.Tensor:
    """``q`` of an ellipsoid rotated by ``theta`` about z: < 1 inside, 1 on the surface."""
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * dx + s * dy, c * dy - s * dx
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (dz / axes[2]) ** 2


def _blob(g: _Grid, q: torch.Tensor, size: float) -> torch.Tensor:
    """Occupancy of the region ``q < 1`` with a soft edge about one voxel wide for a body of ``size`` mm."""
    return g.soft((1 - q) * size / 2)


def _torso(seed: int, shape: Sequence[int], device, template) -> tuple[torch.Tensor, Meta]:
    rng = np.random.default_rng(seed)
    u = rng.uniform
    sxy, sz = u(1.9, 2.4), u(1.25, 2.5)
    g = _Grid(shape, (sxy, sxy, sz), u(-60, 60), rng, device)
    x, y, z = g.x, g.y, g.z
    hu = torch.full(g.shape, -1000.0, device=device)

    def put(mask: torch.Tensor, value) -> None:
        hu.copy_(hu + (value - hu) * mask)

    # Body: a superellipse breathing along z, flat at the back; skin, fat and muscle as radial layers.
    cx, cy, p = u(-8, 8), u(-10, 6), u(2.2, 3.0)
    a = u(130, 170) * (1 + g.curve(0.05, 60))
    b = u(90, 120) * (1 + g.curve(0.05, 60))
    body = torch.minimum(_superellipse_sd(x - cx, y - cy, a, b, p), cy + 0.9 * b - y)
    if rng.random() < 0.5:
        slab = y - (cy + 0.9 * b + u(3, 15))
        put(g.soft(torch.minimum(slab, 25 - slab)), u(-350, 0))
        put(g.soft(torch.minimum(slab, 3 - slab)), u(150, 400))
    theta = torch.atan2(x - cx, y - cy)  # 0 at the back, +-pi at the front
    fat = u(6, 30) * (1 + 0.3 * g.field(40.0))
    muscle = u(8, 16) + 22 * torch.exp(-((theta / 0.45) ** 2))
    put(g.soft(body), u(0, 40))
    put(g.soft(body - 2), u(-120, -80))
    put(g.soft(body - 2 - fat), u(40, 60))
    cavity = body - 2 - fat - muscle
    hu_fat = u(-110, -80)
    put(g.soft(cavity), hu_fat)
    texture = g.field(2.5)
    # Diaphragm: two domes (the right one higher); lungs above them, under a dome-shaped apex.
    dome_r = u(-5, 15)
    dome_l = dome_r - u(5, 20)
    diaphragm = torch.maximum(dome_r - ((x - cx + 55) ** 2 + (y - cy) ** 2) / (2 * u(90, 140)),
                              dome_l - ((x - cx - 55) ** 2 + (y - cy) ** 2) / (2 * u(90, 140)))
    apex = dome_r + u(170, 210) - ((x - cx) ** 2 + (y - cy) ** 2) / (2 * u(150, 250))
    spine_y = cy + 0.9 * b - u(60, 80)
    heart_c = (cx + u(15, 35), cy - u(20, 40), dome_l + u(35, 55))
    heart_axes = (u(50, 65), u(40, 55), u(45, 60))
    heart_theta = u(0.3, 0.7)
    heart_q = _quadric(x, y, z, heart_c, heart_axes, heart_theta)
    mediastinum = g.soft(u(10, 18) - (x - cx - 8).abs()) * g.soft(spine_y + 25 - y)
    lungs = g.soft(torch.minimum(torch.minimum(cavity - 4, z - diaphragm), apex - z)) * (1 - mediastinum)
    lungs = lungs * (1 - _blob(g, heart_q * 0.85, 50.0))
    put(lungs, u(-880, -800) + 25 * texture)
    hilum = torch.exp(-(((x - cx).abs() - 45) ** 2 + (y - cy) ** 2 + (z - heart_c[2] - 40) ** 2) / (2 * 45.0 ** 2))
    width = 0.3 * (1 + 2 * hilum)
    vessels = (1 - (g.field(9.0) ** 2 + g.field(9.0) ** 2) / width ** 2).clamp(0, 1)
    put(vessels * lungs, u(-60, 60))
    trachea = (cx + u(-3, 3), spine_y - u(25, 35))
    airway = torch.sqrt((x - trachea[0]) ** 2 + (y - trachea[1]) ** 2)
    above = g.soft(z - heart_c[2] - heart_axes[2] + 10) * g.soft(cavity + 20)
    put(g.soft(u(10, 13) - airway) * above, u(30, 50))
    put(g.soft(u(7, 9) - airway) * above, -1000.0)
    # Heart: myocardium and a blood pool (contrast-enhanced or not) split by a septum.
    contrast = rng.random() < 0.6
    blood = u(150, 350) if contrast else u(35, 50)
    put(_blob(g, heart_q, 50.0), u(30, 60))
    septum = g.soft(3 - ((x - heart_c[0]) * math.cos(heart_theta + 1.2) + (y - heart_c[1]) * math.sin(heart_theta + 1.2)).abs())
    put(_blob(g, _quadric(x, y, z, heart_c, [s * 0.7 for s in heart_axes], heart_theta), 35.0) * (1 - septum), blood)
    # Aorta: ascending beside the heart, an arch above it, descending beside the spine (discs per slice).
    arch_z = heart_c[2] + heart_axes[2] + u(10, 30)
    r_asc, r_desc = u(13, 17), u(10, 13)
    asc = (cx + u(-5, 10), cy - u(25, 40))
    desc = (cx + u(18, 30), spine_y - u(5, 15))
    in_asc = g.soft(arch_z - z) * g.soft(z - heart_c[2])
    put(g.soft(r_asc - torch.sqrt((x - asc[0]) ** 2 + (y - asc[1]) ** 2)) * in_asc, blood)
    put(g.soft(r_desc - torch.sqrt((x - desc[0]) ** 2 + (y - desc[1]) ** 2)) * g.soft(arch_z - z), blood)
    t = (((x - asc[0]) * (desc[0] - asc[0]) + (y - asc[1]) * (desc[1] - asc[1]))
         / ((desc[0] - asc[0]) ** 2 + (desc[1] - asc[1]) ** 2)).clamp(0, 1)
    arch_d = torch.sqrt((x - asc[0] - t * (desc[0] - asc[0])) ** 2 + (y - asc[1] - t * (desc[1] - asc[1])) ** 2
                        + (z - arch_z) ** 2)
    put(g.soft(r_asc - arch_d), blood)
    ivc = (cx - u(20, 30), spine_y - u(5, 12))
    put(g.soft(u(9, 12) - torch.sqrt((x - ivc[0]) ** 2 + (y - ivc[1]) ** 2)) * g.soft(heart_c[2] - z),
        u(90, 150) if contrast else u(30, 45))
    # Abdomen below the diaphragm: liver, spleen, kidneys, stomach, bowel.
    below = g.soft(diaphragm - 3 - z) * g.soft(cavity)
    liver_c = (cx - u(40, 70), cy - u(0, 20), dome_r - u(50, 80))
    liver_q = _quadric(x, y, z, liver_c, (u(75, 100), u(70, 95), u(60, 90)), u(-0.3, 0.1)) + 0.25 * g.field(30.0)
    liver = _blob(g, liver_q, 80.0) * below
    put(liver, u(45, 70) + 6 * texture)
    put(liver * (1 - (g.field(7.0) ** 2 + g.field(7.0) ** 2) / 0.12 ** 2).clamp(0, 1), u(100, 180) if contrast else u(30, 45))
    spleen_q = _quadric(x, y, z, (cx + u(70, 95), cy + u(20, 50), dome_l - u(30, 60)), (u(25, 35), u(45, 60), u(40, 60)),
                        u(0.3, 0.8)) + 0.2 * g.field(20.0)
    put(_blob(g, spleen_q, 40.0) * below, u(40, 60))
    stomach_c = (cx + u(30, 60), cy - u(30, 60), dome_l - u(20, 45))
    stomach_q = _quadric(x, y, z, stomach_c, (u(35, 50), u(30, 40), u(35, 50)), 0.3) + 0.15 * g.field(20.0)
    put(_blob(g, stomach_q, 40.0) * below, u(35, 50))
    lumen = _blob(g, stomach_q * 1.25, 35.0) * below
    put(lumen, u(0, 30))
    put(lumen * g.soft(stomach_c[1] - u(0, 20) - y), -1000.0)
    kidney_z = dome_r - u(100, 135)
    for side in (-1.0, 1.0):
        kc = (cx + side * u(55, 75), spine_y + u(-5, 10), kidney_z + (side < 0) * u(-20, 0))
        kq = _quadric(x, y, z, kc, (u(22, 30), u(28, 36), u(45, 60)), side * u(0.3, 0.6))
        put(_blob(g, kq, 30.0) * below, u(140, 200) if contrast else u(30, 40))
        put(_blob(g, kq * 2.2, 20.0) * below, hu_fat + 30)
    bowel_zone = below * g.soft(kidney_z + 40 - z) * (1 - liver)
    bowel = g.soft(8 * (g.field(12.0) - 0.4)) * bowel_zone
    put(bowel, u(30, 45))
    inner = g.soft(8 * (g.field(12.0) - 0.9)) * bowel
    gas = g.soft(6 * (g.field(20.0) - 0.3))
    put(inner * gas, -1000.0)
    put(inner * (1 - gas), u(0, 250) if rng.random() < 0.3 else u(5, 25))
    # Spine: superelliptic vertebral bodies with discs, trabeculae as thresholded noise, canal and arch.
    period, phase = u(26, 34), u(0, 34)
    lumbar = ((dome_r - z) / 150).clamp(0, 1)
    va, vb = u(16, 20) * (1 + 0.3 * lumbar), u(13, 16) * (1 + 0.25 * lumbar)
    level = torch.remainder(z - phase, period) / period
    bone_z = g.soft((torch.minimum(level - 0.2, 1 - level) * period))
    vertebra = _superellipse_sd(x - cx, y - spine_y, va, vb, 2.4)
    put(g.soft(vertebra), u(70, 110))
    trabeculae = u(140, 260) + 120 * (g.field(1.8) > 0.6).float()
    put(g.soft(vertebra) * bone_z, trabeculae)
    put(g.soft(torch.minimum(vertebra, 2.0 - vertebra)) * bone_z, u(500, 900))
    canal_y = spine_y + vb + 11
    ring = torch.sqrt((x - cx) ** 2 + (y - canal_y) ** 2)
    arch = torch.maximum(g.soft(torch.minimum(14 - ring, ring - 8)), g.soft(5 - (x - cx).abs()) * g.soft(canal_y + 40 - y)
                         * g.soft(y - canal_y - 8))
    put(arch * g.soft(torch.minimum(level - 0.25, 0.9 - level) * period), u(350, 700))
    put(g.soft(8 - ring), u(10, 35))
    # Ribs: a shell just outside the cavity, striped by a cosine of z and angle with a perturbed phase.
    rib_period, slope = u(24, 32), u(25, 45)
    stripes = torch.cos(2 * math.pi * (z + slope * theta.abs()) / rib_period + 0.6 * g.field(60.0))
    shell = g.soft(u(3, 4.5) - (cavity + u(3, 5)).abs())
    ribs = shell * g.soft(4 * (stripes - 0.55)) * (theta.abs() < 2.6).float() * g.soft(apex - 20 - z)
    ribs = ribs * g.soft(z - diaphragm + 70)
    put(ribs, u(350, 800))
    put(shell * g.soft(4 * (stripes - 0.55)) * (theta.abs() >= 2.6).float() * g.soft(apex - 20 - z)
        * g.soft(z - diaphragm + 40), u(90, 160))
    sternum = _superellipse_sd(x - cx, y - (cy - b + fat.mean() + 14), u(12, 18), u(5, 8), 2.5)
    put(g.soft(sternum) * g.soft(z - heart_c[2] + 20) * g.soft(apex - 30 - z), u(300, 600))
    # Texture per intensity range: faint in soft tissue, stronger in lung and bone.
    amplitude = torch.where(hu < -500, 20.0, torch.where(hu > 200, 40.0, 6.0)) * (hu > -990).float()
    hu = hu + amplitude * g.field(4.0)
    return hu.clamp(*HU_STORED_RANGE), _centred_meta(shape, (sxy, sxy, sz))


# ----------------------------------------------------------------------------------------------
# Brain MR (spin echo)
# ----------------------------------------------------------------------------------------------

# Tissue proton density (relative), T1 and T2 (ms) at 3 T: CSF, gray matter, white matter.
TISSUE_MR = {"csf": (1.0, 4000.0, 2000.0), "gm": (0.85, 1400.0, 100.0), "wm": (0.7, 850.0, 75.0)}
# Template intensity of each class (the MNI152 T1 template in [0, 1]); memberships are triangular between them.
TEMPLATE_LEVELS = {"csf": 0.26, "gm": 0.63, "wm": 0.85}
# Sequences: weight, TR range, TE range (ms).
SEQUENCES = {"T2w": (0.5, (3000.0, 6000.0), (80.0, 120.0)), "PDw": (0.25, (2500.0, 4000.0), (10.0, 25.0)),
             "T1w": (0.25, (400.0, 700.0), (8.0, 15.0))}


def _brain_mr(seed: int, shape: Sequence[int], device, template) -> tuple[torch.Tensor, Meta]:
    from datasets import mri

    if len(set(shape)) != 1:
        raise ValueError(f"brain-mr shape {tuple(shape)}: a cube (N, N, N) is accepted")
    rng = np.random.default_rng(seed)
    volume, meta = mri.load_template(template, device)
    size = shape[0]
    augmenter = mri.MRIAugmenter(volume, meta, shape, mri.OUTPUT_SPACING * mri.OUTPUT_SHAPE[0] / size)
    t1 = augmenter.warp(seed)
    # Soft memberships: background below the CSF level fades out; triangles between class levels.
    c, gm, wm = (TEMPLATE_LEVELS[k] for k in ("csf", "gm", "wm"))
    head = (t1 / c).clamp(0, 1)
    m_gm = torch.minimum((t1 - c) / (gm - c), (wm - t1) / (wm - gm)).clamp(0, 1)
    m_wm = ((t1 - gm) / (wm - gm)).clamp(0, 1)
    m_csf = (head - m_gm - m_wm).clamp_min(0)
    names = list(SEQUENCES)
    weights = np.array([SEQUENCES[n][0] for n in names])
    name = names[rng.choice(len(names), p=weights / weights.sum())]
    tr, te = rng.uniform(*SEQUENCES[name][1]), rng.uniform(*SEQUENCES[name][2])
    signal = torch.zeros_like(t1)
    for tissue, membership in (("csf", m_csf), ("gm", m_gm), ("wm", m_wm)):
        pd, r1, r2 = (v * rng.uniform(0.9, 1.1) for v in TISSUE_MR[tissue])
        signal += membership * pd * (1 - math.exp(-tr / r1)) * math.exp(-te / r2)
    # A smooth bias field: the exponential of a random quadratic polynomial over the cube.
    k, j, i = (torch.linspace(-1, 1, n, device=t1.device) for n in t1.shape)
    coords = (k.view(-1, 1, 1), j.view(1, -1, 1), i.view(1, 1, -1))
    log_bias = sum(rng.normal(0, 0.12) * axis for axis in coords)
    log_bias = log_bias + sum(rng.normal(0, 0.08) * coords[m] * coords[n] for m in range(3) for n in range(m, 3))
    signal = signal * torch.exp(log_bias)
    sigma = rng.uniform(0.005, 0.02) * float(signal.max())
    noise = torch.from_numpy(rng.standard_normal((2, *t1.shape)).astype(np.float32)).to(t1.device)
    signal = torch.sqrt((signal + sigma * noise[0]) ** 2 + (sigma * noise[1]) ** 2)
    return 1000.0 * signal / signal.max(), augmenter.output_meta()


# ----------------------------------------------------------------------------------------------
# API and CLI
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """An external family: ``modality`` "ct" (HU) or "mr" (arbitrary units), its renderer and default shape."""

    modality: str
    render: Callable
    shape: tuple[int, int, int]
    summary: str


FAMILIES: dict[str, Family] = {
    "shepp-logan": Family("ct", _shepp_logan, (128, 128, 128),
                          "phantominator 3D Shepp-Logan head, random ellipsoids, 1.4-1.9 mm"),
    "torso": Family("ct", _torso, (96, 160, 160), "chest/upper abdomen from independent primitives, 1.9-2.4 mm"),
    "brain-mr": Family("mr", _brain_mr, (128, 128, 128), "MNI152 brain, spin-echo T2w/PDw/T1w contrast, 1.5 mm"),
}


def external_volume(family: str, seed: int, shape: Sequence[int] | None = None, *,
                    device: str | torch.device | None = None,
                    template: str | Path | None = None) -> tuple[torch.Tensor, Meta]:
    """One volume of an external family.

    Args:
        family: a key of ``FAMILIES``.
        seed: the volume's seed (an int >= 0; ``EVAL_SEEDS`` for final numbers, ``DESIGN_SEEDS`` otherwise).
        shape: ``(D, H, W)`` (default: the family's); ``brain-mr`` takes a cube.
        device: where the volume is computed and returned.
        template: ``brain-mr`` only: the MNI152 template file (default: the one inside nilearn).

    Returns:
        ``(volume, meta)``: float32 ``[D, H, W]`` (HU for CT families), and its geometry (spacing,
        origin, direction) as ``utils.io.write_volume`` takes it.
    """
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: accepted families are {sorted(FAMILIES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed {seed!r}: a non-negative int is accepted")
    spec = FAMILIES[family]
    shape = spec.shape if shape is None else tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape {tuple(shape)}: three sizes (D, H, W) of at least 2 are accepted")
    volume, meta = spec.render(seed, shape, torch.device(device or "cpu"), template)
    return volume.float().contiguous(), meta


def main(argv: Sequence[str] | None = None) -> Path | None:
    """CLI: write one external volume (float32) with its geometry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), help="external family")
    parser.add_argument("--seed", type=int, help=f"volume seed (final numbers: {EVAL_SEEDS[0]}..; design: "
                        f"{DESIGN_SEEDS[0]}..)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                        help="default: the family's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--template", type=Path, default=None, help="brain-mr: MNI152 template file")
    parser.add_argument("--out", type=Path, help="output file (.nii.gz, or .pt without SimpleITK)")
    parser.add_argument("--list", action="store_true", help="print the families and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in FAMILIES.items():
            print(f"{name:12s} {spec.modality}  {spec.shape}  {spec.summary}")
        return None
    missing = [flag for flag, value in (("--family", args.family), ("--seed", args.seed), ("--out", args.out))
               if value is None]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --list)")
    from utils.io import write_volume

    volume, meta = external_volume(args.family, args.seed, args.shape, device=args.device, template=args.template)
    path = write_volume(args.out, volume.cpu().numpy(), meta)
    print(f"wrote {path}: {args.family} seed {args.seed}, shape {tuple(volume.shape)}, spacing "
          f"{tuple(round(s, 3) for s in meta['spacing'])} mm")
    return path


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
