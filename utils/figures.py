"""Figures of a run: mid-slice panels (PNG) and an optional GIF that scrolls through the slices.

Both show values in the caller's units (``units``, with ``to_units`` mapping the volumes there when
they are not already), through one display window, with every panel drawn at its physical aspect.
matplotlib (rendered with Agg) and Pillow are imported inside the functions that use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from utils.metrics import PLANES

Window = Tuple[float, float]
ToUnits = Callable[[np.ndarray], np.ndarray]

# Each plane shows array axes (rows, columns); its pixel aspect is spacing[rows] / spacing[columns].
_PLANE_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}
DEFAULT_PERCENTILES = (1.0, 99.0)
# The error colour scale ends at this percentile of the errors, so that a few outliers do not darken it,
# and spans at least this fraction of the grey window, so that an exact result shows black.
ERROR_PERCENTILE = 99.5
ERROR_MIN_FRACTION = 1e-3
# A panel's height / width on the page is its physical ratio clipped to this range, so that thin slabs
# and tall strips neither vanish nor dominate.
PANEL_RATIO_RANGE = (0.25, 1.2)

# Page layout of the PNG, in inches.
_LEFT, _TOP_TITLES, _TOP_SUPTITLE, _BOTTOM = 1.2, 0.5, 0.35, 0.12
_COLUMN_GAP, _ROW_GAP = 0.06, 0.1
_BAR_PAD, _BAR_WIDTH, _BAR_LABELS = 0.1, 0.12, 0.7

# GIF panels: the longer side in pixels is the volume's own, magnified by a whole factor up to the
# lower bound or shrunk down to the upper one; the background is dark grey so that black panels show.
_GIF_SIDE_RANGE = (160, 320)
_GIF_FONT_SIZE, _GIF_PAD, _GIF_BACKGROUND = 12, 4, 48


def _finite(volume: np.ndarray) -> np.ndarray:
    values = np.asarray(volume, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def display_window(volume: np.ndarray, percentiles: Tuple[float, float] = DEFAULT_PERCENTILES) -> Window:
    """The ``percentiles`` of the finite values of ``volume`` as ``(low, high)``, widened if flat."""
    values = _finite(volume)
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if high <= low:
        # A constant volume still gets a window, one unit wide, that shows it mid-grey.
        return low - 0.5, low + 0.5
    return low, high


def _check_window(window: Window) -> Window:
    low, high = (float(v) for v in window)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(
            f"window {window!r} is not accepted; a pair (low, high) of finite numbers with low < high is"
        )
    return low, high


def _check_volume(name: str, volume: np.ndarray) -> None:
    if np.ndim(volume) != 3:
        raise ValueError(f"{name} has shape {np.shape(volume)}; a volume [D, H, W] is accepted")


def _in_units(volume: np.ndarray, to_units: Optional[ToUnits]) -> np.ndarray:
    volume = np.asarray(volume, dtype=np.float32)
    return volume if to_units is None else np.asarray(to_units(volume), dtype=np.float32)


def _aspect(spacing_xyz: Sequence[float], plane: str) -> float:
    spacing_zyx = tuple(spacing_xyz)[::-1]
    rows, cols = _PLANE_AXES[plane]
    return float(spacing_zyx[rows] / spacing_zyx[cols])


def _physical_ratio(shape: Sequence[int], spacing_xyz: Sequence[float], plane: str) -> float:
    """Physical height / width of a plane's image."""
    rows, cols = _PLANE_AXES[plane]
    return _aspect(spacing_xyz, plane) * shape[rows] / shape[cols]


def _unit_suffix(units: str) -> str:
    return f" ({units})" if units else ""


@dataclass(frozen=True)
class _Page:
    """Where the PNG's panels and colour bars go, in inches from the page's top-left corner."""

    lefts: List[float]
    bar_lefts: List[float]
    row_tops: List[float]
    row_heights: List[float]
    width: float
    height: float

    @property
    def grid_top(self) -> float:
        return self.row_tops[0]

    @property
    def grid_height(self) -> float:
        return self.row_tops[-1] + self.row_heights[-1] - self.grid_top

    def rect(self, left: float, top: float, width: float, height: float) -> List[float]:
        """A box in inches as matplotlib's figure fractions ``[left, bottom, width, height]``."""
        page_width, page_height = self.width, self.height
        bottom = 1.0 - (top + height) / page_height
        return [left / page_width, bottom, width / page_width, height / page_height]


