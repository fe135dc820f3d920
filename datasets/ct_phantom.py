"""Procedural 3D CT phantoms of the chest and upper abdomen, in Hounsfield units, from a seed.

A phantom is painted analytically on a voxel grid in torch (CPU or GPU): body outline with skin,
subcutaneous fat and a muscle wall; lungs whose bases follow the two diaphragm domes and whose
apices taper, with branching vessel trees; trachea and main bronchi; the heart with contrast-filled
chambers, the aorta and the inferior vena cava; liver with portal vessels, spleen, stomach with an
air-fluid level, kidneys, bowel loops, psoas and paraspinal muscles; the spine (vertebral bodies with
a cortical shell and end plates, trabecular interior, discs, neural arch, spinous and transverse
processes, canal), ribs with costal cartilage, the sternum, and an optional table. A smooth texture
is added per tissue; there is no noise. Anatomy (sizes, positions, z-extents, the number of vessels
and bowel loops, tissue HU) is drawn from the seed alone, so the same seed gives the same patient
whatever window, resolution or device renders it.

Coordinates (LPS, as ITK): x increases to the patient's left (array axis W), y to posterior (axis H),
z to superior (axis D). z = 0 lies near the diaphragm; the anatomy spans about z = -260 .. +260 mm
(kidneys and bowel below, lung apices above). The in-plane field of view is ``FOV_MM`` = 384 mm,
so the default spacing is 3.0 mm at 128 pixels and 1.5 mm at 256.

Seeds: ``TRAIN_SEEDS`` = 0 .. 999,999 are for training; ``EVAL_SEEDS`` = 1,000,000 .. 1,000,999 are
held out for evaluation (the shipped demo volume uses ``DEMO_SEED`` = 1,000,000) and
:func:`check_train_seed` refuses them.

CLI: ``python -m datasets.ct_phantom --seed 1000000 --shape 64 128 128 --z-center 30
--out data/demo/ct_phantom_demo.nii.gz`` (int16 HU NIfTI, 3 mm isotropic).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from datasets.fields import bspline_matrix, interpolate_grid
from datasets.seeds import check_seed

FOV_MM = 384.0
HU_AIR = -1000.0
TRAIN_SEEDS = range(1_000_000)
EVAL_SEEDS = range(1_000_000, 1_001_000)
DEMO_SEED = EVAL_SEEDS[0]
DEMO_SHAPE = (64, 128, 128)
DEMO_Z_CENTER = 30.0

# Label ids of the optional label map, with the HU range a real scan shows for the tissue.
TISSUES: dict[str, tuple[int, tuple[float, float]]] = {
    "air": (0, (-1024.0, -950.0)),
    "skin": (1, (-500.0, 80.0)),  # thinner than a voxel: its voxels are partly air
    "fat": (2, (-130.0, -60.0)),
    "muscle": (3, (30.0, 70.0)),
    "lung": (4, (-920.0, -750.0)),
    "lung_vessel": (5, (-700.0, 60.0)),
    "myocardium": (6, (25.0, 65.0)),
    "contrast_blood": (7, (120.0, 330.0)),
    "liver": (8, (40.0, 80.0)),
    "spleen": (9, (35.0, 65.0)),
    "kidney": (10, (70.0, 220.0)),
    "fluid": (11, (-10.0, 35.0)),
    "gas": (12, (-1024.0, -900.0)),
    "cortical_bone": (13, (600.0, 1300.0)),
    "trabecular_bone": (14, (120.0, 350.0)),
    "disc": (15, (60.0, 120.0)),
    "posterior_arch": (16, (300.0, 700.0)),
    "rib": (17, (350.0, 900.0)),
    "cartilage": (18, (80.0, 180.0)),
    "canal": (19, (0.0, 45.0)),
    "table": (20, (-950.0, 300.0)),
    # Head and pelvis (datasets.ct_regions).
    "gray_matter": (21, (30.0, 50.0)),
    "white_matter": (22, (18.0, 38.0)),
    "csf": (23, (-5.0, 25.0)),
    "diploe": (24, (300.0, 900.0)),
    "marrow": (25, (-120.0, 120.0)),
}
_LABEL = {name: label for name, (label, _) in TISSUES.items()}

# Texture amplitude (HU) per intensity band: none in air, visible in lung and bone, faint elsewhere.
_TEXTURE_BANDS = (-980.0, -500.0, -150.0, 150.0, 450.0)
_TEXTURE_AMPLITUDE = (0.0, 30.0, 8.0, 9.0, 45.0, 30.0)


def check_train_seed(seed: int) -> int:
    """Return ``seed`` if it may be used for training; raise ValueError for held-out or unknown seeds."""
    return check_seed(seed, TRAIN_SEEDS, EVAL_SEEDS, "phantom seed")


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Spacing ``(sx, sy, sz)`` in mm for a ``(D, H, W)`` grid: ``FOV_MM`` across, isotropic voxels."""
    _, h, w = shape
    return (FOV_MM / w, FOV_MM / h, FOV_MM / w)


