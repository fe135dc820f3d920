"""The ISCS evidence experiment (experiments/iscs_eval.py) and its figure script, on CPU at toy size.

A tiny random NCSN++ stands in for both priors and a synthetic head for the MNI152 template;
volumes are 4 x 16 x 16 (CT) and 16^3 (MRI), NFE 2.
"""

import json
import math

import numpy as np
import pytest
import torch
from test_entry import export_tiny_prior, tiny_config

from algorithms import Ar1Noise, IidNoise, IscsNoise
from experiments import iscs_eval
from figures import make_iscs_figures
from recon.specs import NoiseSpec
from utils.io import read_volume, write_volume
from utils.metrics import METRIC_KEYS, volume_metrics

TOY = ["--device", "cpu", "--size", "16", "--depth", "4", "--nfe", "2", "--admm-iter", "2"]
TOY += ["--phantoms", "1", "--brains", "1", "--seeds", "1"]
SVCT_PAIR = "SVCT-30/*/DDS/i*/seed0/*"
ZSR_IID = "ZSR-4/*/DDS/iid/seed0/*"
SVCT_TV = "SVCT-30/*/DDS+TV/*"


def synthetic_template(path):
    """A head-sized ellipsoid with structure along every axis, on the MNI152 template's 1 mm grid."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (189, 233, 197)), indexing="ij", sparse=True)
    head = (x**2 + y**2 + z**2 < 0.8) * (120 + 100 * np.sin(6 * z) * np.cos(4 * x) * np.cos(3 * y))
    meta = {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}
    return write_volume(path, head.astype(np.uint8), meta)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Command-line flags of a toy experiment in ``tmp_path`` (results mirrored to tmp_path/out)."""
    prior = export_tiny_prior(tmp_path / "tiny.pt", tiny_config())
    template = synthetic_template(tmp_path / "template.pt")
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    paths = ["--ct-checkpoint", prior, "--mri-checkpoint", prior, "--mri-template", template]
    paths += ["--tuning", tmp_path / "tuning.json", "--results", tmp_path / "results.jsonl"]
    paths += ["--cache", tmp_path / "cache"]
    return tmp_path, TOY + [str(p) for p in paths]


