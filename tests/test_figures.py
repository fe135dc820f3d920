"""Run figures: method names, units, colour bars, equal panels at physical aspect, any shape; GIF labels."""

import numpy as np
import pytest

from utils.figures import display_window, save_scroll_gif, save_slices_figure, slices_figure

pil = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")


def _hu(volume):
    return 2600.0 * volume - 1000.0


def _volumes(shape, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape, dtype=np.float32)
    return gt, {"FDK": gt + 0.1 * rng.random(shape, dtype=np.float32), "DDS+ISCS": gt * 0.95}


def _texts(fig):
    from matplotlib.text import Text

    return [text.get_text() for text in fig.findobj(Text) if text.get_text()]


def _image_axes(fig):
    """Axes that show a slice, row by row as drawn (colour bars hold no images)."""
    return [ax for ax in fig.axes if ax.images]


def test_titles_name_the_methods_and_bars_carry_the_units(tmp_path):
    gt, panels = _volumes((6, 8, 10))
    captions = {"DDS+ISCS": "PSNR 36.97 / SSIM 0.951"}
    fig = slices_figure(gt, panels, captions=captions, units="HU", to_units=_hu, errors=["FDK", "DDS+ISCS"])
    texts = "\n".join(_texts(fig))
    for expected in ("GT", "FDK", "DDS+ISCS", "PSNR 36.97 / SSIM 0.951", "|FDK − GT|", "|DDS+ISCS − GT|"):
        assert expected in texts
    assert "recon" not in texts
    labels = sorted(ax.get_ylabel() for ax in fig.axes if ax.get_label().endswith("colour bar"))
    assert labels == ["intensity (HU)", "|error| (HU)"]
    # Rows name their plane and the slice shown, counted from 1.
    for row_label in ("axial\nslice 4 / 6", "coronal\nslice 5 / 8", "sagittal\nslice 6 / 10"):
        assert row_label in texts
    png = save_slices_figure(tmp_path / "figure.png", gt, panels, captions=captions, units="HU", to_units=_hu)
    assert pil.open(png).format == "PNG"


def test_values_are_shown_in_the_callers_units_and_window():
    gt, panels = _volumes((6, 8, 10))
    fig = slices_figure(gt, panels, units="HU", to_units=_hu, window=(-1000.0, 600.0))
    gt_axial, fdk_axial, _, error_axial = (ax.images[0] for ax in _image_axes(fig)[:4])
    np.testing.assert_allclose(gt_axial.get_array(), _hu(gt[3]), rtol=1e-6)
    error = np.abs(_hu(panels["DDS+ISCS"][3]) - _hu(gt[3]))
    np.testing.assert_allclose(error_axial.get_array(), error, atol=1e-3)
    assert gt_axial.get_clim() == fdk_axial.get_clim() == (-1000.0, 600.0)
    assert error_axial.get_clim()[0] == 0.0 and error_axial.get_clim()[1] > 0.0

    # Without a window the grey scale spans GT's 1st to 99th percentiles.
    default = _image_axes(slices_figure(gt, panels))[0].images[0]
    np.testing.assert_allclose(default.get_clim(), np.percentile(gt, [1, 99]), rtol=1e-6)
    assert display_window(np.full((2, 2, 2), 3.0)) == (2.5, 3.5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.5)])
def test_error_panels_equal_the_others_at_physical_aspect(spacing):
    gt, panels = _volumes((24, 32, 40))
    fig = slices_figure(gt, panels, spacing=spacing, errors=["FDK", "DDS+ISCS"])
    fig.canvas.draw()
    axes = _image_axes(fig)
    columns = 5
    assert len(axes) == 3 * columns
    spacing_zyx = spacing[::-1]
    for row, (rows_axis, cols_axis) in enumerate([(1, 2), (0, 2), (0, 1)]):
        boxes = [ax.get_window_extent() for ax in axes[row * columns : (row + 1) * columns]]
        sizes = {(round(box.width, 3), round(box.height, 3)) for box in boxes}
        assert len(sizes) == 1
        extents = [spacing_zyx[axis] * gt.shape[axis] for axis in (rows_axis, cols_axis)]
        assert boxes[0].height / boxes[0].width == pytest.approx(extents[0] / extents[1], rel=0.01)