def _page(
    intensity_columns: int, error_columns: int, ratios: Sequence[float], panel: float, title: bool
) -> _Page:
    """Intensity panels, their colour bar, error panels, their colour bar, left to right; planes as rows."""
    bar_block = _BAR_PAD + _BAR_WIDTH + _BAR_LABELS
    lefts: List[float] = []
    bar_lefts: List[float] = []
    x = _LEFT
    for count in (intensity_columns, error_columns):
        if count == 0:
            continue
        for _ in range(count):
            lefts.append(x)
            x += panel + _COLUMN_GAP
        bar_lefts.append(x - _COLUMN_GAP + _BAR_PAD)
        x += bar_block
    row_heights = [panel * ratio for ratio in ratios]
    row_tops = [_TOP_TITLES + (_TOP_SUPTITLE if title else 0.0)]
    for height in row_heights[:-1]:
        row_tops.append(row_tops[-1] + height + _ROW_GAP)
    height = row_tops[-1] + row_heights[-1] + _BOTTOM
    return _Page(lefts, bar_lefts, row_tops, row_heights, x, height)


def _extend(below: bool, above: bool) -> str:
    """A colour bar's ``extend``: arrows at the ends that the data passes."""
    return ("both" if above else "min") if below else ("max" if above else "neither")


def _finite_range(volumes: Sequence[np.ndarray], default: Window) -> Window:
    values = [(float(np.nanmin(v)), float(np.nanmax(v))) for v in volumes if np.isfinite(v).any()]
    return (min(v[0] for v in values), max(v[1] for v in values)) if values else default