def _tag(folder):
    """The key tag of the toy prior."""
    prior = folder / "tiny.pt"
    return iscs_eval.prior_tag(prior, iscs_eval.checkpoint_hash(prior))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tune_evaluate_resume(toy, capsys, monkeypatch):
    folder, flags = toy
    flags = flags + ["--harness"]
    results = folder / "results.jsonl"
    cases = ["--only", SVCT_PAIR, ZSR_IID, SVCT_TV]
    tag = _tag(folder)

    # Without a tuning file, everything but the tuned methods runs: records with every metric,
    # mirrored to $OUT, and the figure cases' volumes saved there.
    assert iscs_eval.main(flags + cases) == 0
    assert "1 of them need tuned weights" in capsys.readouterr().out
    records = _lines(results)
    assert [r["key"] for r in records] == [
        f"SVCT-30/phantom-1000001/DDS/iid/seed0/{tag}",
        f"SVCT-30/phantom-1000001/DDS/iscs/seed0/{tag}",
        f"ZSR-4/mri-1000001/DDS/iid/seed0/{tag}",
    ]
    assert {(r["checkpoint"], r["checkpoint_sha256"], r["precision"]) for r in records} == {
        ("tiny.pt", tag.split("-")[-1], "fp32")
    }
    assert [r["label"] for r in records] == ["DDS", "DDS+ISCS", "DDS"]
    for record in records:
        assert set(METRIC_KEYS) | {"abs_delta_slices"} <= set(record["metrics"])
        assert record["settings"]["nfe"] == 2 and record["seconds"] > 0 and record["device"]
    assert records[0]["metrics"] != records[1]["metrics"]
    assert (folder / "out" / "results.jsonl").read_text() == results.read_text()
    gt, recon = (
        torch.load(folder / "out" / f"{name}.pt", weights_only=True)["volume"].float()
        for name in ("phantom-1000001__GT", f"SVCT-30__phantom-1000001__DDS__iscs__seed0__{tag}")
    )
    assert volume_metrics(recon, gt)["psnr"] == pytest.approx(records[1]["metrics"]["psnr"], abs=0.05)

    # Tuning picks, per tuned method, the grid weight with the best validation PSNR.
    assert iscs_eval.main(flags + ["--tune", "--problems", "SVCT-30"]) == 0
    tuning = json.loads((folder / "tuning.json").read_text())
    for method, (name, grid) in iscs_eval.TUNED.items():
        scores = tuning["scores_volume_psnr"]["SVCT-30"][method]
        assert [float(w) for w in scores] == list(grid)
        assert scores[str(tuning[name]["SVCT-30"])] == max(scores.values())
    assert tuning["validation_volumes"]["phantom"] == f"phantom-{iscs_eval.VALIDATION_SEED}"
    assert json.loads((folder / "out" / "tuning.json").read_text()) == tuning

    # Now the tuned case runs too, with the tuned weight, after the records already there.
    assert iscs_eval.main(flags + cases) == 0
    records = _lines(results)
    assert [r["key"] for r in records[3:]] == [f"SVCT-30/phantom-1000001/DDS+TV/iid/seed0/{tag}"]
    assert records[3]["weight"] == tuning["w_dz"]["SVCT-30"]

    # A rerun skips what is there: no method runs and the file stays as it was.
    before = results.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(iscs_eval.Evaluation, "run", lambda *args: pytest.fail("a case ran"))
        assert iscs_eval.main(flags + cases) == 0
        assert "4 already in" in capsys.readouterr().out
        # No time left: the budget stops before the first case.
        assert iscs_eval.main(flags + ["--only", "SVCT-30/*/DDS/shared/*", "--max-minutes", "0"]) == 0
        assert "stopping" in capsys.readouterr().out
        with pytest.raises(ValueError, match="made with settings"):
            iscs_eval.main(flags + ["--nfe", "3"])
    assert results.read_bytes() == before

    # Same seed, same reconstruction: a second results file gets identical metrics.
    again = folder / "again.jsonl"
    assert iscs_eval.main(flags + ["--only", "SVCT-30/*/DDS/iscs/seed0/*", "--results", str(again)]) == 0
    assert _lines(again)[0]["metrics"] == records[1]["metrics"]


def test_harness_and_user_path_give_the_same_metrics(toy):
    folder, flags = toy
    cases = ["--only", "SVCT-30/*/DDS/iscs/seed0/*", "LACT-100/*/DDNM/iid/seed0/*"]
    cases += ["ZSR-4/*/A_dagger/none/seed0"]
    assert iscs_eval.main(flags + cases + ["--harness"]) == 0
    user = folder / "user.jsonl"
    assert iscs_eval.main(flags + cases + ["--results", str(user), "--workers", "2"]) == 0
    harness_records = {record["key"]: record for record in _lines(folder / "results.jsonl")}
    user_records = {record["key"]: record for record in _lines(user)}
    assert sorted(user_records) == sorted(harness_records) and len(user_records) == 3
    for key, record in user_records.items():
        assert (record["runner"], harness_records[key]["runner"]) == ("entry script", "harness")
        assert record["metrics"] == harness_records[key]["metrics"], key
        for field in ("pinv", "precision", "checkpoint_sha256"):
            assert record[field] == harness_records[key][field], (key, field)
    # DDNM on CT runs with the problem's default pseudo-inverse, SIRT, on both paths.
    assert {key.split("/")[2]: record["pinv"] for key, record in user_records.items()} == {
        "DDS": None, "DDNM": "sirt", "A_dagger": None
    }
    # Each volume is written once, in HU for CT, and both ways read it from there.
    files = sorted(path.name for path in (folder / "cache").iterdir())
    assert files == ["mri-1000001_16x16x16_cpu_template.nii.gz", "phantom-1000001_4x16x16_cpu.nii.gz"]
    hu, _ = read_volume(folder / "cache" / files[1])
    assert hu.min() <= -900 and hu.max() > 1
    with pytest.raises(ValueError, match="--workers 2: the harness runs one case at a time"):
        iscs_eval.main(flags + ["--harness", "--workers", "2"])


