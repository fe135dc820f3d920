"""The entry scripts end to end on CPU at toy size, and every kind of bad input.

A tiny random NCSN++ (exported with models.export_weights) and tiny CT / MRI volumes (written with
utils.io.write_volume) stand in for the shipped priors and demo data; NFE 2, a few slices.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import recon_CBCT
import recon_MRI_ZSR
from recon.results import LOG_NAME, MARKER
from utils.io import read_volume, write_volume
from utils.metrics import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
# Files every finished run writes, whatever the task.
RUN_FILES = {"args.yaml", LOG_NAME, "GT.nii.gz", "recon.nii.gz", "metrics.json", "metrics.txt", "figure.png"}
DATA = Path(__file__).resolve().parent / "data"
PRIOR_SIZE = 16
# An oblique-free but non-LPI orientation (RAS-like axes), so reorientation is exercised.
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
CT_META = {"spacing": (1.25, 1.25, 2.0), "origin": (10.0, -20.0, 30.0), "direction": RAS_DIRECTION}


def tiny_config() -> dict:
    """The parity test's small NCSN++ config shrunk to 16x16 planes (about 50k parameters)."""
    config = yaml.safe_load((DATA / "parity_small_config.yaml").read_text())
    config["data"]["image_size"] = PRIOR_SIZE
    config["model"].update(nf=8, ch_mult=[1, 2], attn_resolutions=[8], num_res_blocks=1)
    return config


def export_tiny_prior(path: Path, config: dict, seed: int = 0) -> Path:
    """A randomly initialised NCSN++ exported with models.export_weights (config embedded, fp32)."""
    from models import build_model, export_weights, load_config

    loaded = load_config(config)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        net = build_model(loaded)
    finally:
        torch.random.set_rng_state(generator_state)
    export_weights(path, net, loaded, meta={"data": "random"}, dtype=torch.float32)
    return path


def ct_phantom_hu(depth: int = 10, size: int = 20) -> np.ndarray:
    """A body cylinder (40 HU) in air with a bright ball (840 HU) and a z-ramp: int16 HU [D, H, W]."""
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, depth), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"
    )
    body = np.where(x**2 + y**2 < 0.7, 40.0 + 100.0 * z, -1000.0)
    ball = np.where((x - 0.2) ** 2 + y**2 + z**2 < 0.2, 800.0, 0.0)
    return (body + ball).astype(np.int16)


def mri_volume(depth: int = 16, height: int = 6, width: int = 18) -> np.ndarray:
    """A smooth blob with structure along z: float32 [D, H, W]."""
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, depth), np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij"
    )
    return (np.exp(-2.0 * (x**2 + y**2 + z**2)) + 0.3 * np.sin(5.0 * z) * (x**2 + z**2 < 0.8)).astype(
        np.float32
    )


def write_inputs(folder: Path) -> dict:
    """Write the prior, its config and both volumes into ``folder``; returns their paths by name."""
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    (folder / "tiny.yaml").write_text(yaml.safe_dump(config))
    return {
        "prior": export_tiny_prior(folder / "tiny.pt", config),
        "config": folder / "tiny.yaml",
        "ct": write_volume(folder / "ct.nii.gz", ct_phantom_hu(), CT_META),
        "mri": write_volume(folder / "mri.nii.gz", mri_volume(), {"spacing": (1.0, 1.0, 1.0)}),
    }


def _physical_centre(meta, shape_zyx):
    direction = np.asarray(meta["direction"]).reshape(3, 3)
    half = (np.asarray(shape_zyx[::-1], float) - 1) / 2
    return np.asarray(meta["origin"]) + direction @ (np.asarray(meta["spacing"]) * half)


def _flags(**options) -> list:
    """Command-line tokens: ``num_cg=2`` -> ``--num-cg 2``; the value ``""`` gives a bare flag."""
    tokens = []
    for name, value in options.items():
        tokens += [f"--{name.replace('_', '-')}"] + ([str(value)] if value != "" else [])
    return tokens