def slices_figure(
    gt: np.ndarray,
    panels: Mapping[str, np.ndarray],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    captions: Optional[Mapping[str, str]] = None,
    *,
    units: str = "",
    to_units: Optional[ToUnits] = None,
    window: Optional[Window] = None,
    errors: Optional[Sequence[str]] = None,
    title: str = "",
    panel_inches: float = 2.2,
):
    """Axial, coronal and sagittal mid-slices (rows) of GT, each panel volume and their errors.

    Every plane's panels have one size, set by the plane's physical extent (clipped to
    ``PANEL_RATIO_RANGE`` so that thin slabs and tall strips stay legible); images keep their
    physical aspect inside it. Intensities share one grey window and colour bar, errors one magma
    scale and bar; NaN shows red.

    Args:
        gt: ground truth ``[D, H, W]``.
        panels: method name -> volume ``[D, H, W]`` in display order (e.g. ``{"FDK": ...,
            "DDS+ISCS": ...}``); the names are the column titles.
        spacing: voxel spacing ``(x, y, z)`` in mm, for the physical aspect.
        captions: optional name -> text under a column title (e.g. PSNR/SSIM).
        units: name of the displayed values' unit (e.g. ``"HU"``), shown on the colour bars.
        to_units: maps a volume to ``units`` (e.g. ``lambda v: 2600 * v - 1000``); None when the
            volumes are already in them. Errors are differences in these units.
        window: grey window ``(low, high)`` in ``units`` (e.g. ``(-1000, 600)`` for CT); default:
            the 1st and 99th percentiles of GT.
        errors: names of panels that get an ``|name - GT|`` column; default: the last panel.
        title: optional line above the figure (e.g. the problem and the input volume).
        panel_inches: width of one column in inches.

    Returns:
        The matplotlib ``Figure`` on an Agg canvas, not yet saved.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(panels)
    if not names:
        raise ValueError("panels is empty; at least one name -> volume is accepted")
    error_names = [names[-1]] if errors is None else list(errors)
    unknown = [name for name in error_names if name not in panels]
    if unknown:
        raise ValueError(f"errors {unknown!r} are not panel names; accepted: {', '.join(names)}")
    _check_volume("gt", gt)
    gt = _in_units(gt, to_units)
    for name in names:
        if np.shape(panels[name]) != gt.shape:
            raise ValueError(
                f"panel {name!r} has shape {np.shape(panels[name])}; the GT shape {gt.shape} is accepted"
            )
    volumes = {name: _in_units(panels[name], to_units) for name in names}
    low, high = display_window(gt) if window is None else _check_window(window)
    error_volumes = [np.abs(volumes[name] - gt) for name in error_names]
    error_values = np.concatenate([_finite(volume) for volume in error_volumes] + [np.zeros(0)])
    error_max = ERROR_MIN_FRACTION * (high - low)
    if error_values.size:
        error_max = max(float(np.percentile(error_values, ERROR_PERCENTILE)), error_max)

    intensity_columns = [("GT", gt)] + [(name, volumes[name]) for name in names]
    error_columns = [(f"|{name} − GT|", volume) for name, volume in zip(error_names, error_volumes)]
    ratios = [float(np.clip(_physical_ratio(gt.shape, spacing, p), *PANEL_RATIO_RANGE)) for p in PLANES]
    page = _page(len(intensity_columns), len(error_columns), ratios, panel_inches, bool(title))
    fig = Figure(figsize=(page.width, page.height))
    FigureCanvasAgg(fig)

    # Panels: one row per plane, titles over the first row, the plane and slice left of each row.
    kinds = {
        "intensity": dict(cmap=colormaps["gray"].with_extremes(bad="tab:red"), vmin=low, vmax=high),
        "error": dict(cmap=colormaps["magma"].with_extremes(bad="tab:red"), vmin=0.0, vmax=error_max),
    }
    images = {}
    columns = [("intensity", *column) for column in intensity_columns]
    columns += [("error", *column) for column in error_columns]
    for row, plane in enumerate(PLANES):
        index = gt.shape[PLANES[plane]] // 2
        top, row_height = page.row_tops[row], page.row_heights[row]
        for left, (kind, name, volume) in zip(page.lefts, columns):
            ax = fig.add_axes(page.rect(left, top, panel_inches, row_height))
            images[kind] = ax.imshow(
                np.take(volume, index, axis=PLANES[plane]),
                aspect=_aspect(spacing, plane),
                interpolation="nearest",
                **kinds[kind],
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                caption = (captions or {}).get(name)
                label = name if caption is None else f"{name}\n{caption}"
                x = (left + panel_inches / 2) / page.width
                fig.text(x, 1.0 - (top - 0.05) / page.height, label, ha="center", va="bottom", fontsize=9)
        label = f"{plane}\nslice {index + 1} / {gt.shape[PLANES[plane]]}"
        y = 1.0 - (top + row_height / 2) / page.height
        fig.text((_LEFT - 0.1) / page.width, y, label, ha="right", va="center", fontsize=9)

    # One colour bar per image kind, spanning all rows; arrows mark values beyond its scale.
    data_low, data_high = _finite_range([volume for _, volume in intensity_columns], (low, high))
    bars = [("intensity", f"intensity{_unit_suffix(units)}", _extend(data_low < low, data_high > high))]
    if error_columns:
        error_top = float(error_values.max()) if error_values.size else 0.0
        bars.append(("error", f"|error|{_unit_suffix(units)}", _extend(False, error_top > error_max)))
    for bar_left, (kind, label, arrows) in zip(page.bar_lefts, bars):
        box = page.rect(bar_left, page.grid_top, _BAR_WIDTH, page.grid_height)
        bar = fig.colorbar(images[kind], cax=fig.add_axes(box, label=f"{kind} colour bar"), extend=arrows)
        bar.set_label(label, fontsize=9)
        bar.ax.tick_params(labelsize=8)
    if title:
        fig.text(0.5, 1.0 - 0.08 / page.height, title, ha="center", va="top", fontsize=11)
    return fig


def save_slices_figure(
    path: Path,
    gt: np.ndarray,
    panels: Mapping[str, np.ndarray],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    captions: Optional[Mapping[str, str]] = None,
    *,
    dpi: int = 100,
    **options,
) -> Path:
    """Write :func:`slices_figure` (same arguments; ``options`` are its keyword-only ones) as a PNG.

    Returns:
        ``path``.
    """
    fig = slices_figure(gt, panels, spacing, captions, **options)
    fig.savefig(path, dpi=dpi)
    return path


def _to_uint8(volume: np.ndarray, window: Window) -> np.ndarray:
    low, high = window
    scaled = (volume - low) / (high - low)
    # NaN (a diverged reconstruction) shows as black instead of breaking the cast.
    return (np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255).round().astype(np.uint8)


def _gif_panel_size(rows: int, cols: int, aspect: float) -> Tuple[int, int]:
    """Pixel (height, width) of a GIF panel at its physical aspect, longer side in ``_GIF_SIDE_RANGE``."""
    ratio = aspect * rows / cols
    native = max(rows, cols)
    smallest, largest = _GIF_SIDE_RANGE
    side = min(native * -(-smallest // native), largest)
    if ratio >= 1.0:
        return side, max(1, round(side / ratio))
    return max(1, round(side * ratio)), side


def save_scroll_gif(
    path: Path,
    volumes: Dict[str, np.ndarray],
    plane: str = "axial",
    window: Optional[Window] = None,
    duration_ms: int = 80,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    units: str = "",
    to_units: Optional[ToUnits] = None,
) -> Path:
    """An animated GIF stepping through the slices of ``plane``, the volumes side by side, labelled.

    Each frame shows the volume names above their panels and ``"<plane> slice k / N"`` with the
    window below; panels are resampled (nearest) to their physical aspect.

    Args:
        path: GIF file to write.
        volumes: name -> volume ``[D, H, W]`` (same shape), left to right.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        window: grey window ``(low, high)`` in ``units``; default: the first volume's 1st and 99th
            percentiles.
        duration_ms: display time of each frame.
        spacing: voxel spacing ``(x, y, z)`` in mm, for the physical aspect.
        units: name of the displayed values' unit (e.g. ``"HU"``), shown with the window.
        to_units: maps a volume to ``units``; None when the volumes are already in them.

    Returns:
        ``path``.
    """
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    if plane not in PLANES:
        raise ValueError(f"plane {plane!r} is not accepted; accepted: {', '.join(PLANES)}")
    if not volumes:
        raise ValueError("volumes is empty; at least one name -> volume is accepted")
    names = list(volumes)
    _check_volume(f"volume {names[0]!r}", volumes[names[0]])
    stacks = [np.moveaxis(_in_units(volumes[name], to_units), PLANES[plane], 0) for name in names]
    shape = stacks[0].shape
    for name, stack in zip(names, stacks):
        if stack.shape != shape:
            raise ValueError(
                f"volume {name!r} has shape {np.shape(volumes[name])}; the shape of {names[0]!r} is accepted"
            )
    window = display_window(stacks[0]) if window is None else _check_window(window)
    count, rows, cols = shape
    panel_h, panel_w = _gif_panel_size(rows, cols, _aspect(spacing, plane))
    # Nearest-neighbour resampling by index arrays, once for the whole stack.
    row_index = (np.arange(panel_h) * rows // panel_h).astype(np.intp)
    col_index = (np.arange(panel_w) * cols // panel_w).astype(np.intp)
    panels = [_to_uint8(stack[:, row_index][:, :, col_index], window) for stack in stacks]

    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), _GIF_FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    text_width = max(int(measure.textlength(name, font=font)) for name in names)
    cell_w = max(panel_w, text_width) + 2 * _GIF_PAD
    line = _GIF_FONT_SIZE + 2 * _GIF_PAD
    low, high = window
    footer_right = f"window {low:.4g} .. {high:.4g}{' ' + units if units else ''}"
    footer_widest = f"{plane} slice {count} / {count}"
    footer_width = sum(int(measure.textlength(text, font=font)) + 1 for text in (footer_widest, footer_right))
    width = max(cell_w * len(names), footer_width + 4 * _GIF_PAD)
    height = line + panel_h + line
    # Cell left edges: the row of panels is centred where the footer is the wider.
    cells = [(width - cell_w * len(names)) // 2 + position * cell_w for position in range(len(names))]

    # The names and the window are the same on every frame: drawn once on the background.
    background = Image.new("L", (width, height), _GIF_BACKGROUND)
    draw = ImageDraw.Draw(background)
    for cell, name in zip(cells, names):
        draw.text((cell + cell_w / 2, line / 2), name, fill=255, font=font, anchor="mm")
    draw.text((width - _GIF_PAD, height - line / 2), footer_right, fill=200, font=font, anchor="rm")
    base = np.asarray(background).copy()
    offsets = [cell + (cell_w - panel_w) // 2 for cell in cells]

    frames = []
    for k in range(count):
        canvas = base.copy()
        for offset, panel in zip(offsets, panels):
            canvas[line : line + panel_h, offset : offset + panel_w] = panel[k]
        frame = Image.fromarray(canvas)
        label = f"{plane} slice {k + 1} / {count}"
        ImageDraw.Draw(frame).text((_GIF_PAD, height - line / 2), label, fill=255, font=font, anchor="lm")
        frames.append(frame)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return path