def test_queue_order_and_coverage():
    phantoms, brains, seeds = [11, 12, 13], [21, 22], range(3)
    volumes = {"SVCT-30": phantoms, "LACT-100": phantoms, "ZSR-4": brains}
    queue = iscs_eval.case_queue(volumes, seeds, priority="paper")
    keys = [case.key for case in queue]
    assert len(keys) == len(set(keys))
    first = [(c.problem, c.method) for c in queue[:48]]
    assert first == [("SVCT-30", "DDS")] * 18 + [("LACT-100", "DDNM")] * 18 + [("ZSR-4", "DDS")] * 12
    assert [(c.noise, c.seed, c.volume) for c in queue[:4]] == [
        ("iid", 0, 11),
        ("iscs", 0, 11),
        ("iid", 0, 12),
        ("iscs", 0, 12),
    ]
    present = {(c.problem, c.volume, c.method, c.noise, c.seed) for c in queue}
    for problem, problem_volumes in volumes.items():
        classical = iscs_eval.PROBLEMS[problem].classical
        for volume in problem_volumes:
            for method in ("DDS", "DDNM"):
                assert {(problem, volume, method, n, s) for n in ("iid", "iscs") for s in seeds} <= present
            for method, noise in (
                (classical, "none"),
                ("ADMM-TV", "none"),
                ("DDS+TV", "iid"),
                ("DDS", "shared"),
            ):
                assert (problem, volume, method, noise, 0) in present
    knob = {("SVCT-30", phantoms[0], "DDS", n, s) for n in iscs_eval.KNOB_NOISES for s in seeds}
    assert knob <= present
    # The knob's new cases (5 AR(1) settings per seed, shared for the seeds after the first) come last.
    assert all(c.noise.startswith(("ar1", "shared")) for c in queue[-17:])
    assert not queue[-18].noise.startswith(("ar1", "shared"))


def test_noise_specs_and_labels():
    assert iscs_eval.noise_spec("ar1-16") == NoiseSpec("ar1", {"corr_length": 16.0})
    assert iscs_eval.make_noise_source("iid") == IidNoise()
    assert iscs_eval.make_noise_source("iscs-0.5") == IscsNoise(span=0.5)
    assert iscs_eval.make_noise_source("ar1-16") == Ar1Noise(corr_length=16.0)
    for bad, message in (
        ("iid-3", "only iscs, ar1 take"),
        ("ar1-long", "must be a number"),
        ("pink", "unknown"),
    ):
        with pytest.raises(ValueError, match=message):
            iscs_eval.make_noise_source(bad)
    assert [iscs_eval.label(m, n) for m, n in (("DDS", "iid"), ("DDNM", "iscs"), ("FDK", "none"))] == [
        "DDS",
        "DDNM+ISCS",
        "FDK",
    ]
    assert iscs_eval.label("DDS", "ar1-64") == "DDS+AR1(64)"


def _record(problem, volume, method, noise, seed, coronal, axial, gap, seconds=2.0):
    case = iscs_eval.Case(problem, volume, method, noise, seed)
    metrics = {key: 0.5 for key in METRIC_KEYS}
    metrics.update(psnr_coronal=coronal, psnr_sagittal=coronal + 1.0, psnr_axial=axial, abs_delta=gap)
    metrics["abs_delta_slices"] = gap
    settings = {"depth": 8}
    return {"key": case.key, **vars(case), "metrics": metrics, "seconds": seconds, "settings": settings}