def _run_folders(results: Path):
    return sorted(path.parent for path in results.rglob("args.yaml"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


# ------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cbct_runs(inputs, tmp_path_factory):
    """Two CT runs with the same seed, the first with intermediates and a GIF."""
    results = tmp_path_factory.mktemp("results")
    argv = _flags(
        data=inputs["ct"], checkpoint_path=inputs["prior"], task="SVCT", degree=8, NFE=2, num_cg=2,
        sirt_iter=2, slice_batch=4, device="cpu", results_dir=results,
    )  # fmt: skip
    assert recon_CBCT.main(argv + ["--save-intermediates", "--gif"]) == 0
    assert recon_CBCT.main(argv) == 0
    return _run_folders(results)


@pytest.fixture(scope="module")
def zsr_runs(inputs, tmp_path_factory):
    """Three ZSR runs: seeds 42, 42 and 43, with the config given by file."""
    results = tmp_path_factory.mktemp("results")
    argv = _flags(
        data=inputs["mri"], checkpoint_path=inputs["prior"], config_path=inputs["config"], degree=4, NFE=2,
        num_cg=2, noise_control="ar1", noise_corr_length=3, device="cpu", results_dir=results,
    )  # fmt: skip
    for seed in (42, 42, 43):
        assert recon_MRI_ZSR.main(argv + _flags(seed=seed, gif="")) == 0
    return _run_folders(results)


def test_cbct_folder_layout_and_contents(cbct_runs, inputs):
    assert len(cbct_runs) == 2
    folder = cbct_runs[0]
    problem = "sall_NFE2_init0_nCG2_wTIK0_wDZ0_noiseSLERP_renoiseDDS"
    assert folder.parent.parent.parts[-4:] == ("tiny", "ct", "SVCT-8", "DDS")
    assert folder.parent.name == problem
    expected = RUN_FILES | {"measurement.nii.gz", "FBP-LV.nii.gz", "FBP-FV.nii.gz", "SIRT-LV.nii.gz"}
    expected |= {"slices.gif", "X_0", "X_hat"}
    assert {p.name for p in folder.iterdir()} == expected
    assert sorted(p.name for p in (folder / "X_0").iterdir()) == ["step_000.nii.gz", "step_001.nii.gz"]
    assert {p.name for p in cbct_runs[1].iterdir()} == expected - {"slices.gif", "X_0", "X_hat"}
    measurement, _ = read_volume(folder / "measurement.nii.gz")
    assert measurement.shape[0] == 8  # one projection per kept view


def test_cbct_outputs_overlay_the_input(cbct_runs, inputs):
    folder = cbct_runs[0]
    _, input_meta = read_volume(inputs["ct"])
    gt, meta = read_volume(folder / "GT.nii.gz")
    recon, recon_meta = read_volume(folder / "recon.nii.gz")
    assert gt.shape == recon.shape == (10, 16, 16)
    assert -1000.0 <= gt.min() and gt.max() <= 1600.0  # in HU, clamped to the CT window
    np.testing.assert_allclose(meta["spacing"], (1.25 * 20 / 16, 1.25 * 20 / 16, 2.0), rtol=1e-6)
    np.testing.assert_allclose(meta["direction"], (1, 0, 0, 0, 1, 0, 0, 0, -1), atol=1e-6)  # LPI
    np.testing.assert_allclose(
        _physical_centre(meta, gt.shape), _physical_centre(input_meta, (10, 20, 20)), atol=1e-4
    )
    assert recon_meta == meta


def test_args_yaml_records_resolved_options(cbct_runs, inputs):
    recorded = yaml.safe_load((cbct_runs[0] / "args.yaml").read_text())
    options = recorded["options"]
    assert options["sigma_max"] == 378.0 and options["sigma_min"] == 0.01  # from the embedded config
    assert options["recon_size"] == 16 and options["seed"] == 42 and options["use_init"] is False
    assert options["data"] == str(inputs["ct"])
    assert set(recorded) >= {"versions", "device", "device_name", "git_commit", "command"}
    assert set(recorded["versions"]) == {"python", "torch", "numpy", "SimpleITK"}
    assert recorded["command"].startswith(f"recon_CBCT.py --data {inputs['ct']} ")


def test_metrics_json_has_the_documented_keys(cbct_runs, zsr_runs):
    for folder, names in (
        (cbct_runs[0], ["FBP-LV", "FBP-FV", "SIRT-LV", "recon"]),
        (zsr_runs[0], ["ATy", "recon"]),
    ):
        report = yaml.safe_load((folder / "metrics.json").read_text())
        assert set(report) == {"intensity", "data_range", "shape", "skip_fraction", "metrics"}
        assert list(report["metrics"]) == names
        for values in report["metrics"].values():
            assert list(values) == list(METRIC_KEYS)
        assert "recon" in (folder / "metrics.txt").read_text()


def test_same_seed_same_recon(cbct_runs, zsr_runs):
    for first, second in (cbct_runs[:2], zsr_runs[:2]):
        a, _ = read_volume(first / "recon.nii.gz")
        b, _ = read_volume(second / "recon.nii.gz")
        np.testing.assert_array_equal(a, b)
    other, _ = read_volume(zsr_runs[2] / "recon.nii.gz")
    assert not np.array_equal(a, other)


def test_zsr_folder_and_measurement_geometry(zsr_runs):
    assert len(zsr_runs) == 3
    folder = zsr_runs[0]
    assert folder.parent.parent.parts[-4:] == ("tiny", "mri", "ZSR-4", "DDS")
    assert folder.parent.name == "sall_NFE2_init0_nCG2_wTIK0_wDZ0_noisear1-3_renoiseDDS"
    assert {p.name for p in folder.iterdir()} == RUN_FILES | {"y.nii.gz", "ATy.nii.gz", "slices.gif"}
    gt, meta = read_volume(folder / "GT.nii.gz")
    y, y_meta = read_volume(folder / "y.nii.gz")
    assert gt.shape == (16, 6, 16) and y.shape == (4, 6, 16)
    assert y_meta["spacing"][2] == pytest.approx(4 * meta["spacing"][2])
    # Thick slice k is the mean of thin slices 4k..4k+3 and sits at their centre.
    np.testing.assert_allclose(y[1], gt[4:8].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(_physical_centre(y_meta, y.shape), _physical_centre(meta, gt.shape), atol=1e-4)


def test_classical_methods_need_no_prior(inputs, tmp_path):
    results = tmp_path / "results"
    argv = _flags(
        data=inputs["ct"], method="SIRT", task="SVCT", degree=6, sirt_iter=2, recon_size=12, slice_begin=2,
        slice_end=8, sino_noise="1e4", checkpoint_path=tmp_path / "absent.pt", results_dir=results,
        device="cpu",
    )  # fmt: skip
    assert recon_CBCT.main(argv) == 0
    (folder,) = _run_folders(results)
    assert folder.parent.parent.parts[-4:] == ("no-prior", "ct", "SVCT-6", "SIRT")
    assert folder.parent.name == "s2-8_sino10000"
    recon, _ = read_volume(folder / "recon.nii.gz")
    sirt, _ = read_volume(folder / "SIRT-LV.nii.gz")
    assert recon.shape == (6, 12, 12)
    np.testing.assert_array_equal(recon, sirt)


# ------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad(inputs, tmp_path_factory):
    """Bad input files next to the good ones."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "junk.nii.gz").write_bytes(b"not an image at all")
    write_volume(folder / "flat.nii.gz", np.full((6, 8, 8), -1000, np.int16))
    nan_volume = np.zeros((6, 8, 8), np.float32)
    nan_volume[2, 3, 3] = np.nan
    np.save(folder / "nan.npy", nan_volume)
    import SimpleITK as sitk

    # SimpleITK's NIfTI reader turns NaN into 0; utils.io restores it from the file.
    sitk.WriteImage(sitk.GetImageFromArray(nan_volume), str(folder / "nan.nii.gz"))
    (folder / "broken.yaml").write_text("model: [unclosed\n")

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(folder / "flat2d.nii.gz"))
    config = tiny_config()
    config["model"]["dropout_rate"] = 0.1
    (folder / "unknown_key.yaml").write_text(yaml.safe_dump(config))
    return folder


def _cases():
    """(name, script, options given the input and bad-file folders, fragment of the error message)."""

    def ct(**options):
        return lambda i, b: {"data": i["ct"], "checkpoint_path": i["prior"], **options}

    def ct_file(name):
        return lambda i, b: {"data": b / name, "method": "FDK"}

    parity_checkpoint = ROOT / "tests/data/parity_small_checkpoint.pth"
    return [
        ("missing file", recon_CBCT, ct_file("nope.nii.gz"), "volume file not found"),
        ("unreadable file", recon_CBCT, ct_file("junk.nii.gz"), "cannot read volume"),
        ("not 3D", recon_CBCT, ct_file("flat2d.nii.gz"), "a 3D"),
        ("NaN volume", recon_CBCT, ct_file("nan.npy"), "NaN"),
        ("NaN in a NIfTI volume", recon_CBCT, ct_file("nan.nii.gz"), "NaN"),
        ("directory as data", recon_CBCT, lambda i, b: {"data": b, "method": "FDK"}, "is a directory"),
        ("constant volume", recon_CBCT, ct_file("flat.nii.gz"), "constant"),
        ("empty slice range", recon_CBCT, ct(slice_begin=4, slice_end=4), "slice range [4, 4)"),
        ("slice range outside", recon_CBCT, ct(slice_end=11), "slice range [0, 11)"),
        ("LACT arc too wide", recon_CBCT, ct(task="LACT", degree=400), "LACT degree"),
        ("SVCT too many views", recon_CBCT, ct(task="SVCT", degree=361), "SVCT degree"),
        ("ZSR factor too large", recon_MRI_ZSR,
         lambda i, b: {"data": i["mri"], "checkpoint_path": i["prior"], "degree": 17}, "ZSR factor 17"),
        ("checkpoint does not fit the config", recon_CBCT,
         lambda i, b: {"data": i["ct"], "checkpoint_path": parity_checkpoint, "config_path": i["config"]},
         "parity_small_checkpoint.pth"),
        ("config with an unknown key", recon_CBCT,
         lambda i, b: {**ct()(i, b), "config_path": b / "unknown_key.yaml"},
         "unknown config key 'model.dropout_rate'"),
        ("missing checkpoint", recon_CBCT,
         lambda i, b: {**ct()(i, b), "checkpoint_path": b / "none.pt"}, "none.pt"),
        ("knob the noise source lacks", recon_CBCT, ct(noise_control="iid", noise_span=0.5),
         "--noise-span 0.5: --noise-control iid has no such knob; accepted with --noise-control iscs"),
        ("plane size the network cannot halve", recon_CBCT, ct(recon_size=PRIOR_SIZE + 1),
         "--recon-size 17: the prior's network halves the planes 1 times; accepted: a multiple of 2"),
        ("malformed config", recon_CBCT, lambda i, b: {**ct()(i, b), "config_path": b / "broken.yaml"},
         "is not a readable YAML file"),
        ("missing config of a classical run", recon_CBCT,
         lambda i, b: {**ct_file("nope.nii.gz")(i, b), "data": i["ct"], "config_path": b / "none.yaml"},
         "--config-path"),
    ]  # fmt: skip


@pytest.mark.parametrize("name,script,argv,fragment", _cases(), ids=[case[0] for case in _cases()])
def test_bad_input_is_one_line_error_and_leaves_no_folder(
    inputs, bad, tmp_path, capsys, name, script, argv, fragment
):
    results = tmp_path / "results"
    code = script.main(_flags(**argv(inputs, bad), device="cpu", results_dir=results))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert not results.exists()


def test_results_dir_that_is_a_file_is_a_one_line_error(inputs, tmp_path, capsys):
    not_a_dir = tmp_path / "afile"
    not_a_dir.write_text("keep me")
    code = recon_CBCT.main(_flags(data=inputs["ct"], method="FDK", device="cpu", results_dir=not_a_dir))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --results-dir {not_a_dir}: cannot create") and "writable" not in err
    assert "accepted: a directory you can write to" in err
    assert not_a_dir.read_text() == "keep me"


def test_parser_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recon_CBCT.main(["--degree", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert (
        err
        == "recon_CBCT.py: error: argument --degree: '0' is out of range; an integer >= 1 is accepted (see --help)\n"
    )


def test_config_with_another_noise_range_warns(inputs):
    from models import load_score_model

    config = tiny_config()
    config["model"]["sigma_max"] = 2 * float(config["model"]["sigma_max"])
    with pytest.warns(
        UserWarning, match=r"sets model\.sigma_max 756 \(trained with 378\) for .*tiny\.pt; the config's"
    ):
        net = load_score_model(config, inputs["prior"])
    assert float(net.config.model.sigma_max) == config["model"]["sigma_max"]


def test_interrupted_run_exits_130_and_stays_incomplete(inputs, tmp_path, monkeypatch, capsys):
    import algorithms

    monkeypatch.setattr(algorithms, "reconstruct", _failing_reconstruct(KeyboardInterrupt()))
    results = tmp_path / "results"
    argv = _flags(
        data=inputs["ct"], checkpoint_path=inputs["prior"], NFE=2, device="cpu", results_dir=results
    )
    assert recon_CBCT.main(argv) == 130
    assert (
        capsys.readouterr().err
        == "error: interrupted; a results folder already made stays marked INCOMPLETE\n"
    )
    (folder,) = _run_folders(results)
    assert not (folder / "recon.nii.gz").exists()
    assert "interrupted (KeyboardInterrupt)" in (folder / MARKER).read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_an_error(inputs, tmp_path, capsys):
    code = recon_CBCT.main(_flags(data=inputs["ct"], device="cuda", results_dir=tmp_path / "r"))
    assert code == 2
    assert "error: --device cuda: no CUDA GPU is available" in capsys.readouterr().err


def test_compile_on_cpu_is_an_error(inputs, tmp_path, capsys):
    code = recon_CBCT.main(_flags(data=inputs["ct"], device="cpu", compile="", results_dir=tmp_path / "r"))
    assert code == 2
    assert "error: --compile runs the network in a CUDA graph" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_process_exit_code_and_no_traceback(tmp_path):
    argv = _flags(data=tmp_path / "absent.nii.gz", method="ADMM-TV", device="cpu", results_dir=tmp_path / "r")
    result = subprocess.run(
        [sys.executable, "recon_MRI_ZSR.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == f"error: volume file not found: {tmp_path / 'absent.nii.gz'}\n"


def _failing_reconstruct(error):
    def reconstruct(*args, **kwargs):
        raise error

    return reconstruct


@pytest.mark.parametrize("error,code", [(ValueError("bad late value"), 2), (RuntimeError("a bug"), None)])
def test_a_failing_run_leaves_an_incomplete_folder_without_recon(
    inputs, tmp_path, monkeypatch, capsys, error, code
):
    import algorithms

    monkeypatch.setattr(algorithms, "reconstruct", _failing_reconstruct(error))
    results = tmp_path / "results"
    argv = _flags(
        data=inputs["mri"], checkpoint_path=inputs["prior"], NFE=2, device="cpu", results_dir=results
    )
    if code is None:
        with pytest.raises(RuntimeError, match="a bug"):  # unexpected errors keep their traceback
            recon_MRI_ZSR.main(argv)
    else:
        assert recon_MRI_ZSR.main(argv) == code
        assert capsys.readouterr().err == f"error: {error}\n"
    (folder,) = _run_folders(results)
    assert not (folder / "recon.nii.gz").exists()
    assert (folder / "GT.nii.gz").exists()
    assert str(error) in (folder / MARKER).read_text()
    assert "run failed" in (folder / LOG_NAME).read_text()


def test_outputs_are_in_the_input_units_and_slices_in_file_order(inputs, tmp_path):
    """HU in, HU out (GT equals the input where nothing is resized or clamped), the NIfTI header says
    what each file holds, and --slice-begin/--slice-end count slices in the file's own order."""
    array, meta = read_volume(inputs["ct"])
    results = tmp_path / "results"
    argv = _flags(
        data=inputs["ct"], task="SVCT", degree=8, method="FDK", slice_begin=1, slice_end=4,
        device="cpu", results_dir=results, sirt_iter=1,
    )  # fmt: skip
    assert recon_CBCT.main(argv) == 0
    (folder,) = _run_folders(results)
    gt, gt_meta = read_volume(folder / "GT.nii.gz")
    # The input is RAS: reorientation to LPI reverses every axis, so file slices 1..3 come back reversed.
    expected = np.clip(array[1:4][::-1, ::-1, ::-1], -1000.0, 1600.0)
    np.testing.assert_allclose(gt, expected, atol=0.5)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(folder / "GT.nii.gz"))
    reader.ReadImageInformation()
    assert "HU" in reader.GetMetaData("descrip")
    assert float(reader.GetMetaData("cal_min")) == -1000.0 and float(reader.GetMetaData("cal_max")) == 1600.0
    reader.SetFileName(str(folder / "measurement.nii.gz"))
    reader.ReadImageInformation()
    assert reader.GetMetaData("descrip").startswith("projections")
    report = yaml.safe_load((folder / "metrics.json").read_text())
    assert "normalised" in report["intensity"]


def test_zsr_factor_counts_the_input_slices(tmp_path, capsys):
    """The factor groups the input's own z slices, also when the planes are resized: 32 slices of
    1.5 mm at factor 4 give 8 thick slices of 6 mm, whatever the prior's grid; a factor larger than
    the input's slices, or a 1-slice input, is refused before any folder exists."""
    volume = torch.rand(32, 12, 12, generator=torch.Generator().manual_seed(0))
    data = write_volume(tmp_path / "thin.pt", volume, {"spacing": (1.5, 1.5, 1.5)})
    results = tmp_path / "results"
    argv = _flags(data=data, method="A_dagger", degree=4, recon_size=64, device="cpu", results_dir=results)
    assert recon_MRI_ZSR.main(argv) == 0
    (folder,) = _run_folders(results)
    y, y_meta = read_volume(next(folder.glob("y.*")))
    assert y.shape[0] == 8
    np.testing.assert_allclose(y_meta["spacing"][2], 6.0, rtol=1e-6)
    recon, _ = read_volume(next(folder.glob("recon.*")))
    assert recon.shape[0] == 64
    for bad, message in (({"degree": 40}, "factor 40"), ({"data": None}, "at least 2 slices")):
        if bad.get("data", 0) is None:
            bad = {"data": write_volume(tmp_path / "one.pt", volume[:1], {"spacing": (1.5, 1.5, 1.5)})}
        argv = _flags(**{**dict(data=data, method="A_dagger", degree=4, recon_size=64, device="cpu",
                                results_dir=tmp_path / "refused"), **bad})  # fmt: skip
        capsys.readouterr()
        assert recon_MRI_ZSR.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
        assert not (tmp_path / "refused").exists()
