"""The ISCS table (figures/make_iscs_figures.py) on a results file that mixes priors."""

import csv
import json

import pytest

from experiments import iscs_eval
from figures import make_iscs_figures
from utils.metrics import METRIC_KEYS

OLD, NEW = ("ct_phantom_128.pt", "111111111111"), ("ct_dr_128.pt", "222222222222")


def _record(volume, method, noise, seed, coronal, gap, checkpoint=None):
    case = iscs_eval.Case("SVCT-30", volume, method, noise, seed, "" if checkpoint is None else checkpoint[1])
    metrics = {key: 0.5 for key in METRIC_KEYS}
    metrics.update(psnr_axial=35.0, psnr_coronal=coronal, psnr_sagittal=coronal, abs_delta=gap)
    name, digest = checkpoint or (None, None)
    return {
        "key": case.key,
        **vars(case),
        "prior": None if checkpoint is None else "ct",
        "checkpoint": name,
        "checkpoint_sha256": digest,
        "metrics": metrics,
        "seconds": 1.0,
        "settings": {"depth": 8},
    }


def test_table_has_one_block_per_problem_and_prior(tmp_path, capsys):
    records = [
        # The old prior on volumes 1 and 2, the new one on volume 1 only; FDK on volumes 1, 2 and 3.
        _record(1, "DDS", "iid", 0, 30.0, 0.010, OLD),
        _record(1, "DDS", "iscs", 0, 31.0, 0.005, OLD),
        _record(2, "DDS", "iid", 0, 32.0, 0.010, OLD),
        _record(2, "DDS", "iscs", 0, 33.0, 0.005, OLD),
        _record(1, "DDS", "iid", 0, 34.0, 0.008, NEW),
        _record(1, "DDS", "iscs", 0, 37.0, 0.002, NEW),
        _record(1, "DDS", "iscs", 1, 37.0, 0.002, NEW),
        _record(1, "FDK", "none", 0, 20.0, 0.020),
        _record(2, "FDK", "none", 0, 22.0, 0.020),
        _record(3, "FDK", "none", 0, 24.0, 0.020),
    ]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert make_iscs_figures.main(["--results", str(results), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "iscs_table.md").read_text()
    assert table in printed
    old, new = "ct_phantom_128-111111111111", "ct_dr_128-222222222222"
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| SVCT-30")]
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("ct_dr_128-222222222222", "FDK", "1"),
        ("ct_dr_128-222222222222", "DDS", "1"),
        ("ct_dr_128-222222222222", "DDS+ISCS", "2"),
        ("ct_phantom_128-111111111111", "FDK", "2"),
        ("ct_phantom_128-111111111111", "DDS", "2"),
        ("ct_phantom_128-111111111111", "DDS+ISCS", "2"),
        ("-", "FDK", "1"),
    ]
    by_block = {(row[1], row[2]): row for row in rows}
    # Classical rows cover the block's volumes only: FDK on volume 1 (new) and volumes 1, 2 (old).
    assert by_block[(new, "FDK")][5] == "20.00" and by_block[(old, "FDK")][5] == "21.00 ± 1.41"
    # ISCS rows: ISCS minus i.i.d. PSNR a/c/s, abs_delta ratio, pairs run both ways.
    assert by_block[(new, "DDS+ISCS")][-5:-2] == ["+0.00/+3.00/+3.00", "0.25", "1"]
    assert by_block[(old, "DDS+ISCS")][-5:-2] == ["+0.00/+1.00/+1.00", "0.50", "2"]
    assert by_block[(new, "DDS")][-5:-2] == ["", "", ""]
    assert f"SVCT-30 DDS, prior {new} (target): axial +0.00 dB" in table
    assert f"SVCT-30 DDS, prior {old} (target): axial +0.00 dB" in table
    with (tmp_path / "iscs_table.csv").open() as handle:
        table_rows = {(r["prior"], r["method"]): r for r in csv.DictReader(handle)}
    assert float(table_rows[(new, "DDS+ISCS")]["iscs_minus_iid_psnr_coronal"]) == pytest.approx(3.0)
    assert table_rows[(old, "DDS+ISCS")]["n_pairs"] == "2" and table_rows[(old, "DDS")]["n"] == "2"
    assert float(table_rows[(old, "DDS")]["psnr_coronal_mean"]) == pytest.approx(31.0)
