"""FDK (Feldkamp-Davis-Kress) reconstruction for the circular cone-beam geometry.

An approximate inverse with its own voxel-driven backprojector, not ``A^T``. Steps: rescale the
detector to the rotation axis, cosine pre-weighting, ramp filtering of each detector row (zero-padded
FFT, selectable apodisation window), and backprojection with the distance weight
``(D_so / (D_so - s))^2`` (s: a voxel's offset towards the source), scaled so that a noiseless
full-scan projection of a uniform object reconstructs to its value.

Limited arcs and sparse views use the kept views only, each standing for the median angular gap
between consecutive kept views; no Parker (short-scan) weights are applied.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from physics.geometry import ConeBeamGeometry

# Apodisation windows of the ramp filter, as functions of the angular frequency w in [-pi, pi].
WINDOWS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ram-lak": lambda w: torch.ones_like(w),
    "shepp-logan": lambda w: torch.sinc(w / (2 * math.pi)),
    "cosine": lambda w: torch.cos(w / 2),
    "hamming": lambda w: 0.54 + 0.46 * torch.cos(w),
    "hann": lambda w: 0.5 + 0.5 * torch.cos(w),
}

# Voxels whose detector coordinates are computed at once in the backprojection (bounds memory).
_VOXEL_CHUNK = 1 << 22


def ramp_filter(n: int, spacing: float, window: str, dtype: torch.dtype, device) -> torch.Tensor:
    """Frequency response (length ``n``, FFT order) of the windowed discrete ramp filter.

    Built from the band-limited spatial kernel (h[0] = 1/(4 d^2), h[odd m] = -1/(pi m d)^2) so the
    zero frequency is right, times ``spacing`` for the convolution integral.
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {sorted(WINDOWS)}, got {window!r}")
    m = torch.arange(n, dtype=dtype, device=device)
    m = torch.where(m <= n // 2, m, m - n)
    kernel = torch.zeros(n, dtype=dtype, device=device)
    kernel[0] = 1.0 / (4.0 * spacing**2)
    odd = m.remainder(2) == 1
    kernel[odd] = -1.0 / (math.pi * m[odd] * spacing) ** 2
    response = torch.fft.fft(kernel).real * spacing
    omega = 2 * math.pi * torch.fft.fftfreq(n, device=device).to(dtype)
    return response * WINDOWS[window](omega)


def _angular_weights(angles: torch.Tensor) -> torch.Tensor:
    """The angle each view stands for: half the gaps to its two neighbouring kept views (circular).

    Uneven spacings (SVCT counts that do not divide 360) thus still sum to 2 pi. A gap wider than
    twice the even spacing is the open side of a limited arc; it counts as the median gap there, so
    a limited arc keeps its own angular extent (without short-scan weights its FDK is dim).
    """
    count = angles.numel()
    if count == 1:
        return torch.full_like(angles, 2 * math.pi)
    ordered, order = torch.sort(torch.remainder(angles, 2 * math.pi))
    gaps = torch.diff(torch.cat([ordered, ordered[:1] + 2 * math.pi]))
    gaps = torch.where(gaps > 2 * (2 * math.pi / count), gaps.median(), gaps)
    sorted_weights = 0.5 * (gaps + torch.roll(gaps, 1))
    return torch.empty_like(sorted_weights).scatter_(0, order, sorted_weights)


def fdk(
    geometry: ConeBeamGeometry, y: torch.Tensor, views: Optional[torch.Tensor] = None, window: str = "ram-lak"
) -> torch.Tensor:
    """FDK reconstruction of cone-beam projections.

    Args:
        geometry: the acquisition geometry.
        y: projections [V, det_rows, det_cols] (line integrals in value x mm) on ``views``.
        views: LongTensor of the view indices of ``y`` (all of ``geometry.angles`` when None).
        window: ramp apodisation, one of ``WINDOWS`` ("ram-lak", "shepp-logan", "cosine", "hamming", "hann").

    Returns:
        Volume [D, 1, H, W] in y's dtype and device.
    """
    angles = torch.tensor(geometry.angles, dtype=torch.float64)
    if views is not None:
        angles = angles[torch.as_tensor(views).long().cpu()]
    expected = (angles.numel(), geometry.det_rows, geometry.det_cols)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"projections must have shape [V, det_rows, det_cols]={list(expected)}, got {got}")
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {sorted(WINDOWS)}, got {window!r}")
    dtype, device = y.dtype, y.device
    d_so = geometry.source_distance
    rows, cols = geometry.det_rows, geometry.det_cols
    # Work on a virtual detector through the rotation axis.
    spacing = geometry.det_spacing * d_so / geometry.source_detector_distance
    u = (torch.arange(cols, dtype=dtype, device=device) - (cols - 1) / 2) * spacing
    v = (torch.arange(rows, dtype=dtype, device=device) - (rows - 1) / 2) * spacing
    cosine = d_so / torch.sqrt(d_so**2 + u[None, :] ** 2 + v[:, None] ** 2)

    # Ramp-filter each detector row, zero-padded to avoid circular wrap-around.
    padded = 1 << math.ceil(math.log2(2 * cols))
    response = ramp_filter(padded, spacing, window, dtype, device)
    filtered = torch.fft.irfft(
        torch.fft.rfft(y * cosine, n=padded, dim=-1) * response[: padded // 2 + 1], n=padded, dim=-1
    )[..., :cols]

    # Backproject voxel by voxel with bilinear interpolation on the virtual detector.
    depth, height, width = geometry.volume_shape
    s = geometry.voxel_size
    xs = (torch.arange(width, dtype=dtype, device=device) - (width - 1) / 2) * s
    ys = (torch.arange(height, dtype=dtype, device=device) - (height - 1) / 2) * s
    zs = (torch.arange(depth, dtype=dtype, device=device) - (depth - 1) / 2) * s
    gx, gy = xs[None, :].expand(height, width), ys[:, None].expand(height, width)
    weights = 0.5 * _angular_weights(angles)
    out = torch.zeros(depth, height, width, dtype=dtype, device=device)
    slices_per_chunk = max(1, min(depth, _VOXEL_CHUNK // (height * width)))
    grid = torch.empty(slices_per_chunk, height, width, 2, dtype=dtype, device=device)
    # grid_sample's normalised coordinates (align_corners=True): index i of n maps to 2 i / (n - 1) - 1.
    col_scale, row_scale = 2.0 / max(cols - 1, 1), 2.0 / max(rows - 1, 1)
    for view in range(angles.numel()):
        sin, cos = math.sin(float(angles[view])), math.cos(float(angles[view]))
        magnification = d_so / (d_so - (gx * sin - gy * cos))
        col = (gx * cos + gy * sin) * magnification * (col_scale / spacing) + (col_scale * (cols - 1) / 2 - 1)
        row_slope = magnification * (row_scale / spacing)
        scale = float(weights[view]) * magnification**2
        image = filtered[view][None, None]
        for z0 in range(0, depth, slices_per_chunk):
            z = zs[z0 : z0 + slices_per_chunk]
            chunk = grid[: z.numel()]
            chunk[..., 0] = col
            torch.mul(z[:, None, None], row_slope, out=chunk[..., 1])
            chunk[..., 1] += row_scale * (rows - 1) / 2 - 1
            sampled = F.grid_sample(
                image, chunk.view(1, -1, width, 2), mode="bilinear", padding_mode="zeros", align_corners=True
            )
            out[z0 : z0 + z.numel()].addcmul_(sampled.view(z.numel(), height, width), scale)
    return out.unsqueeze(1)
