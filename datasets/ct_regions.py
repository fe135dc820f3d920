"""Procedural CT volumes of the head and the pelvis, and nested-ellipsoid test objects, in Hounsfield units.

They follow ``datasets.ct_phantom``'s conventions: LPS coordinates in mm (x to the patient's left,
axis W; y posterior, axis H; z superior, axis D), soft partial-volume masks painted outside in on a
``ct_phantom.Canvas``, every random choice drawn from the seed alone (so a window, a resolution or a
device changes nothing), a smooth texture per intensity band, no noise.

- ``head``: scalp, skull (outer and inner tables, diploe, thicker at the back), the cranial floor
  in three steps (anterior, middle, posterior fossa) over the face, brain with gray and white matter
  and sulci, lateral, third and fourth ventricles, brainstem, calcifications; orbits with the eyes,
  ethmoid, nasal and maxillary air spaces, petrous bones, mandible, cervical spine and airway.
  z = 0 lies at the floor of the middle cranial fossa; the head spans about z = -150 (neck) ..
  +120 mm (vertex).
- ``pelvis``: body and thighs with fat and muscle layers, iliac wings, sacrum, lower lumbar spine,
  acetabula and femoral heads, necks, trochanters and shafts, pubic and ischial rami, bladder
  (sometimes contrast-filled), rectum, uterus, bowel loops, iliac and femoral vessels, gluteal and
  psoas muscles, an optional table. z = 0 lies at the centres of the femoral heads; the anatomy
  spans about z = -200 .. +230 mm.
- ``objects``: a nested-ellipsoid test object in air (Shepp-Logan-like but random): an optional
  dense shell, a soft fill and 4 to 14 inner ellipsoids of random size, orientation and HU
  (additive or absolute, some nested in others); no metal. Centred on z = 0.

Every generator has the signature of ``ct_phantom.generate_phantom`` (``seed, shape, spacing,
z_center, device, return_labels, xy_center``); ``REGIONS`` maps the names to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch

from datasets.ct_phantom import (
    COARSE,
    FINE,
    HU_AIR,
    Canvas,
    Draw,
    add_texture,
    bowel_loops,
    checked_grid,
    ellipse_sd,
    polyline,
    profile,
)
from utils.volume import HU_STORED_RANGE


def ellipsoid_sd(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, center: Sequence[float],
                 axes: Sequence[float], theta: float = 0.0) -> torch.Tensor:
    """Approximate signed distance (mm, positive inside) to an ellipsoid rotated by ``theta`` about z.

    First-order exact at the surface, as ``ct_phantom.ellipse_sd`` in 2D.
    """
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    if theta:
        c, s = math.cos(theta), math.sin(theta)
        dx, dy = c * dx + s * dy, c * dy - s * dx
    a, b, cz = axes
    ua, vb, wc = dx / (a * a), dy / (b * b), dz / (cz * cz)
    return (1 - (dx * ua + dy * vb + dz * wc)) / (2 * torch.sqrt(ua * ua + vb * vb + wc * wc) + 1e-6)


def _step(t: torch.Tensor, width: float) -> torch.Tensor:
    """A smooth step from 0 to 1 around ``t = 0`` over about ``width``."""
    return torch.sigmoid(t / width)


def _render_texture(cv: Canvas, d: Draw) -> None:
    add_texture(cv, d.normal(COARSE.shape), d.normal(FINE.shape))


# ----------------------------------------------------------------------------------------------
# Head
# ----------------------------------------------------------------------------------------------

def _draw_head(seed: int) -> SimpleNamespace:
    """All random choices of one head, drawn in a fixed order from ``seed``."""
    d = Draw(seed)
    a = SimpleNamespace()
    a.cx, a.cy = d.uniform(-6, 6), d.uniform(-8, 8)
    a.head_a, a.head_b = d.uniform(68, 80), d.uniform(88, 102)
    a.vertex, a.widest = d.uniform(100, 120), d.uniform(15, 35)
    a.scalp, a.skull, a.occiput = d.uniform(3.5, 7), d.uniform(4.5, 7.5), d.uniform(1, 4)
    a.hu_skin, a.hu_fat = d.uniform(25, 50), d.uniform(-110, -70)
    a.hu_cortex, a.hu_diploe = d.uniform(1100, 1600), d.uniform(400, 800)
    a.floor_ant, a.floor_post, a.plate = d.uniform(15, 28), -d.uniform(30, 45), d.uniform(5, 9)
    a.csf_gap, a.sulci = d.uniform(0.8, 3.0), d.uniform(2, 7)
    a.hu_gm, a.hu_wm, a.hu_csf = d.uniform(35, 44), d.uniform(24, 31), d.uniform(3, 12)
    a.wm_depth = d.uniform(9, 14)
    # Ventricles: lateral (with their atria), third and fourth; sizes grow with atrophy.
    atrophy = d.uniform(0, 1)
    a.v_sep, a.v_w, a.v_l = d.uniform(5, 9) + 3 * atrophy, d.uniform(3, 6) + 6 * atrophy, d.uniform(25, 34)
    a.v_y, a.v_z0, a.v_z1 = d.uniform(-8, 4), d.uniform(22, 32), d.uniform(55, 68)
    a.v_theta = math.radians(d.uniform(5, 15))
    a.third_w = d.uniform(1.2, 2.5) + 2 * atrophy
    a.calcified = [d.chance(0.5), d.chance(0.5)]
    a.hu_calcium = d.uniform(150, 340)
    a.stem_r = d.uniform(11, 14)
    # Face: eyes and orbits, air spaces, petrous bones, mandible; neck: spine and airway.
    a.eye_x, a.eye_r, a.eye_z = d.uniform(28, 34), d.uniform(10.5, 12.5), a.floor_ant - d.uniform(22, 28)
    a.hu_eye = d.uniform(5, 20)
    a.sinus = [d.uniform(20, 28), d.uniform(12, 17), d.uniform(15, 20), d.uniform(15, 20)]  # x, semi-axes, z half
    a.maxillary_z = a.floor_ant - d.uniform(45, 55)
    a.petrous = [d.uniform(34, 42), d.uniform(5, 15), math.radians(d.uniform(30, 50))]
    a.mandible_z = a.floor_ant - d.uniform(80, 95)
    a.neck_a, a.neck_b = d.uniform(48, 58), d.uniform(52, 62)
    a.hu_muscle = d.uniform(40, 55)
    a.airway_r = d.uniform(6, 10)
    a.texture = d
    return a


def _head_scale(a: SimpleNamespace, z: torch.Tensor) -> torch.Tensor:
    """Cross-section scale of the head along z: a dome above the widest level, a slow taper below."""
    dome = (1 - ((z - a.widest) / (a.vertex - a.widest)) ** 2).clamp_min(1e-3).sqrt()
    below = 1 - 0.1 * ((a.widest - z) / (a.widest + 90)) ** 2
    return torch.where(z > a.widest, dome, below)


def _render_head(a: SimpleNamespace, cv: Canvas) -> None:
    """Paint the head ``a`` onto the canvas, outside in."""
    X, Y, Z = cv.X, cv.Y, cv.Z
    full = cv.all
    # Outline: the head, narrowing into the neck below the face.
    neck = ((-95 - Z) / 35).clamp(0, 1)
    scale = _head_scale(a, Z)
    semi_a = (1 - neck) * a.head_a * scale + neck * a.neck_a
    semi_b = (1 - neck) * a.head_b * scale + neck * a.neck_b
    cy = a.cy + 14 * neck
    head_sd = torch.minimum(ellipse_sd(X, Y, a.cx, cy, semi_a, semi_b), a.vertex - Z)
    cv.paint(full, cv.ramp(head_sd), a.hu_skin, "skin")
    cv.paint(full, cv.ramp(head_sd - 1.5), a.hu_fat, "fat")
    cv.paint(full, cv.ramp(head_sd - a.scalp + 1.5), a.hu_skin, "muscle")  # the galea
    inside = head_sd - a.scalp
    # The cranial floor steps down from the anterior to the posterior fossa; each fossa is a shallow bowl.
    rel, lat = (Y - a.cy) / a.head_b, ((X - a.cx) / a.head_a) ** 2
    middle = 14 * (1 - 2.5 * lat).clamp_min(0) - 10
    anterior = a.floor_ant + 14 * lat + 40 * (-0.35 - rel).clamp_min(0)
    posterior = a.floor_post + 25 * lat + 30 * (rel - 0.55) ** 2
    floor = middle + (anterior - middle) * _step(-0.3 - rel, 0.05) + (posterior - middle) * _step(rel - 0.15, 0.06)
    below_floor = floor - a.plate - Z
    cv.paint(full, cv.ramp(inside) * cv.ramp(below_floor), a.hu_muscle, "muscle")
    _render_face(a, cv, inside, below_floor)
    # Skull: outer table, diploe, inner table (thicker at the back), with the plate of the cranial floor.
    thick = a.skull + a.occiput * _step(rel - 0.5, 0.1)
    above = Z - (floor - a.plate)
    cv.paint(full, cv.ramp(torch.minimum(inside, above)), a.hu_cortex, "cortical_bone")
    cv.paint(full, cv.ramp(torch.minimum(inside - 1.6, above - 1.6)) * cv.ramp(thick - 1.6 - inside), a.hu_diploe,
             "diploe")
    cavity = torch.minimum(inside - thick, Z - floor)
    cv.paint(full, cv.ramp(cavity), a.hu_csf, "csf")
    _render_brain(a, cv, cavity)
    _render_texture(cv, a.texture)


def _render_face(a: SimpleNamespace, cv: Canvas, inside: torch.Tensor, below_floor: torch.Tensor) -> None:
    """Orbits with the eyes, air spaces, petrous bones, mandible, cervical spine and airway, below the cranial floor."""
    X, Y, Z = cv.X, cv.Y, cv.Z
    full = cv.all
    front = a.cy - a.head_b * _head_scale(a, torch.tensor(a.eye_z)).item()
    # Everything here lies inside the skin and below the cranial floor.
    face = cv.ramp(torch.minimum(inside + a.scalp - 2, below_floor))
    for side in (-1.0, 1.0):
        eye = (a.cx + side * a.eye_x, front + a.eye_r + 5, a.eye_z)
        cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, eye, (a.eye_r + 7,) * 3)) * face, a.hu_cortex * 0.6,
                 "cortical_bone")
        cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, eye, (a.eye_r + 5,) * 3)) * face, a.hu_fat, "fat")
        cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, eye, (a.eye_r,) * 3)) * face, a.hu_eye, "fluid")
        sx, sa, sb, sz = a.sinus
        center = (a.cx + side * sx, front + sb + 18, a.maxillary_z)
        cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, center, (sa + 2, sb + 2, sz + 2))) * face, a.hu_cortex * 0.5,
                 "cortical_bone")
        cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, center, (sa, sb, sz))) * face, HU_AIR, "air")
        px, pz, angle = a.petrous
        rock = ellipsoid_sd(X, Y, Z, (a.cx + side * px, a.cy + 8, -pz), (8.0, 24.0, 10.0), -side * angle)
        cv.paint(full, cv.ramp(rock), a.hu_cortex, "cortical_bone")
    ethmoid = ellipsoid_sd(X, Y, Z, (a.cx, front + 30, a.eye_z - 5), (9.0, 22.0, 16.0))
    cv.paint(full, cv.ramp(ethmoid) * face, HU_AIR, "air")
    nasal = ellipsoid_sd(X, Y, Z, (a.cx, front + 22, a.maxillary_z), (7.0, 20.0, 24.0))
    cv.paint(full, cv.ramp(nasal) * face, HU_AIR, "air")
    # Mandible: a U-shaped bone band in the front of the lower face.
    jaw = ellipse_sd(X, Y, a.cx, front + 50, 44.0, 48.0)
    band = cv.ramp(4 - (jaw - 4).abs()) * cv.ramp(front + 50 - Y) * cv.ramp(10 - (Z - a.mandible_z).abs())
    cv.paint(full, band * cv.ramp(inside), a.hu_cortex, "cortical_bone")
    # Cervical spine and airway from the neck up to the skull base and the pharynx.
    spine_y = a.cy + 22
    column = cv.ramp(ellipse_sd(X, Y, a.cx, spine_y, 13.0, 10.0)) * cv.ramp(a.floor_post - a.plate - 5 - Z)
    cv.paint(full, column, a.hu_cortex, "cortical_bone")
    cv.paint(full, cv.ramp(ellipse_sd(X, Y, a.cx, spine_y, 11.0, 8.0)) * column, a.hu_diploe * 0.4, "trabecular_bone")
    airway = cv.ramp(a.airway_r - torch.sqrt((X - a.cx) ** 2 + (Y - spine_y + 24) ** 2)) * cv.ramp(a.maxillary_z - Z)
    cv.paint(full, airway * cv.ramp(below_floor), HU_AIR, "air")


def _render_brain(a: SimpleNamespace, cv: Canvas, cavity: torch.Tensor) -> None:
    """Gray and white matter with sulci, ventricles, brainstem and calcifications inside the cranial cavity."""
    X, Y, Z = cv.X, cv.Y, cv.Z
    full = cv.all
    d = a.texture
    folds = _smooth_field(cv, d, 7.0)
    gyri = _smooth_field(cv, d, 9.0)
    cortex = cavity - a.csf_gap - a.sulci * folds.clamp_min(0)
    cv.paint(full, cv.ramp(cortex), a.hu_gm, "gray_matter")
    cv.paint(full, cv.ramp(cortex - a.wm_depth + 4 * gyri), a.hu_wm, "white_matter")
    # Midline fissure above the ventricles.
    fissure = cv.ramp(1.5 - (X - a.cx).abs()) * cv.ramp(Z - a.v_z1 + 10) * cv.ramp(cavity)
    cv.paint(full, fissure, a.hu_csf, "csf")
    # Brainstem in its cistern, running down from the midbrain into the foramen magnum.
    stem_y = a.cy + 0.12 * a.head_b
    dist = torch.sqrt((X - a.cx) ** 2 + ((Y - stem_y) * 0.85) ** 2)
    upright = cv.ramp(a.v_z0 - 5 - Z) * cv.ramp(cavity + 20)
    cv.paint(full, cv.ramp(a.stem_r + 3 - dist) * upright, a.hu_csf, "csf")
    cv.paint(full, cv.ramp(a.stem_r - dist) * upright, a.hu_wm, "white_matter")
    for side in (-1.0, 1.0):
        horn = ellipsoid_sd(X, Y, Z, (a.cx + side * a.v_sep, a.cy + a.v_y, (a.v_z0 + a.v_z1) / 2),
                            (a.v_w, a.v_l, (a.v_z1 - a.v_z0) / 2), side * a.v_theta)
        atrium = ellipsoid_sd(X, Y, Z, (a.cx + side * (a.v_sep + 6), a.cy + a.v_y + 0.75 * a.v_l, a.v_z0 + 8),
                              (1.4 * a.v_w, 0.45 * a.v_l, 14.0))
        cv.paint(full, cv.ramp(torch.maximum(horn, atrium)), a.hu_csf, "csf")
        if a.calcified[0]:
            plexus = (a.cx + side * (a.v_sep + 6), a.cy + a.v_y + 0.8 * a.v_l, a.v_z0 + 8)
            cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, plexus, (2.5, 3.5, 2.5))), a.hu_calcium, "trabecular_bone")
    third = ellipsoid_sd(X, Y, Z, (a.cx, a.cy + a.v_y + 6, a.v_z0 - 6), (a.third_w, 14.0, 14.0))
    cv.paint(full, cv.ramp(third), a.hu_csf, "csf")
    fourth = ellipsoid_sd(X, Y, Z, (a.cx, stem_y + a.stem_r + 5, a.floor_post + 18), (6.0, 4.0, 8.0))
    cv.paint(full, cv.ramp(fourth), a.hu_csf, "csf")
    if a.calcified[1]:
        pineal = (a.cx, a.cy + a.v_y + 24, a.v_z0 - 4)
        cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, pineal, (2.5, 2.5, 2.5))), a.hu_calcium, "trabecular_bone")


def _smooth_field(cv: Canvas, d: Draw, step: float) -> torch.Tensor:
    """A smooth random field of unit scale on the canvas (cubic B-spline of control values ``step`` mm apart).

    The control grid is fixed in patient space (a 320 mm box around the origin), so the field does
    not depend on the window rendered.
    """
    from datasets.fields import bspline_matrix, interpolate_grid

    num = int(math.ceil(320.0 / step)) + 1
    values = d.normal((num, num, num)).to(cv.vol.device)
    matrices = [bspline_matrix(c, -160.0, step, num) for c in (cv.z, cv.y, cv.x)]
    return interpolate_grid(values, matrices) * 2.0


# ----------------------------------------------------------------------------------------------
# Pelvis
# ----------------------------------------------------------------------------------------------

def _draw_pelvis(seed: int) -> SimpleNamespace:
    """All random choices of one pelvis, drawn in a fixed order from ``seed``."""
    d = Draw(seed)
    a = SimpleNamespace()
    a.cx, a.cy = d.uniform(-6, 6), d.uniform(-10, 8)
    a.body_a, a.body_b, a.hips = d.uniform(145, 185), d.uniform(100, 130), d.uniform(10, 30)
    a.split, a.thigh_r, a.thigh_x = -d.uniform(60, 90), d.uniform(62, 85), d.uniform(0, 12)
    a.fat, a.fat_back, a.muscle = d.uniform(8, 38), d.uniform(0, 25), d.uniform(6, 12)
    a.hu_skin, a.hu_fat, a.hu_muscle = d.uniform(20, 50), d.uniform(-115, -85), d.uniform(42, 58)
    a.hu_cavity = d.uniform(-100, -75)
    a.table, a.table_gap = d.chance(0.6), d.uniform(2, 12)
    a.hu_cortex, a.hu_trab, a.hu_marrow = d.uniform(900, 1500), d.uniform(150, 330), d.uniform(-60, 60)
    a.crest, a.wing_t = d.uniform(120, 160), d.uniform(5, 9)
    a.wing = [d.uniform(25, 40), -d.uniform(5, 25), d.uniform(45, 60), d.uniform(85, 110), d.uniform(60, 78)]
    a.fh_x, a.fh_y, a.fh_r = d.uniform(80, 95), d.uniform(-5, 10), d.uniform(21, 26)
    a.troch = [d.uniform(28, 40), d.uniform(0, 15), -d.uniform(30, 45)]
    a.shaft = [-d.uniform(15, 30), d.uniform(-5, 10)]
    a.cortex = d.uniform(3, 6)
    a.sacrum = [d.uniform(50, 65), d.uniform(0.25, 0.5), d.uniform(0, 20), d.uniform(14, 20), d.uniform(42, 55)]
    a.bladder = [a.cx + d.uniform(-10, 10), a.cy - d.uniform(30, 55), d.uniform(-15, 25),
                 d.uniform(25, 55), d.uniform(20, 45), d.uniform(20, 45)]
    a.hu_bladder = d.uniform(150, 400) if d.chance(0.15) else d.uniform(0, 15)
    a.rectum = [a.cx + d.uniform(-8, 8), a.cy + d.uniform(40, 55), d.uniform(10, 18), d.chance(0.5)]
    a.uterus = d.chance(0.5)
    a.uterus_shape = [a.cy + d.uniform(5, 20), d.uniform(-15, 15), d.uniform(18, 30), d.uniform(15, 24),
                      d.uniform(18, 30)]
    a.hu_organ = d.uniform(40, 70)
    a.bowel = bowel_loops(d, d.integer(3, 8), lambda d: [a.cx + d.uniform(-0.5, 0.5) * a.body_a,
                                                         a.cy + d.uniform(-0.6, 0.1) * a.body_b, d.uniform(50, 220)])
    a.hu_fluid = d.uniform(5, 30)
    a.contrast = d.chance(0.6)
    a.hu_vessel = d.uniform(120, 300) if a.contrast else d.uniform(35, 50)
    a.vessels = []
    for side in (-1.0, 1.0):
        path = [[a.cx + side * d.uniform(10, 20), a.cy + d.uniform(0, 25), 260.0],
                [a.cx + side * d.uniform(40, 55), a.cy - d.uniform(0, 20), 60.0],
                [a.cx + side * (a.fh_x - d.uniform(5, 15)), a.cy - d.uniform(35, 50), 0.0],
                [a.cx + side * (a.fh_x - d.uniform(0, 10)), a.cy - d.uniform(45, 60), -400.0]]
        a.vessels.append(polyline(path, [d.uniform(4, 6)] * 3))
    a.psoas = [d.uniform(45, 60), d.uniform(-5, 15), d.uniform(15, 24)]
    a.gluteus = [d.uniform(55, 80), d.uniform(35, 60), d.uniform(40, 60), d.uniform(30, 45)]
    a.vert_period, a.vert_phase = d.uniform(30, 36), d.uniform(0, 30)
    a.texture = d
    return a


def _render_pelvis(a: SimpleNamespace, cv: Canvas) -> None:
    """Paint the pelvis ``a`` onto the canvas, outside in."""
    X, Y, Z = cv.X, cv.Y, cv.Z
    full = cv.all
    # Outline: one body above the hips, two thighs below ``split``; the union of their signed distances.
    upper = ((Z - a.split + 30) / 40).clamp(1e-3, 1)
    lower = ((a.split + 30 - Z) / 40).clamp(1e-3, 1)
    hips = a.hips * torch.exp(-(((Z + 10) / 60) ** 2))
    body_sd = ellipse_sd(X, Y, a.cx, a.cy, (a.body_a + hips) * upper, a.body_b * upper)
    for side in (-1.0, 1.0):
        thigh = ellipse_sd(X, Y, a.cx + side * (a.fh_x + a.thigh_x), a.cy + 5, a.thigh_r * lower, a.thigh_r * lower)
        body_sd = torch.maximum(body_sd, thigh)
    if a.table:
        depth = Y - (a.cy + a.body_b + a.table_gap)
        cv.paint(full, cv.ramp(torch.minimum(depth, 40 - depth)), -850.0, "table")
        cv.paint(full, cv.ramp(torch.minimum(depth, 5 - depth)), 150.0, "table")
    fat = a.fat + a.fat_back * _step(Y - a.cy, 20.0)
    cv.paint(full, cv.ramp(body_sd), a.hu_skin, "skin")
    cv.paint(full, cv.ramp(body_sd - 2.0), a.hu_fat, "fat")
    cv.paint(full, cv.ramp(body_sd - 2.0 - fat), a.hu_muscle, "muscle")
    cavity = body_sd - 2.0 - fat - a.muscle
    cv.paint(full, cv.ramp(cavity) * _step(Z - a.split, 10.0), a.hu_cavity, "fat")
    # Muscles: gluteal masses at the back, psoas beside the spine.
    gx, gy, ga, gb = a.gluteus
    for side in (-1.0, 1.0):
        glute = ellipse_sd(X, Y, a.cx + side * gx, a.cy + gy, ga, gb)
        cv.paint(full, cv.ramp(glute) * cv.ramp(body_sd - 2.0 - fat) * cv.ramp(a.crest - Z) * cv.ramp(Z - a.split + 20),
                 a.hu_muscle, "muscle")
        px, py, pr = a.psoas
        psoas = ellipse_sd(X, Y, a.cx + side * px * (1 - 0.3 * _step(Z - 80, 30)), a.cy + py, pr, pr * 0.9)
        cv.paint(full, cv.ramp(psoas) * cv.ramp(Z + 20), a.hu_muscle, "muscle")
    # Bowel loops above the pelvic floor, then the organs of the lesser pelvis.
    cv.paint_tubes([s for segs, gas in a.bowel for s in segs], 40.0, "muscle", 2.5)
    cv.paint_tubes([s for segs, gas in a.bowel if gas for s in segs], HU_AIR, "gas")
    cv.paint_tubes([s for segs, gas in a.bowel if not gas for s in segs], a.hu_fluid, "fluid")
    bx, by, bz, ba, bb, bc = a.bladder
    cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, (bx, by, bz), (ba + 3, bb + 3, bc + 3))), 40.0, "muscle")
    cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, (bx, by, bz), (ba, bb, bc))), a.hu_bladder,
             "fluid" if a.hu_bladder < 100 else "contrast_blood")
    if a.uterus:
        uy, uz, ua, ub, uc = a.uterus_shape
        cv.paint(full, cv.ramp(ellipsoid_sd(X, Y, Z, (a.cx, uy, uz), (ua, ub, uc))), a.hu_organ, "muscle")
    rx, ry, rr, gas = a.rectum
    rectum = cv.ramp(rr - torch.sqrt((X - rx) ** 2 + (Y - ry) ** 2)) * cv.ramp(40 - Z) * cv.ramp(Z - a.split + 10)
    cv.paint(full, rectum, 40.0, "muscle")
    cv.paint(full, cv.ramp(rr - 3 - torch.sqrt((X - rx) ** 2 + (Y - ry) ** 2)) * rectum,
             HU_AIR if gas else a.hu_fluid, "gas" if gas else "fluid")
    cv.paint_tubes([s for path in a.vessels for s in path], a.hu_vessel, "contrast_blood" if a.contrast else "muscle")
    _render_pelvic_bones(a, cv)
    _render_texture(cv, a.texture)


def _paint_bone(a: SimpleNamespace, cv: Canvas, reg, sd: torch.Tensor, interior: float) -> None:
    """A bone of signed distance ``sd`` in the box ``reg``: a cortical shell and an ``interior`` HU core."""
    cv.paint(reg, cv.ramp(sd), a.hu_cortex, "cortical_bone")
    cv.paint(reg, cv.ramp(sd - a.cortex), interior, "marrow" if interior < 120 else "trabecular_bone")


def _render_pelvic_bones(a: SimpleNamespace, cv: Canvas) -> None:
    """Iliac wings, sacrum, lower lumbar spine, acetabula, femora and the pubic and ischial rami."""
    X, Y, Z = cv.X, cv.Y, cv.Z
    full = cv.all
    # Iliac wings: curved plates on the posterolateral quarter of an ellipse that flares towards the crest,
    # from the sacroiliac joint to the front; thick above the acetabulum.
    wx, wy, a0, a1, wb = a.wing
    reg = cv.region((0.0, a.crest + 5))
    if reg is not None:
        t = ((reg.Z - 10) / (a.crest - 10)).clamp(0, 1)
        half = a.wing_t * (1 - 0.4 * t) / 2 + 10 * torch.exp(-(((reg.Z - 30) / 22) ** 2))
        for side in (-1.0, 1.0):
            sd = ellipse_sd(reg.X, reg.Y, a.cx + side * wx, a.cy + wy, a0 + (a1 - a0) * t, wb)
            quarter = (cv.ramp(side * (reg.X - a.cx - side * wx)) * cv.ramp(reg.Y - a.cy - wy + 5)
                       * cv.ramp(a.crest - reg.Z))
            cv.paint(reg, cv.ramp(half - sd.abs()) * quarter, a.hu_cortex, "cortical_bone")
            cv.paint(reg, cv.ramp(half - 1.5 - sd.abs()) * quarter, a.hu_trab, "trabecular_bone")
    # Sacrum: tilted backwards with height, narrowing down to the coccyx; lumbar vertebrae above it.
    sy, tilt, z0, sb, sa = a.sacrum
    reg = cv.region((z0, a.crest - 5))
    if reg is not None:
        width = 12 + (sa - 12) * ((reg.Z - z0) / (a.crest - 5 - z0)).clamp(0, 1)
        _paint_bone(a, cv, reg, ellipse_sd(reg.X, reg.Y, a.cx, a.cy + sy + tilt * (reg.Z - z0), width, sb), a.hu_trab)
    reg = cv.region((a.crest - 5, 1e9))
    if reg is not None:
        vb_y = a.cy + sy + tilt * (a.crest - 5 - z0) - 20
        phase = (reg.Z - a.vert_phase) / a.vert_period
        bone = cv.ramp((phase - phase.floor() - 0.2) * a.vert_period)
        body = cv.ramp(ellipse_sd(reg.X, reg.Y, a.cx, vb_y, 24.0, 17.0))
        cv.paint(reg, body, 90.0, "disc")
        cv.paint(reg, body * bone, a.hu_trab, "trabecular_bone")
        canal = torch.sqrt((reg.X - a.cx) ** 2 + (reg.Y - vb_y - 27) ** 2)
        cv.paint(reg, cv.ramp(torch.minimum(15 - canal, canal - 9)) * bone, a.hu_cortex * 0.6, "posterior_arch")
    # Acetabula and femora: a cup around each head, the neck to the trochanter, the shaft down the thigh.
    reg = cv.region((-1e9, 50.0))
    if reg is None:
        return
    tx, ty, tz = a.troch
    for side in (-1.0, 1.0):
        head = (a.cx + side * a.fh_x, a.cy + a.fh_y, 0.0)
        dist = torch.sqrt((reg.X - head[0]) ** 2 + (reg.Y - head[1]) ** 2 + reg.Z ** 2)
        cup = cv.ramp(torch.minimum(a.fh_r + 8 - dist, dist - a.fh_r - 1.5)) * cv.ramp(reg.Z + 12)
        cv.paint(reg, cup, a.hu_cortex, "cortical_bone")
        troch = [head[0] + side * tx, head[1] + ty, tz]
        knee = [head[0] + side * a.shaft[0], head[1] + a.shaft[1], -500.0]
        rami = [polyline([[head[0] - side * 15, head[1] - 25, -8.0], [a.cx + side * 6, a.cy - 65, -25.0]], [9.0]),
                polyline([[head[0] - side * 10, head[1] + 25, -10.0], [head[0] - side * 25, head[1] + 35, -60.0]],
                         [13.0])]
        femur = polyline([list(head), troch, knee], [14.0, 15.0])
        for segments, interior in ((femur, a.hu_marrow), (rami[0] + rami[1], a.hu_trab)):
            occupancy, box = cv.tubes(segments)
            if box is not None:
                cv.paint(box, box.crop(occupancy), a.hu_cortex, "cortical_bone")
                core, _ = cv.tubes(segments, -a.cortex)
                cv.paint(box, box.crop(core), interior, "marrow" if interior < 120 else "trabecular_bone")
        cv.paint(reg, cv.ramp(ellipsoid_sd(reg.X, reg.Y, reg.Z, troch, (20.0, 18.0, 22.0))), a.hu_cortex,
                 "cortical_bone")
        cv.paint(reg, cv.ramp(ellipsoid_sd(reg.X, reg.Y, reg.Z, troch, (20.0 - a.cortex, 18.0 - a.cortex,
                                                                         22.0 - a.cortex))), a.hu_trab,
                 "trabecular_bone")
        cv.paint(reg, cv.ramp(a.fh_r - dist), a.hu_cortex, "cortical_bone")
        cv.paint(reg, cv.ramp(a.fh_r - a.cortex - dist), a.hu_trab, "trabecular_bone")


# ----------------------------------------------------------------------------------------------
# Nested-ellipsoid objects
# ----------------------------------------------------------------------------------------------

def _draw_objects(seed: int) -> SimpleNamespace:
    """The ellipsoids of one object, drawn in a fixed order from ``seed``."""
    d = Draw(seed)
    a = SimpleNamespace()
    a.outer = [d.uniform(-15, 15), d.uniform(-15, 15), d.uniform(-10, 10)]
    a.axes = [d.uniform(50, 150), d.uniform(45, 130), d.uniform(60, 200)]
    a.theta = d.uniform(-0.4, 0.4)
    a.shell = d.uniform(2, 12) if d.chance(0.7) else 0.0
    a.hu_shell, a.hu_fill = d.uniform(200, 1500), d.uniform(-120, 100)
    a.inner = []
    for _ in range(d.integer(4, 14)):
        r, phi, zeta = d.uniform(0, 0.7), d.uniform(0, 2 * math.pi), d.uniform(-0.7, 0.7)
        center = [a.outer[0] + r * a.axes[0] * math.cos(phi), a.outer[1] + r * a.axes[1] * math.sin(phi),
                  a.outer[2] + zeta * a.axes[2]]
        size = d.uniform(0.03, 0.35)
        axes = [size * axis * d.uniform(0.6, 1.4) for axis in a.axes]
        a.inner.append((center, axes, d.uniform(0, math.pi), _object_value(d)))
        if d.chance(0.3):
            inner_axes = [axis * d.uniform(0.3, 0.7) for axis in axes]
            a.inner.append((center, inner_axes, d.uniform(0, math.pi), _object_value(d)))
    a.texture = d
    return a


def _object_value(d: Draw) -> tuple[bool, float]:
    """``(additive, HU)``: a contrast added to what lies below, or an absolute air, fat, soft or bone value."""
    if d.chance(0.6):
        return True, d.uniform(10, 200) * (1 if d.chance(0.5) else -1)
    kind = d.uniform(0, 1)
    if kind < 0.15:
        return False, HU_AIR
    if kind < 0.35:
        return False, d.uniform(-120, -60)
    if kind < 0.8:
        return False, d.uniform(-10, 100)
    return False, d.uniform(200, 1500)


def _render_objects(a: SimpleNamespace, cv: Canvas) -> None:
    X, Y, Z = cv.X, cv.Y, cv.Z
    full = cv.all
    outer = ellipsoid_sd(X, Y, Z, a.outer, a.axes, a.theta)
    if a.shell:
        cv.paint(full, cv.ramp(outer), a.hu_shell, "cortical_bone")
    inside = cv.ramp(outer - a.shell)
    cv.paint(full, inside, a.hu_fill, "fluid")
    for center, axes, theta, (additive, hu) in a.inner:
        mask = cv.ramp(ellipsoid_sd(X, Y, Z, center, axes, theta)) * inside
        if additive:
            cv.vol.add_(hu * mask)
        else:
            cv.paint(full, mask, hu, "fluid")
    _render_texture(cv, a.texture)
    cv.vol.clamp_(min=HU_STORED_RANGE[0])  # an additive dark insert on air would go below what a scanner reports


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------

def _generator(draw: Callable[[int], SimpleNamespace], render: Callable[[SimpleNamespace, Canvas], None], name: str):
    def generate(seed: int, shape: Sequence[int] = (128, 128, 128), spacing: Sequence[float] | None = None,
                 z_center: float = 0.0, device: str | torch.device | None = None, return_labels: bool = False,
                 xy_center: Sequence[float] = (0.0, 0.0)):
        shape, spacing = checked_grid(seed, shape, spacing)
        canvas = Canvas(shape, spacing, float(z_center), device, return_labels, xy_center)
        render(draw(seed), canvas)
        return (canvas.vol, canvas.labels) if return_labels else canvas.vol

    generate.__name__ = f"generate_{name}"
    generate.__doc__ = (f"Render the {name} of ``seed`` on a voxel grid; arguments and result as "
                        "``ct_phantom.generate_phantom``.")
    return generate


generate_head = _generator(_draw_head, _render_head, "head")
generate_pelvis = _generator(_draw_pelvis, _render_pelvis, "pelvis")
generate_objects = _generator(_draw_objects, _render_objects, "objects")
REGIONS: dict[str, Callable] = {"head": generate_head, "pelvis": generate_pelvis, "objects": generate_objects}