def test_figures_from_synthetic_results(tmp_path):
    records = [
        _record("SVCT-30", 1, "DDS", "iid", 0, 30.0, 35.0, 0.010),
        _record("SVCT-30", 2, "DDS", "iid", 0, 32.0, 35.0, 0.010),
        _record("SVCT-30", 1, "DDS", "iscs", 0, 33.0, 34.8, 0.004),
        _record("SVCT-30", 2, "DDS", "iscs", 0, 35.0, 34.8, 0.004),
        _record("SVCT-30", 1, "DDS", "ar1-4", 0, 31.0, 35.0, 0.008),
        _record("SVCT-30", 1, "FDK", "none", 0, 20.0, 21.0, 0.020, seconds=0.5),
    ]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    volumes = tmp_path / "volumes"
    grid = torch.linspace(0.3, 0.5, 8 * 12 * 12).reshape(8, 12, 12)
    for key, volume in (
        ("phantom-1/GT", grid),
        (records[0]["key"], grid + 0.01),
        (records[2]["key"], grid),
    ):
        iscs_eval.save_volume(volumes, iscs_eval.volume_file_name(key), volume, key)

    assert (
        make_iscs_figures.main(["--results", str(results), "--volumes", str(volumes), "--out", str(tmp_path)])
        == 0
    )
    table = (tmp_path / "iscs_table.md").read_text()
    rows = {line.split(" | ")[2]: line for line in table.splitlines() if line.startswith("| SVCT-30")}
    assert list(rows) == ["FDK", "DDS", "DDS+ISCS"]
    # Coronal PSNR 30 and 32: mean 31, sample std sqrt(2); the paper's DDS numbers sit beside them.
    assert "| 31.00 ± 1.41 | 32.00 ± 1.41 |" in rows["DDS"] and "34.76/35.12/35.33 | 0.0056" in rows["DDS"]
    assert "| 20.00 | 21.00 |" in rows["FDK"]
    assert "coronal +1.5 dB: +3.00 dB, met" in table
    assert "abs_delta at most halved: ratio 0.40, met" in table
    assert "axial not worse than -0.1 dB: -0.20 dB, missed" in table
    assert f"| ar1-4 | {math.exp(-0.25):.5f} | 1 | 31.00 |" in table
    with (tmp_path / "iscs_table.csv").open() as handle:
        csv_rows = {tuple(line.split(",")[:3]): line.split(",") for line in handle.read().splitlines()[1:]}
    assert ("SVCT-30", "untagged", "DDS+AR1(4)") in csv_rows
    assert float(csv_rows[("SVCT-30", "untagged", "DDS")][6]) == pytest.approx(31.0)
    assert float(csv_rows[("SVCT-30", "untagged", "DDS")][7]) == pytest.approx(math.sqrt(2), rel=1e-6)
    panels = make_iscs_figures.slice_panels(make_iscs_figures.load_volumes(volumes))
    assert [(problem, [name for name, _, _ in recons]) for problem, _, recons in panels] == [
        ("SVCT-30", ["DDS", "DDS+ISCS"])
    ]
    assert (tmp_path / "iscs_knob.png").stat().st_size > 0 and (
        tmp_path / "iscs_slices.png"
    ).stat().st_size > 0
    # The ISCS neighbour correlation is cos of the angle step between adjacent slices.
    step = math.pi / 2 * 16 / (16 * 8 + 1)
    assert make_iscs_figures.neighbour_correlation("iscs", 8) == pytest.approx(math.cos(step))


def test_results_file_skips_cut_off_lines(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    iscs_eval.append_record(path, {"key": "a"})
    with path.open("a") as handle:
        handle.write('{"key": "b", "metr')
    iscs_eval.append_record(path, {"key": "c"})
    assert [r["key"] for r in iscs_eval.read_records(path)] == ["a", "c"]
    assert "lines [2] are cut off" in capsys.readouterr().err
