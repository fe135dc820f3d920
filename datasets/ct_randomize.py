"""Domain randomisation of CT training volumes: what a user's scan may look like, drawn from a seed.

A randomised volume (``randomized_volume``) is made in seven steps, every choice drawn from the seed
alone (a random stream separate from the anatomy's), on any device:

1. body region: chest and upper abdomen, or the abdomen below (``datasets.ct_phantom``), head,
   pelvis or a nested-ellipsoid object (``datasets.ct_regions``), with the weights of
   ``CTRandomization.regions``; with probability ``plain`` the volume is instead exactly the original
   training phantom (``ct_phantom.whole_phantom``: 3 mm pixels at 128, the whole anatomy along z), so the
   original distribution stays represented;
2. geometry: in-plane spacing log-uniform over the region's usual range (about 1.1 to 3.6 mm per
   pixel at 128 px), or with probability ``zoom_in`` over its zoomed-in range (down to 0.45 mm, a
   58 mm field of view), the grid centre shifted in-plane (small fields of view cut the body), a z
   spacing of 1 to 5 mm and a random z window of the region;
3. inserts: with probability ``insert_chance``, 1 to 4 ellipsoids of random size, orientation and
   HU (lesion, cyst or fat, calcification, air, contrast; no metal) inside the body;
4. slice thickness: a Gaussian blur along z of FWHM ``thickness_mm`` (no blur when it is below the
   z spacing's resolution);
5. scanner HU scale: a monotone piecewise-linear remap of the HU axis with small offsets per
   tissue range (air, lung, fat, water) and gains for soft tissue and bone;
6. drift: a smooth additive field inside the body (beam hardening, calibration drifts);
7. noise: with probability ``noise_chance``, CT-like correlated noise per slice: white noise
   filtered by a ramp times a Gaussian apodisation (the filtered back-projection texture),
   sometimes anisotropic (streaks), of standard deviation ``noise_hu`` at the 128 px scale.

Seeds: training draws from ``ct_phantom.TRAIN_SEEDS`` only (the pool checks each seed with
``ct_phantom.check_train_seed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from datasets import ct_phantom, ct_regions
from datasets.ct_phantom import Draw
from datasets.fields import blur_axis, bspline_matrix, interpolate_grid, piecewise_linear
from utils.volume import HU_STORED_RANGE

# Offset between a seed's random streams (anatomy, scalar choices, arrays), larger than any seed range.
_STREAM = 1 << 40


@dataclass(frozen=True)
class Region:
    """One body region: its generator, z range of grid centres (mm), in-plane spacings (mm) at 128 px
    (zoomed in: ``spacing[0]``..``spacing[1]``; usual: ``spacing[1]``..``spacing[2]``), z extent (mm)
    and the semi-axes (x, y) of the body (mm), which bound the in-plane shift."""

    generate: Callable
    z_centers: tuple[float, float]
    spacing: tuple[float, float, float]
    height: float
    body: tuple[float, float]


REGIONS: dict[str, Region] = {
    "chest": Region(ct_phantom.generate_phantom, (-60.0, 180.0), (0.6, 1.5, 3.4), 480.0, (150.0, 110.0)),
    "abdomen": Region(ct_phantom.generate_phantom, (-230.0, -60.0), (0.6, 1.5, 3.4), 480.0, (150.0, 110.0)),
    "head": Region(ct_regions.generate_head, (-110.0, 90.0), (0.45, 1.1, 2.4), 250.0, (70.0, 90.0)),
    "pelvis": Region(ct_regions.generate_pelvis, (-150.0, 200.0), (0.6, 1.6, 3.6), 400.0, (170.0, 120.0)),
    "objects": Region(ct_regions.generate_objects, (-60.0, 60.0), (0.8, 1.2, 3.0), 200.0, (80.0, 80.0)),
}

# Knots of the HU remap (step 5), in HU: air, lung, -500, fat, water, soft tissue, and bone.
_HU_KNOTS = (-1000.0, -850.0, -500.0, -100.0, 0.0, 60.0, 300.0, 1000.0, 2000.0)


@dataclass(frozen=True)
class CTRandomization:
    """Ranges of the randomisation (see the module docstring for the steps)."""

    regions: dict[str, float] = field(default_factory=lambda: {
        "chest": 0.3, "abdomen": 0.15, "head": 0.25, "pelvis": 0.18, "objects": 0.12})
    plain: float = 0.25
    zoom_in: float = 0.25
    z_spacing_mm: tuple[float, float] = (1.0, 5.0)
    thickness_mm: tuple[float, float] = (0.5, 6.0)
    insert_chance: float = 0.35
    water_offset_hu: float = 8.0
    tissue_offset_hu: float = 30.0
    soft_gain: float = 0.1
    bone_gain: float = 0.15
    drift_hu: float = 25.0
    noise_chance: float = 0.6
    noise_hu: tuple[float, float] = (2.0, 25.0)
    streak_chance: float = 0.35

    def __post_init__(self):
        unknown = set(self.regions) - set(REGIONS)
        if unknown or not self.regions or min(self.regions.values()) < 0 or sum(self.regions.values()) <= 0:
            raise ValueError(f"regions {self.regions}: non-negative weights (not all 0) of {sorted(REGIONS)} "
                             "are accepted")


def draw_plan(seed: int, shape: Sequence[int] = (64, 128, 128),
              settings: CTRandomization = CTRandomization()) -> dict:
    """Every scalar choice of the randomised volume of ``seed`` (cheap: nothing is rendered).

    Returns a JSON-friendly dict: ``region`` ("plain" or a key of ``REGIONS``), ``spacing`` (x, y, z)
    mm, ``xy_center`` and ``z_center`` mm; unless plain also ``inserts`` (centre, semi-axes, angle,
    HU of each), ``thickness`` mm, ``hu_knots`` (the remap's targets at ``_HU_KNOTS``), ``drift`` HU,
    ``noise_hu`` (0 for none), ``streaks`` and ``noise`` (the filter's parameters).
    """
    d, h, w = (int(n) for n in shape)
    draw = Draw(seed + _STREAM)
    names = list(settings.regions)
    weights = torch.tensor([settings.regions[n] for n in names], dtype=torch.float64)
    name = names[int(torch.multinomial(weights, 1, generator=draw.gen))]
    if draw.chance(settings.plain):
        spacing = (ct_phantom.FOV_MM / w, ct_phantom.FOV_MM / h, ct_phantom.FOV_MM / d)
        return {"region": "plain", "spacing": spacing, "xy_center": (0.0, 0.0), "z_center": 0.0}
    region = REGIONS[name]
    # Geometry: zoom (in-plane spacing), in-plane shift, z spacing and window.
    lo, mid, hi = region.spacing
    lo, hi = (lo, mid) if draw.chance(settings.zoom_in) else (mid, hi)
    sxy = math.exp(draw.uniform(math.log(lo), math.log(hi))) * 128 / w
    fov = sxy * w
    shift = tuple(draw.uniform(-1, 1) * max(10.0, r * 0.9 - fov / 4) for r in region.body)
    sz = draw.uniform(settings.z_spacing_mm[0], min(settings.z_spacing_mm[1], region.height / d))
    plan = {"region": name, "spacing": (sxy, sxy, sz), "xy_center": shift, "z_center": draw.uniform(*region.z_centers)}
    # Inserts: ellipsoids in grid coordinates (mm from the grid centre).
    plan["inserts"] = []
    if draw.chance(settings.insert_chance):
        for _ in range(draw.integer(1, 4)):
            center = (draw.uniform(-0.35, 0.35) * w * sxy, draw.uniform(-0.35, 0.35) * h * sxy,
                      draw.uniform(-0.45, 0.45) * d * sz)
            axes = tuple(math.exp(draw.uniform(math.log(2.0), math.log(30.0))) for _ in range(3))
            kind = draw.uniform(0, 1)
            value = (draw.uniform(-20, 120) if kind < 0.45 else draw.uniform(-120, 0) if kind < 0.65
                     else draw.uniform(200, 1200) if kind < 0.85 else ct_phantom.HU_AIR if kind < 0.95
                     else draw.uniform(120, 400))
            plan["inserts"].append((center, axes, draw.uniform(0, math.pi), value))
    plan["thickness"] = draw.uniform(*settings.thickness_mm)
    # Scanner HU scale: targets of the knots, with offsets per tissue range and gains for soft tissue and bone.
    water = draw.uniform(-settings.water_offset_hu, settings.water_offset_hu)
    soft = 1 + draw.uniform(-settings.soft_gain, settings.soft_gain)
    bone = 1 + draw.uniform(-settings.bone_gain, settings.bone_gain)
    t = settings.tissue_offset_hu
    plan["hu_knots"] = [-1000 + draw.uniform(-0.3 * t, 0.8 * t), -850 + draw.uniform(-t, t),
                        -500 + draw.uniform(-t, t), -100 + draw.uniform(-0.5 * t, 0.5 * t), water,
                        water + 60 * soft, water + 300 * bone * draw.uniform(0.95, 1.05), water + 1000 * bone,
                        water + 2000 * bone]
    plan["drift"] = draw.uniform(0, settings.drift_hu)
    plan["noise_hu"], plan["streaks"], plan["noise"] = 0.0, False, None
    if draw.chance(settings.noise_chance):
        plan["noise_hu"] = draw.uniform(*settings.noise_hu)
        plan["streaks"] = draw.chance(settings.streak_chance)
        plan["noise"] = {"power": draw.uniform(0.5, 1.0), "cutoff": draw.uniform(0.12, 0.45),
                         "angle": draw.uniform(0, math.pi), "strength": draw.uniform(1, 6) if plan["streaks"] else 0.0,
                         "sharpness": draw.uniform(6, 30)}
    return plan


def randomized_volume(seed: int, shape: Sequence[int] = (64, 128, 128), device: str | torch.device | None = None,
                      settings: CTRandomization = CTRandomization()) -> tuple[torch.Tensor, dict]:
    """The randomised CT volume of ``seed``.

    Args:
        seed: any int >= 0 (training uses ``ct_phantom.TRAIN_SEEDS``).
        shape: ``(D, H, W)``; the in-plane spacing is chosen for ``W`` pixels (0.5-3.4 mm at 128).
        device: where to render.
        settings: the ranges of the randomisation.

    Returns:
        ``(hu, plan)``: float32 ``[D, H, W]`` in HU, and the choices (``draw_plan``).
    """
    d, h, w = (int(n) for n in shape)
    plan = draw_plan(seed, shape, settings)
    if plan["region"] == "plain":
        return ct_phantom.whole_phantom(seed, (d, h, w), device)[0], plan
    spacing = plan["spacing"]
    hu = REGIONS[plan["region"]].generate(seed, (d, h, w), spacing, plan["z_center"], device,
                                          xy_center=plan["xy_center"])
    _paint_inserts(hu, spacing, plan["inserts"])
    # Slice thickness: a Gaussian along z of the drawn FWHM, in slices.
    sigma = plan["thickness"] / 2.355 / spacing[2]
    if sigma > 0.3:
        hu = blur_axis(hu, 0, sigma)
    # Scanner HU scale, then a smooth drift inside the body, then noise (arrays from a third stream).
    hu = piecewise_linear(hu, torch.tensor(_HU_KNOTS, device=hu.device),
                          torch.tensor(plan["hu_knots"], device=hu.device).cummax(0).values)
    arrays = torch.Generator().manual_seed(seed + 2 * _STREAM)
    body = ((hu + 900.0) / 200.0).clamp(0, 1)
    coarse = torch.randn(4, 4, 4, generator=arrays).to(hu.device)
    matrices = [bspline_matrix(torch.linspace(0, 1, n, device=hu.device), 0.0, 1 / 3, 4) for n in (d, h, w)]
    hu = hu + plan["drift"] * body * interpolate_grid(coarse, matrices)
    if plan["noise"] is not None:
        hu = hu + plan["noise_hu"] * ct_noise((d, h, w), plan["noise"], arrays, hu.device)
    return hu.clamp_(*HU_STORED_RANGE), plan


def _paint_inserts(hu: torch.Tensor, spacing: Sequence[float], inserts: list) -> None:
    """Paint the ellipsoids ``(centre, semi-axes, angle, HU)`` of a plan where the volume is body (in place)."""
    if not inserts:
        return
    d, h, w = hu.shape
    sx, sy, sz = spacing
    kw = {"device": hu.device, "dtype": torch.float32}
    x = ((torch.arange(w, **kw) - (w - 1) / 2) * sx).view(1, 1, w)
    y = ((torch.arange(h, **kw) - (h - 1) / 2) * sy).view(1, h, 1)
    z = ((torch.arange(d, **kw) - (d - 1) / 2) * sz).view(d, 1, 1)
    body = (hu > -900.0).float()
    for center, axes, theta, value in inserts:
        mask = (ct_regions.ellipsoid_sd(x, y, z, center, axes, theta) / sx + 0.5).clamp(0, 1) * body
        hu.add_((value - hu) * mask)


def ct_noise(shape: Sequence[int], params: dict, generator: torch.Generator,
             device: str | torch.device | None = None) -> torch.Tensor:
    """Unit-variance CT-like noise ``[D, H, W]`` on ``device``: white noise per slice filtered by
    ``|k|^power exp(-(|k| / cutoff)^2)`` (a ramp with an apodisation window, cycles per pixel) and, for
    ``strength`` > 0, by ``1 + strength |cos(angle of k - angle)|^sharpness`` (streaks along one direction).

    The white noise comes from the CPU ``generator``, so the noise is the same on every device.
    """
    d, h, w = shape
    ky = torch.fft.fftfreq(h, device=device).view(h, 1)
    kx = torch.fft.rfftfreq(w, device=device).view(1, -1)
    radius = torch.sqrt(kx * kx + ky * ky)
    response = radius ** params["power"] * torch.exp(-((radius / params["cutoff"]) ** 2))
    if params["strength"]:
        angle = torch.atan2(ky, kx) - params["angle"]
        response = response * (1 + params["strength"] * torch.cos(angle).abs() ** params["sharpness"])
    white = torch.randn(d, h, w, generator=generator).to(device)
    noise = torch.fft.irfft2(torch.fft.rfft2(white) * response, s=(h, w))
    return noise / noise.std().clamp_min(1e-8)