@pytest.mark.parametrize("shape", [(4, 128, 128), (128, 128, 4), (256, 64, 64), (16, 128, 128)])
def test_any_shape_fits_a_bounded_page(tmp_path, shape):
    gt, panels = _volumes(shape)
    fig = slices_figure(gt, panels, spacing=(1.0, 1.0, 3.0), panel_inches=2.0)
    fig.savefig(tmp_path / "figure.png", dpi=100)
    width, height = pil.open(tmp_path / "figure.png").size
    assert 600 <= width <= 1300 and 300 <= height <= 1000
    # Every image fits a 2 x 2.4 inch cell (1.2 panel widths high at most), so no strip dominates.
    for ax in _image_axes(fig):
        box = ax.get_position()
        assert box.width * fig.get_figwidth() <= 2.0 + 1e-6 and box.height * fig.get_figheight() <= 2.4 + 1e-6


def test_a_diverged_reconstruction_still_draws(tmp_path):
    gt, panels = _volumes((6, 8, 10))
    panels["DDS+ISCS"] = np.full_like(gt, np.nan)
    png = save_slices_figure(tmp_path / "figure.png", gt, panels)
    assert pil.open(png).format == "PNG"
    gif = save_scroll_gif(tmp_path / "slices.gif", {"GT": gt, **panels})
    assert pil.open(gif).n_frames == gt.shape[0]


def test_bad_arguments_name_the_value():
    gt, panels = _volumes((6, 8, 10))
    with pytest.raises(ValueError, match="'SIRT'.*accepted: FDK, DDS\\+ISCS"):
        slices_figure(gt, panels, errors=["SIRT"])
    with pytest.raises(ValueError, match="window \\(600.0, -1000.0\\)"):
        slices_figure(gt, panels, window=(600.0, -1000.0))
    with pytest.raises(ValueError, match="'FDK' has shape \\(6, 8, 9\\)"):
        slices_figure(gt, {"FDK": gt[..., :9]})
    with pytest.raises(ValueError, match="gt has shape \\(8, 10\\)"):
        slices_figure(gt[0], {"FDK": gt[0]})
    with pytest.raises(ValueError, match="oblique"):
        save_scroll_gif("x.gif", {"GT": gt}, plane="oblique")
    with pytest.raises(ValueError, match="'DDS\\+ISCS' has shape \\(6, 8, 9\\)"):
        save_scroll_gif("x.gif", {"GT": gt, "DDS+ISCS": gt[..., :9]})


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_gif_has_one_labelled_frame_per_slice(tmp_path, plane):
    # A volume constant along the scrolled axis: only the "slice k / N" label tells the frames
    # apart, and Pillow merges identical frames, so N frames means every frame is labelled.
    gt = np.broadcast_to(np.linspace(0.0, 1.0, 12 * 16, dtype=np.float32).reshape(1, 12, 16), (10, 12, 16))
    volume = np.moveaxis(gt.copy(), 0, {"axial": 0, "coronal": 1, "sagittal": 2}[plane])
    volumes = {"GT": volume, "DDS+ISCS": volume}
    gif = save_scroll_gif(tmp_path / "slices.gif", volumes, plane=plane, units="HU")
    image = pil.open(gif)
    assert image.n_frames == 10
    width, height = image.size
    assert width <= 2 * (320 + 8) + 8 and height <= 320 + 2 * 20
    # White text: a name over each half of the top band, the slice index at the bottom left.
    frame = np.asarray(image.convert("L"))
    header, footer = frame[:16] == 255, frame[-16:] == 255
    assert header[:, : width // 2].any() and header[:, width // 2 :].any()
    assert footer[:, : width // 4].any()


@pytest.mark.parametrize("shape", [(4, 128, 128), (128, 128, 4), (256, 64, 64)])
def test_gif_size_is_bounded_and_panels_keep_physical_aspect(tmp_path, shape):
    volume = np.full(shape, 0.5, dtype=np.float32)
    spacing = (1.0, 1.0, 2.5)
    gif = save_scroll_gif(
        tmp_path / "slices.gif", {"GT": volume}, plane="coronal", window=(0.0, 1.0), spacing=spacing
    )
    image = pil.open(gif)
    assert image.n_frames == shape[1]
    assert image.size[0] <= 400 and image.size[1] <= 400
    # The panel is the block of mid-grey pixels (value 0.5 in the window [0, 1]).
    panel = np.asarray(image.convert("L")) == 128
    rows, cols = panel.sum(axis=1), panel.sum(axis=0)
    height, width = int((rows >= 0.9 * rows.max()).sum()), int((cols >= 0.9 * cols.max()).sum())
    assert height / width == pytest.approx(2.5 * shape[0] / shape[2], rel=0.01 + 0.6 / min(height, width))