def phantom_meta(shape: Sequence[int], spacing: Sequence[float] | None = None, z_center: float = 0.0,
                 xy_center: Sequence[float] = (0.0, 0.0)) -> dict[str, tuple[float, ...]]:
    """Geometry dict (``spacing``, ``origin``, ``direction``, as ``utils.io.write_volume`` takes) of a phantom grid.

    ``z_center`` and ``xy_center`` (mm) are the position of the grid's centre in patient space.
    """
    d, h, w = shape
    sx, sy, sz = default_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    cx, cy = (float(c) for c in xy_center)
    origin = (cx - (w - 1) / 2 * sx, cy - (h - 1) / 2 * sy, z_center - (d - 1) / 2 * sz)
    return {"spacing": (sx, sy, sz), "origin": origin, "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}


# ----------------------------------------------------------------------------------------------
# Drawing the anatomy: plain numbers and tube segments in mm, independent of any voxel grid.
# ----------------------------------------------------------------------------------------------

class Draw:
    """Uniform draws from one seeded CPU generator, fetched in blocks (thousands are needed per patient)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.block: list[float] = []

    def uniform(self, lo: float, hi: float) -> float:
        if not self.block:
            self.block = torch.rand(1024, generator=self.gen, dtype=torch.float64).tolist()[::-1]
        return lo + (hi - lo) * self.block.pop()

    def integer(self, lo: int, hi: int) -> int:
        return min(hi, lo + int(self.uniform(0.0, hi - lo + 1)))

    def chance(self, p: float) -> bool:
        return self.uniform(0.0, 1.0) < p

    def wave(self, amplitude: float, periods: tuple[float, float] = (180.0, 520.0), terms: int = 2):
        """A smooth function of z: ``terms`` sinusoids with random amplitude, period and phase."""
        return [(amplitude * self.uniform(0.3, 1.0), self.uniform(*periods), self.uniform(0, 2 * math.pi))
                for _ in range(terms)]

    def normal(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.gen)


def random_direction(draw: Draw, base: Sequence[float], spread: float) -> list[float]:
    """A unit vector near ``base`` (perturbed by up to ``spread`` in each component)."""
    v = [b + draw.uniform(-spread, spread) for b in base]
    norm = math.sqrt(sum(c * c for c in v)) or 1.0
    return [c / norm for c in v]


def _tree(draw: Draw, root: Sequence[float], directions: list[list[float]], length: float, radius: float,
          depth: int, spread: float) -> list[list[float]]:
    """Segments ``[x0, y0, z0, x1, y1, z1, r]`` of a branching tree: each branch splits in two."""
    segments = []
    stack = [(list(root), d, length, radius, depth) for d in directions]
    while stack:
        start, direction, seg_len, seg_r, level = stack.pop()
        end = [s + seg_len * c for s, c in zip(start, direction)]
        segments.append(start + end + [seg_r])
        if level > 1:
            for _ in range(2):
                stack.append((end, random_direction(draw, direction, spread), seg_len * draw.uniform(0.7, 0.85),
                              max(1.8, seg_r * draw.uniform(0.68, 0.8)), level - 1))
    return segments


def polyline(points: Sequence[Sequence[float]], radii: Sequence[float]) -> list[list[float]]:
    """Segments joining consecutive points; segment i has radius ``radii[i]``."""
    return [list(p) + list(q) + [r] for p, q, r in zip(points[:-1], points[1:], radii)]


def bowel_loops(d: Draw, count: int, start) -> list[tuple[list[list[float]], bool]]:
    """``count`` bowel loops: random walks of tube segments from ``start(d)`` (a point in mm), each
    ``(segments, gas)`` with gas- (True) or fluid-filled lumen."""
    loops = []
    for _ in range(count):
        point = start(d)
        radius, gas = d.uniform(8, 16), d.chance(0.35)
        points = [point]
        for _ in range(d.integer(4, 8)):
            step = random_direction(d, [0.0, 0.0, 0.0], 1.0)
            point = [p + d.uniform(15, 25) * s for p, s in zip(point, step)]
            points.append(point)
        loops.append((polyline(points, [radius] * (len(points) - 1)), gas))
    return loops


def _draw_anatomy(seed: int) -> SimpleNamespace:
    """All random choices of one patient, drawn in a fixed order from ``seed``."""
    d = Draw(seed)
    a = SimpleNamespace()
    # Body outline, layers and the inner cavity (the cavity size is used to place organs).
    a.body_a, a.body_b = d.uniform(132, 165), d.uniform(95, 122)
    a.body_a_wave, a.body_b_wave = d.wave(0.05), d.wave(0.05)
    a.shoulder, a.belly = d.uniform(0, 14), d.uniform(0, 16)
    a.cx, a.cy = d.uniform(-6, 6), d.uniform(-12, 8)
    a.center_wave = d.wave(4.0, (300, 700))
    a.back_flat = d.uniform(0.88, 0.95)
    a.skin, a.fat, a.muscle = d.uniform(2.0, 3.0), d.uniform(6, 26), d.uniform(7, 12)
    a.fat_wave = d.wave(0.3)
    a.hu_fat, a.hu_muscle, a.hu_skin = d.uniform(-110, -85), d.uniform(42, 58), d.uniform(20, 50)
    a.hu_cavity = d.uniform(-95, -75)
    ca, cb = a.body_a - a.fat - 14, a.body_b - a.fat - 14
    a.cav_a, a.cav_b = ca, cb
    # Table under the patient.
    a.table = d.chance(0.7)
    a.table_gap, a.table_radius = d.uniform(2, 12), d.uniform(500, 900)
    # Diaphragm: two domes (right higher) whose paraboloids meet in a lower saddle under the heart.
    a.dome_r = d.uniform(0, 25)
    a.dome_l = a.dome_r - d.uniform(5, 25)
    a.dome_drop = d.uniform(55, 85)
    a.dome_y = a.cy + d.uniform(-0.15, 0.05) * cb
    a.dome_x = d.uniform(0.38, 0.5) * ca
    # Lungs.
    a.lung_apex = a.dome_r + d.uniform(150, 190)
    a.lung_taper = d.uniform(50, 80)
    a.mediastinum = d.uniform(12, 22)
    a.hu_lung = d.uniform(-870, -820)
    hilum_z = a.dome_r + d.uniform(50, 80)
    lung_segments = []
    for side in (-1.0, 1.0):
        hilum = [a.cx + side * d.uniform(0.2, 0.28) * ca, a.cy + d.uniform(-0.05, 0.15) * cb, hilum_z]
        primaries = [random_direction(d, [side * 0.7, d.uniform(-0.7, 0.7), d.uniform(-1.2, 1.2)], 0.3)
                     for _ in range(d.integer(7, 11))]
        lung_segments += _tree(d, hilum, primaries, d.uniform(36, 46), d.uniform(5.0, 6.5), 5, 0.5)
    a.lung_vessels = lung_segments
    # Airways: trachea from the top down to the carina, main bronchi towards the hila.
    carina = [a.cx + d.uniform(-5, 5), a.cy + d.uniform(0.05, 0.2) * cb, hilum_z + d.uniform(15, 30)]
    a.trachea = polyline([[carina[0], carina[1] - 5, 400.0], carina], [d.uniform(8, 10)])
    a.bronchi = [polyline([carina, [a.cx + side * 0.2 * ca, carina[1] + 5, hilum_z + 5]], [d.uniform(5, 6.5)])[0]
                 for side in (-1.0, 1.0)]
    # Heart: an ellipsoid on the diaphragm saddle, rotated towards the left, with four chambers.
    a.heart_x, a.heart_y = a.cx + d.uniform(10, 30), a.cy - d.uniform(0.25, 0.4) * cb
    a.heart_a, a.heart_b = d.uniform(48, 62), d.uniform(38, 50)
    a.heart_theta = math.radians(d.uniform(25, 45))
    a.heart_z0 = min(a.dome_l, a.dome_r) - d.uniform(5, 15)
    a.heart_z1 = a.heart_z0 + d.uniform(95, 125)
    a.hu_myo = d.uniform(35, 50)
    a.hu_chambers = [d.uniform(220, 300), d.uniform(200, 280), d.uniform(150, 200), d.uniform(140, 190)]
    # Aorta (ascending, arch, descending) and inferior vena cava.
    asc = [a.heart_x - 0.25 * a.heart_a, a.heart_y + 0.25 * a.heart_b]
    a.spine_depth = d.uniform(68, 85)
    a.spine_depth_wave = d.wave(6.0, (250, 500), 1)
    a.vb_a, a.vb_b = d.uniform(16, 19), d.uniform(12, 14)
    y_back_mid = a.cy + a.back_flat * a.body_b
    vb_front = y_back_mid - a.spine_depth - a.vb_b
    desc = [a.cx + d.uniform(16, 26), vb_front - d.uniform(10, 16)]
    arch_z = carina[2] + d.uniform(15, 35)
    arch_h = d.uniform(12, 25)
    arch = [[asc[0] + (desc[0] - asc[0]) * (1 - math.cos(t)) / 2, asc[1] + (desc[1] - asc[1]) * (1 - math.cos(t)) / 2,
             arch_z + arch_h * math.sin(t)] for t in [math.pi * i / 8 for i in range(9)]]
    r_asc, r_desc = d.uniform(13, 16), d.uniform(10, 12.5)
    aorta_points = [[asc[0], asc[1], a.heart_z1 - 25]] + arch + [
        [desc[0], desc[1], a.dome_l - 40], [a.cx + 0.3 * (desc[0] - a.cx), desc[1] - 8, -300.0]]
    a.aorta = polyline(aorta_points, [r_asc] + [r_asc + (r_desc - r_asc) * i / 8 for i in range(8)]
                        + [r_desc, r_desc * 0.85])
    a.hu_aorta = a.hu_chambers[0] + d.uniform(-15, 15)
    ivc_x, ivc_y = a.cx - d.uniform(18, 28), vb_front - d.uniform(6, 12)
    a.ivc = polyline([[ivc_x, ivc_y, -300.0], [ivc_x, ivc_y, a.heart_z0 - 20],
                       [a.heart_x - 0.6 * a.heart_a, a.heart_y + 0.3 * a.heart_b, a.heart_z0 + 15]],
                      [d.uniform(9, 12)] * 2)
    a.hu_ivc = d.uniform(110, 150)
    # Liver with portal vessels and an optional gallbladder.
    a.liver_x, a.liver_y = a.cx - d.uniform(0.25, 0.35) * ca, a.cy + d.uniform(-0.1, 0.05) * cb
    a.liver_a, a.liver_b = d.uniform(0.58, 0.7) * ca, d.uniform(0.7, 0.85) * cb
    a.liver_theta = math.radians(d.uniform(-25, -5))
    a.liver_bottom = a.dome_r - d.uniform(130, 175)
    a.hu_liver = d.uniform(50, 70)
    portal = [a.liver_x + 15, a.liver_y + 10, a.dome_r - d.uniform(50, 70)]
    a.liver_vessels = _tree(d, portal, [random_direction(d, [-0.6, d.uniform(-0.5, 0.5), d.uniform(-0.3, 0.7)], 0.4)
                                        for _ in range(d.integer(3, 5))], d.uniform(30, 45), d.uniform(4, 5.5), 2, 0.6)
    a.hu_portal = d.uniform(130, 170)
    a.gallbladder = d.chance(0.5)
    a.gb = [a.liver_x + d.uniform(0.1, 0.3) * a.liver_a, a.liver_y - 0.6 * a.liver_b, a.dome_r - d.uniform(90, 120),
            d.uniform(12, 18), d.uniform(30, 45)]
    # Spleen, stomach, kidneys, psoas.
    a.spleen = [a.cx + d.uniform(0.55, 0.68) * ca, a.cy + d.uniform(0.3, 0.5) * cb, d.uniform(24, 32), d.uniform(38, 50),
                math.radians(d.uniform(25, 50)), a.dome_l - d.uniform(5, 20), d.uniform(80, 120)]
    a.hu_spleen = d.uniform(42, 55)
    a.stomach = [a.cx + d.uniform(0.25, 0.4) * ca, a.cy - d.uniform(0.2, 0.4) * cb, d.uniform(35, 50), d.uniform(28, 38),
                 a.dome_l - d.uniform(5, 15), d.uniform(70, 110), d.uniform(0.2, 0.6)]
    kidney_z = a.dome_r - d.uniform(95, 120)
    a.kidneys = [[side * d.uniform(0.42, 0.52) * ca + a.cx, vb_front + a.vb_b + d.uniform(-5, 10), d.uniform(22, 28),
                  d.uniform(18, 23), side * math.radians(d.uniform(20, 40)),
                  kidney_z - (d.uniform(10, 25) if side < 0 else 0.0), d.uniform(45, 60)] for side in (-1.0, 1.0)]
    a.hu_kidney = [d.uniform(140, 190), d.uniform(80, 110)]
    a.psoas_top = a.dome_r - d.uniform(70, 100)
    # Bowel loops: random walks in the anterior lower abdomen, gas- or fluid-filled.
    a.bowel = bowel_loops(d, d.integer(4, 9), lambda d: [a.cx + d.uniform(-0.55, 0.55) * ca,
                                                         a.cy + d.uniform(-0.7, 0.1) * cb,
                                                         d.uniform(-240, a.dome_r - 100)])
    a.hu_bowel_fluid = d.uniform(5, 30)
    # Spine: vertebral period, disc fraction, kyphosis, sizes; bone densities.
    a.vert_period, a.vert_phase = d.uniform(24, 30), d.uniform(0, 30)
    a.disc_frac = d.uniform(0.18, 0.26)
    a.hu_cortical, a.hu_trabecular = d.uniform(700, 1200), d.uniform(150, 300)
    a.hu_disc, a.hu_arch, a.hu_canal = d.uniform(80, 100), d.uniform(400, 600), d.uniform(15, 35)
    # Ribs: one pair per thoracic vertebra; they drop towards the front and end in cartilage.
    a.rib_drop, a.rib_height, a.rib_thick = d.uniform(45, 85), d.uniform(8, 12), d.uniform(5, 7.5)
    a.rib_low, a.rib_high = a.dome_r - d.uniform(40, 70), a.lung_apex + d.uniform(0, 20)
    a.hu_rib = d.uniform(500, 750)
    a.sternum_low = a.heart_z0 - d.uniform(10, 30)
    # Texture control points (one coarse and one fine grid over the whole anatomy).
    a.texture_coarse, a.texture_fine = d.normal(COARSE.shape), d.normal(FINE.shape)
    return a


class _ControlGrid(SimpleNamespace):
    """A regular control grid over the anatomy's bounding box: start (x, y, z) mm, step mm, shape (z, y, x)."""

    def matrices(self, canvas: Canvas) -> list[torch.Tensor]:
        return [bspline_matrix(c, s, self.step, n) for c, s, n in
                zip((canvas.z, canvas.y, canvas.x), self.start[::-1], self.shape)]


COARSE = _ControlGrid(start=(-200.0, -200.0, -320.0), step=24.0, shape=(28, 18, 18))
FINE = _ControlGrid(start=(-200.0, -200.0, -320.0), step=8.0, shape=(81, 51, 51))


# ----------------------------------------------------------------------------------------------
# Rendering: soft (partial-volume) masks painted in anatomical order onto a voxel grid.
# ----------------------------------------------------------------------------------------------

def sines(z: torch.Tensor, terms) -> torch.Tensor:
    out = torch.zeros_like(z)
    for amplitude, period, phase in terms:
        out = out + amplitude * torch.sin(z * (2 * math.pi / period) + phase)
    return out


def ellipse_sd(x: torch.Tensor, y: torch.Tensor, cx, cy, a, b, theta: float = 0.0) -> torch.Tensor:
    """Approximate signed distance (mm, positive inside) to an ellipse; first-order exact at its border."""
    dx, dy = x - cx, y - cy
    if theta:
        c, s = math.cos(theta), math.sin(theta)
        dx, dy = c * dx + s * dy, c * dy - s * dx
    ua, vb = dx / (a * a), dy / (b * b)
    return (1 - (dx * ua + dy * vb)) / (2 * torch.sqrt(ua * ua + vb * vb) + 1e-6)


class _Region:
    """A box of the canvas (z, y, x slices) with its coordinate vectors, broadcastable as [d, h, w]."""

    def __init__(self, canvas: Canvas, ks: slice, rows: slice, cols: slice):
        self.index = (ks, rows, cols)
        self.X, self.Y, self.Z = canvas.X[..., cols], canvas.Y[:, rows], canvas.Z[ks]

    def crop(self, t: torch.Tensor) -> torch.Tensor:
        """The part of a canvas-sized (or broadcastable ``[D|1, H|1, W|1]``) tensor inside the box."""
        return t[tuple(i if n > 1 else slice(None) for i, n in zip(self.index, t.shape))]


class Canvas:
    """The voxel grid, the HU volume and (optionally) the label map being painted."""

    def __init__(self, shape, spacing, z_center, device, labels: bool, xy_center: Sequence[float] = (0.0, 0.0)):
        d, h, w = shape
        self.shape, self.spacing = (d, h, w), spacing
        sx, sy, sz = spacing
        ox, oy, oz = phantom_meta(shape, spacing, z_center, xy_center)["origin"]
        kw = {"device": device, "dtype": torch.float32}
        self.x = ox + sx * torch.arange(w, **kw)
        self.y = oy + sy * torch.arange(h, **kw)
        self.z = oz + sz * torch.arange(d, **kw)
        self.X, self.Y, self.Z = self.x.view(1, 1, w), self.y.view(1, h, 1), self.z.view(d, 1, 1)
        self.origin, self.edge = (ox, oy, oz), sx
        self.vol = torch.full(shape, HU_AIR, **kw)
        self.labels = torch.zeros(shape, dtype=torch.uint8, device=device) if labels else None
        self.all = _Region(self, slice(0, d), slice(0, h), slice(0, w))

    def region(self, z: tuple[float, float], x: tuple[float, float] = (-1e9, 1e9),
               y: tuple[float, float] = (-1e9, 1e9)) -> _Region | None:
        """The box of voxels whose centres lie in the given mm ranges (None if it is empty)."""
        index = []
        for (lo, hi), origin, step, n in zip((x, y, z), self.origin, self.spacing, self.shape[::-1]):
            k0 = max(0, math.ceil((lo - origin) / step))
            k1 = min(n, math.floor((hi - origin) / step) + 1)
            if k1 <= k0:
                return None
            index.append(slice(k0, k1))
        return _Region(self, *index[::-1])

    def ramp(self, sd: torch.Tensor) -> torch.Tensor:
        """Partial-volume occupancy of a voxel at signed distance ``sd``: a one-voxel linear ramp."""
        return (sd / self.edge + 0.5).clamp_(0.0, 1.0)

    def paint(self, reg: _Region, mask: torch.Tensor, hu, tissue: str) -> None:
        """Blend ``hu`` into the box ``reg`` with weight ``mask`` (broadcastable to the box)."""
        vol = self.vol[reg.index]
        vol.add_((hu - vol) * mask)
        if self.labels is not None:
            lab = self.labels[reg.index]
            lab.copy_(torch.where(mask.expand_as(lab) > 0.5, _LABEL[tissue], lab))

    def paint_tubes(self, segments: list[list[float]], hu: float, tissue: str, extra_radius: float = 0.0,
                    within: torch.Tensor | None = None) -> None:
        """Paint a union of tubes (see :meth:`tubes`), optionally only inside the canvas-sized mask ``within``."""
        occupancy, reg = self.tubes(segments, extra_radius)
        if reg is not None:
            mask = reg.crop(occupancy)
            self.paint(reg, mask if within is None else mask * reg.crop(within), hu, tissue)

    def tubes(self, segments: list[list[float]], extra_radius: float = 0.0) -> tuple[torch.Tensor, _Region | None]:
        """Occupancy ``[D, H, W]`` of a union of round tubes ``[x0, y0, z0, x1, y1, z1, r]`` (mm), and its bounding box."""
        out = torch.zeros(self.shape, device=self.vol.device).view(-1)
        if not segments:
            return out.view(self.shape), None
        seg = torch.tensor(segments, dtype=torch.float32, device=self.vol.device)
        seg[:, 6] += extra_radius
        pieces = _split_segments(seg, max(12.0, 3 * self.spacing[2]))
        reach = float(pieces[:, 6].max()) + self.edge
        half_len = 0.5 * float((pieces[:, 3:6] - pieces[:, 0:3]).norm(dim=1).max())
        spacing = torch.tensor(self.spacing[::-1], device=out.device)
        origin = torch.tensor(self.origin[::-1], device=out.device)
        half = [math.ceil((half_len + reach) / s) for s in self.spacing[::-1]]
        mid = (pieces[:, 0:3] + pieces[:, 3:6]).flip(1) / 2
        centre = torch.round((mid - origin) / spacing).long()
        half_t = torch.tensor(half, device=out.device)
        inside = ((centre + half_t >= 0) & (centre - half_t < torch.tensor(self.shape, device=out.device))).all(1)
        pieces, centre = pieces[inside], centre[inside]
        if pieces.shape[0] == 0:
            return out.view(self.shape), None
        box = math.prod(2 * h + 1 for h in half)
        chunk = max(1, 4_000_000 // box)
        for start in range(0, pieces.shape[0], chunk):
            self._scatter_tubes(out, pieces[start:start + chunk], centre[start:start + chunk], half, origin, spacing)
        lo = (centre - half_t).amin(0).clamp_min(0).tolist()
        hi = (centre + half_t + 1).amax(0).tolist()
        return out.view(self.shape), _Region(self, *(slice(a, b) for a, b in zip(lo, hi)))

    def _scatter_tubes(self, out, pieces, centre, half, origin, spacing):
        n = pieces.shape[0]
        idx, pos = [], []
        for axis in range(3):
            offsets = torch.arange(-half[axis], half[axis] + 1, device=out.device)
            index = centre[:, axis:axis + 1] + offsets
            idx.append(index)
            pos.append(origin[axis] + spacing[axis] * index.float())
        shape = [(n, -1, 1, 1), (n, 1, -1, 1), (n, 1, 1, -1)]
        p0 = pieces[:, 0:3].flip(1)
        d = (pieces[:, 3:6] - pieces[:, 0:3]).flip(1)
        w = [(pos[i] - p0[:, i:i + 1]).view(shape[i]) for i in range(3)]
        dv = [d[:, i].view(n, 1, 1, 1) for i in range(3)]
        t = ((w[0] * dv[0] + w[1] * dv[1] + w[2] * dv[2]) / (d * d).sum(1).clamp_min(1e-6).view(n, 1, 1, 1)).clamp_(0, 1)
        dist2 = sum((w[i] - t * dv[i]) ** 2 for i in range(3))
        occ = self.ramp(pieces[:, 6].view(n, 1, 1, 1) - dist2.sqrt())
        valid = [((idx[i] >= 0) & (idx[i] < self.shape[i])).view(shape[i]) for i in range(3)]
        occ = occ * (valid[0] & valid[1] & valid[2])
        d_, h_, w_ = self.shape
        lin = ((idx[0].clamp(0, d_ - 1).view(shape[0]) * h_ + idx[1].clamp(0, h_ - 1).view(shape[1])) * w_
               + idx[2].clamp(0, w_ - 1).view(shape[2]))
        out.scatter_reduce_(0, lin.expand_as(occ).reshape(-1), occ.reshape(-1), reduce="amax")


def _split_segments(seg: torch.Tensor, max_len: float) -> torch.Tensor:
    """Cut segments ``[S, 7]`` into pieces no longer than ``max_len`` mm (same radius)."""
    length = (seg[:, 3:6] - seg[:, 0:3]).norm(dim=1)
    count = (length / max_len).ceil().clamp_min(1).long()
    rows = torch.repeat_interleave(torch.arange(seg.shape[0], device=seg.device), count)
    first = torch.repeat_interleave(count.cumsum(0) - count, count)
    k = (torch.arange(rows.shape[0], device=seg.device) - first).float().unsqueeze(1)
    n = count[rows].float().unsqueeze(1)
    p0, p1 = seg[rows, 0:3], seg[rows, 3:6]
    return torch.cat([p0 + (p1 - p0) * k / n, p0 + (p1 - p0) * (k + 1) / n, seg[rows, 6:7]], dim=1)


def profile(z: torch.Tensor, z_lo: float, z_hi: float, power: float = 0.5, skew: float = 0.0) -> torch.Tensor:
    """Cross-section scale of an organ along z: 0 outside ``[z_lo, z_hi]``, an ellipsoid-like bump inside."""
    mid, half = (z_lo + z_hi) / 2, (z_hi - z_lo) / 2
    t = (z - mid) / half
    return ((1 - t * t).clamp_min(0) ** power * (1 + skew * t)).clamp_min(1e-3)


def around(cx: float, cy: float, radius: float) -> dict:
    """In-plane box arguments of :meth:`Canvas.region` for a disc of ``radius`` mm around (cx, cy)."""
    return {"x": (cx - radius, cx + radius), "y": (cy - radius, cy + radius)}


def _render(a: SimpleNamespace, cv: Canvas) -> None:
    """Paint the patient ``a`` onto the canvas, outside in, each tissue over the ones it displaces."""
    X, Y, Z = cv.X, cv.Y, cv.Z
    full = cv.all
    # Body outline: an ellipse that breathes along z, flattened at the back where it lies on the table.
    body_a = a.body_a * (1 + sines(Z, a.body_a_wave)) + a.shoulder * torch.sigmoid((Z - a.dome_r - 140) / 20)
    body_b = a.body_b * (1 + sines(Z, a.body_b_wave)) + a.belly * torch.exp(-(((Z + 120) / 70) ** 2))
    cx, cy = a.cx + sines(Z, a.center_wave), a.cy + 0.5 * sines(Z, a.center_wave[::-1])
    y_back = cy + a.back_flat * body_b
    if a.table:
        y_top = a.cy + a.back_flat * a.body_b * 1.1 + a.table_gap - X * X / (2 * a.table_radius)
        depth = Y - y_top
        cv.paint(full, cv.ramp(torch.minimum(depth, 40 - depth)), -850.0, "table")
        shell = cv.ramp(torch.minimum(depth, 5 - depth)) + cv.ramp(torch.minimum(depth - 34, 40 - depth))
        cv.paint(full, shell.clamp_(0, 1), 150.0, "table")
    body_sd = torch.minimum(ellipse_sd(X, Y, cx, cy, body_a, body_b), y_back - Y)
    fat = a.fat * (1 + sines(Z, a.fat_wave)) * (1 - 0.35 * (Y - cy) / body_b)
    cv.paint(full, cv.ramp(body_sd), a.hu_skin, "skin")
    cv.paint(full, cv.ramp(body_sd - a.skin), a.hu_fat, "fat")
    cv.paint(full, cv.ramp(body_sd - a.skin - fat), a.hu_muscle, "muscle")
    cavity_sd = body_sd - a.skin - fat - a.muscle
    cv.paint(full, cv.ramp(cavity_sd), a.hu_cavity, "fat")
    dome = _dome(a, X, Y)

    # Bowel loops (painted first in the abdomen so that the solid organs push them aside).
    below = cv.ramp(torch.minimum(cavity_sd - 1, dome - 4 - Z))
    gas = [s for segments, has_gas in a.bowel if has_gas for s in segments]
    fluid = [s for segments, has_gas in a.bowel if not has_gas for s in segments]
    cv.paint_tubes(gas + fluid, 40.0, "muscle", 2.5, below)
    cv.paint_tubes(gas, HU_AIR, "gas", within=below)
    cv.paint_tubes(fluid, a.hu_bowel_fluid, "fluid", within=below)

    # Lungs: inside the cavity, lateral to the mediastinum, above the domes, tapering to the apex.
    reg = cv.region((a.dome_r - a.dome_drop - 20, a.lung_apex))
    if reg is not None:
        lung_mask = torch.zeros_like(cv.vol[reg.index])
        for side in (-1.0, 1.0):
            lx = a.cx + side * 0.5 * a.cav_a
            taper = 0.85 * a.cav_a * ((a.lung_apex - reg.Z) / a.lung_taper).clamp(0, 1).sqrt()
            sd = torch.minimum(reg.crop(cavity_sd) - 3, side * (X - reg.crop(cx)) - a.mediastinum)
            sd = torch.minimum(sd, reg.Z - dome)
            sd = torch.minimum(sd, taper - torch.sqrt((X - lx) ** 2 + (Y - reg.crop(cy)) ** 2))
            lung_mask = torch.maximum(lung_mask, cv.ramp(sd))
        cv.paint(reg, lung_mask, a.hu_lung, "lung")
        cv.paint(reg, reg.crop(cv.tubes(a.lung_vessels)[0]) * lung_mask, 40.0, "lung_vessel")
    cv.paint_tubes(a.trachea + a.bronchi, 50.0, "muscle", 2.0)
    cv.paint_tubes(a.trachea + a.bronchi, HU_AIR, "air")

    # Heart: pericardial fat, myocardium, then the contrast-filled chambers in heart coordinates.
    reg = cv.region((a.heart_z0, a.heart_z1), **around(a.heart_x, a.heart_y, max(a.heart_a, a.heart_b) + 10))
    if reg is not None:
        scale = profile(reg.Z, a.heart_z0, a.heart_z1, 0.5, -0.25)
        args = (reg.X, reg.Y, a.heart_x, a.heart_y)
        cv.paint(reg, cv.ramp(ellipse_sd(*args, (a.heart_a + 6) * scale, (a.heart_b + 6) * scale, a.heart_theta)),
                 a.hu_cavity, "fat")
        cv.paint(reg, cv.ramp(ellipse_sd(*args, a.heart_a * scale, a.heart_b * scale, a.heart_theta)), a.hu_myo,
                 "myocardium")
        c, s = math.cos(a.heart_theta), math.sin(a.heart_theta)
        span = a.heart_z1 - a.heart_z0
        chambers = [  # (u, v) offsets in heart axes, semi-axes, z range as fractions of the heart height
            (0.3, 0.15, 0.42, 0.45, 0.05, 0.7), (-0.05, 0.55, 0.4, 0.35, 0.5, 0.98),
            (-0.35, -0.25, 0.42, 0.42, 0.05, 0.75), (-0.6, 0.25, 0.3, 0.38, 0.35, 0.9)]
        for (u, v, sa, sb, f0, f1), hu in zip(chambers, a.hu_chambers):
            inner = profile(reg.Z, a.heart_z0 + f0 * span, a.heart_z0 + f1 * span, 0.5)
            x0 = a.heart_x + c * u * a.heart_a - s * v * a.heart_b
            y0 = a.heart_y + s * u * a.heart_a + c * v * a.heart_b
            sd = ellipse_sd(reg.X, reg.Y, x0, y0, sa * a.heart_a * inner, sb * a.heart_b * inner, a.heart_theta)
            cv.paint(reg, cv.ramp(sd), hu, "contrast_blood")
    cv.paint_tubes(a.aorta, a.hu_aorta, "contrast_blood")
    cv.paint_tubes(a.ivc, a.hu_ivc, "contrast_blood")
    _render_abdomen(a, cv, below)
    _render_spine(a, cv, y_back)
    _render_ribs(a, cv, cx, cy, cavity_sd, body_b)

    add_texture(cv, a.texture_coarse, a.texture_fine)


def add_texture(cv: Canvas, coarse: torch.Tensor, fine: torch.Tensor) -> None:
    """Add two smooth random fields (control values on ``COARSE`` and ``FINE``), scaled per intensity band.

    The fields are fixed in patient space, so a window of the anatomy has the same texture as the whole.
    """
    field = 0.7 * interpolate_grid(coarse.to(cv.vol.device), COARSE.matrices(cv))
    field += 1.2 * interpolate_grid(fine.to(cv.vol.device), FINE.matrices(cv))
    bands = torch.tensor(_TEXTURE_BANDS, device=cv.vol.device)
    amplitude = torch.tensor(_TEXTURE_AMPLITUDE, device=cv.vol.device)[torch.bucketize(cv.vol, bands)]
    cv.vol.add_(amplitude * field)


def _dome(a: SimpleNamespace, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Height (mm) of the diaphragm over the axial plane ``[1, H, W]``: the higher of two paraboloids."""
    ry = ((Y - a.dome_y) / (0.9 * a.cav_b)) ** 2
    right = a.dome_r - a.dome_drop * (((X - a.cx + a.dome_x) / (0.9 * a.cav_a)) ** 2 + ry)
    left = a.dome_l - a.dome_drop * (((X - a.cx - a.dome_x) / (0.9 * a.cav_a)) ** 2 + ry)
    return torch.maximum(right, left)


def _render_abdomen(a: SimpleNamespace, cv: Canvas, below: torch.Tensor) -> None:
    """Liver (with portal vessels and gallbladder), spleen, stomach and kidneys, all below the diaphragm."""
    reg = cv.region((a.liver_bottom, a.dome_r + 5), **around(a.liver_x, a.liver_y, max(a.liver_a, a.liver_b)))
    if reg is not None:
        scale = profile(reg.Z, a.liver_bottom, a.dome_r + 30, 0.6, 0.5)
        liver = cv.ramp(ellipse_sd(reg.X, reg.Y, a.liver_x, a.liver_y, a.liver_a * scale, a.liver_b * scale,
                                    a.liver_theta)) * reg.crop(below)
        cv.paint(reg, liver, a.hu_liver, "liver")
        cv.paint(reg, reg.crop(cv.tubes(a.liver_vessels)[0]) * liver, a.hu_portal, "contrast_blood")
        if a.gallbladder:
            gx, gy, gz, gr, gh = a.gb
            radius = gr * profile(reg.Z, gz - gh, gz + gh)
            cv.paint(reg, cv.ramp(ellipse_sd(reg.X, reg.Y, gx, gy, radius, radius)) * liver, 10.0, "fluid")
    px, py, pa, pb, pt, ptop, ph = a.spleen
    reg = cv.region((ptop - ph, ptop), **around(px, py, max(pa, pb)))
    if reg is not None:
        scale = profile(reg.Z, ptop - ph, ptop)
        sd = ellipse_sd(reg.X, reg.Y, px, py, pa * scale, pb * scale, pt)
        cv.paint(reg, cv.ramp(sd) * reg.crop(below), a.hu_spleen, "spleen")
    gx, gy, ga, gb, gtop, gh, level = a.stomach
    reg = cv.region((gtop - gh, gtop), **around(gx, gy, max(ga, gb)))
    if reg is not None:
        scale = profile(reg.Z, gtop - gh, gtop, 0.5, 0.3)
        sd = ellipse_sd(reg.X, reg.Y, gx, gy, ga * scale, gb * scale, 0.3)
        inside = reg.crop(below)
        cv.paint(reg, cv.ramp(sd) * inside, 40.0, "muscle")
        lumen = cv.ramp(sd - 3) * inside
        cv.paint(reg, lumen, a.hu_bowel_fluid, "fluid")
        cv.paint(reg, lumen * cv.ramp(gy - gb * (1 - 2 * level) - reg.Y), HU_AIR, "gas")
    for kx, ky, ka, kb, kt, kz, kh in a.kidneys:
        reg = cv.region((kz - kh, kz + kh), **around(kx, ky, max(ka, kb) + 8))
        if reg is None:
            continue
        scale = profile(reg.Z, kz - kh, kz + kh)
        inside = reg.crop(below)
        sd = ellipse_sd(reg.X, reg.Y, kx, ky, ka * scale, kb * scale, kt)
        cv.paint(reg, cv.ramp(sd + 6) * inside, a.hu_cavity, "fat")
        cv.paint(reg, cv.ramp(sd) * inside, a.hu_kidney[0], "kidney")
        cv.paint(reg, cv.ramp(sd - 7) * inside, a.hu_kidney[1], "kidney")
        sinus = ellipse_sd(reg.X, reg.Y, kx - math.copysign(0.45 * ka, kx - a.cx), ky, 0.35 * ka * scale,
                            0.4 * kb * scale, kt)
        cv.paint(reg, cv.ramp(sinus) * cv.ramp(sd) * inside, a.hu_cavity + 40, "fat")


def _render_spine(a: SimpleNamespace, cv: Canvas, y_back: torch.Tensor) -> None:
    """Paraspinal and psoas muscles, vertebrae with discs (periodic in z), neural arch and canal."""
    canal_r = 8.0
    vb_y_all = y_back - a.spine_depth - sines(cv.Z, a.spine_depth_wave)
    reg = cv.region((-1e9, 1e9), x=(a.cx - 80, a.cx + 80), y=(float(vb_y_all.min()) - 40, float(y_back.max()) + 5))
    if reg is None:  # a small field of view away from the spine
        return
    X, Y, Z = reg.X, reg.Y, reg.Z
    lumbar = ((a.dome_r - Z) / 150).clamp(0, 1)
    vb_a, vb_b = a.vb_a * (1 + 0.35 * lumbar), a.vb_b * (1 + 0.3 * lumbar)
    vb_y = reg.crop(vb_y_all)
    canal_y = vb_y + vb_b + canal_r + 2
    for side in (-1.0, 1.0):
        cv.paint(reg, cv.ramp(ellipse_sd(X, Y, a.cx + side * 30, canal_y + 22, 24.0, 22.0)), a.hu_muscle, "muscle")
    grow = ((a.psoas_top - Z) / 120).clamp(0, 1)
    for side in (-1.0, 1.0):
        sd = ellipse_sd(X, Y, a.cx + side * (vb_a + 6 + 14 * grow), vb_y - 2, 4 + 18 * grow, 4 + 14 * grow)
        cv.paint(reg, cv.ramp(sd) * (Z < a.psoas_top), a.hu_muscle, "muscle")
    # The vertebral phase depends on z only: discs and end plates are axial layers.
    phase = (Z - a.vert_phase) / a.vert_period
    into_bone = (phase - phase.floor() - a.disc_frac) * a.vert_period
    to_disc = torch.minimum(into_bone, a.vert_period * (1 - a.disc_frac) - into_bone)
    bone = cv.ramp(to_disc)
    plate = bone * cv.ramp(2.0 - to_disc)
    vb_sd = ellipse_sd(X, Y, a.cx, vb_y, vb_a, vb_b)
    body = cv.ramp(vb_sd)
    cv.paint(reg, body, a.hu_disc, "disc")
    cv.paint(reg, body * bone, a.hu_trabecular, "trabecular_bone")
    cv.paint(reg, body * torch.maximum(cv.ramp(2.5 - vb_sd) * bone, plate), a.hu_cortical, "cortical_bone")
    dist = torch.sqrt((X - a.cx) ** 2 + (Y - canal_y) ** 2)
    arch = cv.ramp(torch.minimum(canal_r + 5 - dist, dist - canal_r))
    arch = torch.maximum(arch, cv.ramp(ellipse_sd(X, Y, a.cx, canal_y + canal_r + 18, 4.0, 16.0)))
    for side in (-1.0, 1.0):
        arch = torch.maximum(arch, cv.ramp(ellipse_sd(X, Y, a.cx + side * 24, canal_y + 2, 15.0, 4.5, side * 0.25)))
    cv.paint(reg, arch * cv.ramp(to_disc - 0.2 * a.vert_period), a.hu_arch, "posterior_arch")
    cv.paint(reg, cv.ramp(canal_r - dist), a.hu_canal, "canal")


def _render_ribs(a: SimpleNamespace, cv: Canvas, cx, cy, cavity_sd: torch.Tensor, body_b: torch.Tensor) -> None:
    """Ribs (one pair per vertebra between ``rib_low`` and ``rib_high``) and the sternum."""
    reg = cv.region((a.rib_low - a.rib_drop - 20, a.rib_high + 20))
    if reg is None:
        return
    phi = torch.atan2((reg.X - reg.crop(cx)).abs(), reg.Y - reg.crop(cy))
    start = 0.35
    drop = a.rib_drop * ((phi - start).clamp_min(0) / (math.pi - start)) ** 1.3
    u = (reg.Z + drop - a.vert_phase - a.disc_frac * a.vert_period) / a.vert_period
    level = u.round()
    attach = a.vert_phase + level * a.vert_period
    in_z = cv.ramp(a.rib_height / 2 - (u - level).abs() * a.vert_period)
    radial = cv.ramp(a.rib_thick / 2 - (reg.crop(cavity_sd) + a.rib_thick / 2).abs())
    # Lower ribs are shorter (the last ones float); all end in cartilage towards the sternum.
    shortening = ((a.rib_low + 5 * a.vert_period - attach) / (5 * a.vert_period)).clamp(0, 1)
    end = math.pi - 0.12 - 1.4 * shortening
    along = cv.ramp((phi - start) * a.cav_a) * cv.ramp((end - phi) * a.cav_a)
    rib = in_z * radial * along * ((attach >= a.rib_low) & (attach <= a.rib_high))
    cartilage = cv.ramp((phi - end + 0.45) * a.cav_a)
    cv.paint(reg, rib * (1 - cartilage), a.hu_rib, "rib")
    cv.paint(reg, rib * cartilage, 130.0, "cartilage")
    reg = cv.region((a.sternum_low, a.rib_high), x=(a.cx - 40, a.cx + 40))
    if reg is not None:
        y_st = reg.crop(cy) - (reg.crop(body_b) - a.skin - a.fat - 5)
        cv.paint(reg, cv.ramp(ellipse_sd(reg.X, reg.Y, reg.crop(cx), y_st, 15.0, 6.0)), a.hu_rib * 0.7, "rib")


def checked_grid(seed: int, shape: Sequence[int], spacing: Sequence[float] | None):
    """``(shape, spacing)`` as tuples (default spacing filled in); ValueError for a bad seed, shape or spacing."""
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"phantom shape {tuple(shape)}: three positive sizes (D, H, W) are accepted")
    shape = tuple(int(n) for n in shape)
    spacing = default_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"phantom spacing {spacing}: three positive values (sx, sy, sz) in mm are accepted")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"phantom seed {seed!r}: a non-negative int is accepted")
    return shape, spacing


def generate_phantom(seed: int, shape: Sequence[int] = (128, 128, 128), spacing: Sequence[float] | None = None,
                     z_center: float = 0.0, device: str | torch.device | None = None,
                     return_labels: bool = False, xy_center: Sequence[float] = (0.0, 0.0)):
    """Render the phantom of patient ``seed`` on a voxel grid.

    Args:
        seed: patient id (any int >= 0; see ``TRAIN_SEEDS`` / ``EVAL_SEEDS``).
        shape: ``(D, H, W)`` voxels (axial slices D, rows H from anterior to posterior, columns W
            from the patient's right to left).
        spacing: ``(sx, sy, sz)`` mm; default ``FOV_MM / W`` in-plane and the same along z.
        z_center: height (mm) of the volume's centre; 0 is near the diaphragm, positive is superior.
        device: where to render (CPU or CUDA); the anatomy is the same on every device.
        return_labels: also return a uint8 label map (ids in ``TISSUES``) of the voxels whose
            painted weight exceeded one half; costs extra time.
        xy_center: in-plane position (x, y) mm of the grid's centre; off-centre grids with a small
            field of view cut the body.

    Returns:
        float32 tensor ``[D, H, W]`` in HU (air -1000, no noise), or ``(hu, labels)``.
    """
    shape, spacing = checked_grid(seed, shape, spacing)
    canvas = Canvas(shape, spacing, float(z_center), device, return_labels, xy_center)
    _render(_draw_anatomy(seed), canvas)
    return (canvas.vol, canvas.labels) if return_labels else canvas.vol


def whole_phantom(seed: int, shape: Sequence[int], device: str | torch.device | None = None):
    """The phantom of ``seed`` over the whole anatomy: ``FOV_MM`` across and along z (z = -192 .. +192 mm).

    This is the training volume of the original slice pool. Returns ``(hu [D, H, W], spacing (sx, sy, sz))``.
    """
    d, h, w = shape
    spacing = (FOV_MM / w, FOV_MM / h, FOV_MM / d)
    return generate_phantom(seed, (d, h, w), spacing, device=device), spacing


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: write one phantom as an int16 (or float32) HU NIfTI with its spacing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="patient seed (EVAL_SEEDS are held out)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEMO_SHAPE), metavar=("D", "H", "W"))
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                        help="mm; default FOV_MM/W in-plane and isotropic")
    parser.add_argument("--z-center", type=float, default=DEMO_Z_CENTER, help="mm; 0 is near the diaphragm")
    parser.add_argument("--dtype", choices=("int16", "float32"), default="int16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="output file (.nii.gz)")
    args = parser.parse_args(argv)
    from utils.io import write_volume

    volume = generate_phantom(args.seed, args.shape, args.spacing, args.z_center, args.device).cpu()
    array = volume.round().to(torch.int16).numpy() if args.dtype == "int16" else volume.numpy()
    path = write_volume(args.out, array, phantom_meta(args.shape, args.spacing, args.z_center))
    print(f"wrote {path}: seed {args.seed}, shape {tuple(args.shape)}, "
          f"spacing {phantom_meta(args.shape, args.spacing)['spacing']} mm")
    return path


if __name__ == "__main__":
    main()
