"""Signals stop a run like Ctrl-C, and out-of-range options are refused before any folder exists."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import recon_CBCT
from recon.results import LOG_NAME, MARKER
from tests.test_entry import ct_phantom_hu
from utils.io import write_volume

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_signal_stops_the_run_with_128_plus_n(tmp_path, name, code):
    data = write_volume(tmp_path / "ct.nii.gz", ct_phantom_hu(), {"spacing": (1.0, 1.0, 1.0)})
    results = tmp_path / "results"
    argv = ["--data", data, "--method", "ADMM-TV", "--admm-iter", "100000", "--device", "cpu",
            "--results-dir", results]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "recon_CBCT.py", *map(str, argv)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    log = None
    while time.monotonic() < deadline and process.poll() is None:
        logs = list(results.rglob(LOG_NAME))
        if logs and "reconstruction (ADMM-TV) ..." in logs[0].read_text():
            log = logs[0]
            break
        time.sleep(0.1)
    assert log is not None, "the reconstruction did not start"
    process.send_signal(getattr(signal, name))
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert err == f"error: stopped by {name}; a results folder already made stays marked INCOMPLETE\n"
    assert f"stopped by {name}" in (log.parent / MARKER).read_text()
    assert not (log.parent / "recon.nii.gz").exists()


def test_ctrl_c_while_importing_exits_130_quietly():
    # -X importtime reports each finished import on stderr: torch._utils is done long before torch is.
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "recon_CBCT.py", "--help"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in process.stderr:
        if line.split("|")[-1].strip() == "torch._utils":
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "option,value,accepted",
    [
        ("--seed", "-1", "an integer in [0, 2^63)"),
        ("--seed", str(2**63), "an integer in [0, 2^63)"),
        ("--sigma-max", "nan", "a number in [1e-06, 10000]"),
        ("--sigma-min", "2e4", "a number in [1e-06, 10000]"),
        ("--sino-noise", "-1", "a number in [0, 1e+12]"),
        ("--sino-noise", "inf", "a number in [0, 1e+12]"),
        ("--recon-size", "4096", "an integer in [1, 2048]"),
        ("--NFE", "100001", "an integer in [1, 100000]"),
        ("--w-tik", "inf", "a number >= 0"),
        ("--noise-corr-length", "nan", "a number >= 0 or inf"),
    ],
)
def test_out_of_range_options_are_one_line_errors(tmp_path, capsys, option, value, accepted):
    with pytest.raises(SystemExit) as exit_info:
        recon_CBCT.main([option, value, "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"recon_CBCT.py: error: argument {option}: '{value}'") and accepted in err
    assert not (tmp_path / "r").exists()


def test_sigma_min_must_be_below_sigma_max(capsys):
    with pytest.raises(SystemExit):
        recon_CBCT.main(["--sigma-min", "5", "--sigma-max", "1"])
    assert "--sigma-min: 5 is not below --sigma-max 1" in capsys.readouterr().err


def test_no_signal_handler_outlives_main(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    recon_CBCT.main(["--data", str(tmp_path / "absent.nii.gz"), "--method", "FDK", "--device", "cpu"])
    assert signal.getsignal(signal.SIGTERM) is before
