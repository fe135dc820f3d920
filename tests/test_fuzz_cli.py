"""Property-based fuzzing of both entry scripts' numeric and enum options.

Property: every command line is either accepted by everything the scripts check before they create
a results folder, or ends with exit code 2 and exactly one line on stderr that names a given option,
with no traceback and no folder. The scripts run in-process up to the point where the results folder
would be created (``recon.run._new_run_dir`` is replaced by a stop), so each case takes milliseconds;
a few cases run as real processes end to end to tie the in-process property to the scripts.
"""

import contextlib
import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import recon.run
import recon_CBCT
import recon_MRI_ZSR
from algorithms import admm_tv
from algorithms.sampler import get_sigmas
from physics.noise import noise_from_sino_noise
from recon.factory import SAMPLER_STEPS
from recon.parser import build_parser
from recon.problems import CBCT_PROFILE, ZSR_PROFILE
from test_entry import _flags, _run_folders, write_inputs
from utils.io import read_volume

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

INTEGER_TEXTS = st.one_of(
    st.sampled_from(
        ["0", "1", "2", "3", "4", "8", "16", "17", "360", "361", "2048", "2049", "100000", "100001",
         str(2**63 - 1), str(2**63), str(2**64), str(-(2**64)), str(2**70), "-1", "-0", "+5", "007"]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 40).map(str),
)  # fmt: skip
FLOAT_TEXTS = st.one_of(
    st.sampled_from(
        ["1e400", "-1e400", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "-0", "-0.0", "0x10",
         "1e300", "1e-400", "5e-324", "1e-300", "1e4", "10000.000001", "1e12", "1.0000001e12", "1_000",
         " 3 ", "", "abc", "\u0663", "1e", "0.01", "0.5", "100", "378", "none", "None"]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=1e-3, max_value=1e3).map(repr),
)  # fmt: skip
NUMBER_TEXTS = st.one_of(INTEGER_TEXTS, FLOAT_TEXTS)
# A small shared pool, so that equal and swapped --sigma-min/--sigma-max pairs come up often.
# Plane side of the copy on which an accepted run's method parts are built (the tiny prior's size).
SMALL = 16
SIGMA_TEXTS = st.one_of(st.sampled_from(["0.01", "1", "50", "378", "1e4", "1e-300", "5e-324"]), FLOAT_TEXTS)

NUMERIC_OPTIONS = {
    "--seed": INTEGER_TEXTS,
    "--sigma-min": SIGMA_TEXTS,
    "--sigma-max": SIGMA_TEXTS,
    "--NFE": INTEGER_TEXTS,
    "--num-cg": INTEGER_TEXTS,
    "--recon-size": INTEGER_TEXTS,
    "--degree": INTEGER_TEXTS,
    "--noise-corr-length": NUMBER_TEXTS,
    "--noise-span": NUMBER_TEXTS,
    "--slice-batch": INTEGER_TEXTS,
    "--slice-begin": INTEGER_TEXTS,
    "--slice-end": INTEGER_TEXTS,
    "--w-tik": NUMBER_TEXTS,
    "--w-dz": NUMBER_TEXTS,
    "--pinv-iter": INTEGER_TEXTS,
    "--pinv-min": NUMBER_TEXTS,
    "--tv-weight": NUMBER_TEXTS,
    "--admm-rho": NUMBER_TEXTS,
    "--admm-iter": INTEGER_TEXTS,
    "--gpu": INTEGER_TEXTS,
}
CBCT_NUMERIC_OPTIONS = {"--sino-noise": NUMBER_TEXTS, "--sirt-iter": INTEGER_TEXTS}


def _choices(flag: str, profile) -> list:
    action = next(a for a in build_parser(profile)._actions if flag in a.option_strings)
    return list(action.choices)


def _enum_options(profile) -> dict:
    flags = ["--task", "--method", "--noise-control", "--renoise-method", "--precision", "--pinv"]
    flags += ["--baseline-backend"] if profile is CBCT_PROFILE else []
    invalid = st.sampled_from(["", "dds", "SLERP ", "fp64", "LACT;", "\u00e9"])
    return {flag: st.sampled_from(_choices(flag, profile)) | invalid for flag in flags}


def _options(profile) -> dict:
    extra = CBCT_NUMERIC_OPTIONS if profile is CBCT_PROFILE else {}
    return {**NUMERIC_OPTIONS, **extra, **_enum_options(profile)}


@st.composite
def command_lines(draw, profile):
    """A few options of ``profile``'s script, each with a drawn value: [(flag, text), ...]."""
    options = _options(profile)
    flags = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=4, unique=True))
    return [(flag, draw(options[flag])) for flag in flags]


class FolderReached(Exception):
    """The run got past every check and was about to create its results folder."""

    def __init__(self, spec):
        super().__init__("results folder reached")
        self.spec = spec


def _stop_at_folder(spec, parent):
    raise FolderReached(spec)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def stop_at_folder():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recon.run, "_new_run_dir", _stop_at_folder)
        yield


def _base_argv(inputs, script, results: Path) -> list:
    data = inputs["ct"] if script is recon_CBCT else inputs["mri"]
    return _flags(data=data, checkpoint_path=inputs["prior"], device="cpu", results_dir=results)


def _validate(script, argv):
    """Run ``script`` in-process up to its results folder: (exit code or None, stderr, resolved spec)."""
    err, out = io.StringIO(), io.StringIO()
    code, spec = None, None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = script.main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        except FolderReached as reached:
            spec = reached.spec
    return code, err.getvalue(), spec


def _names(flag: str) -> tuple:
    """How an error message may name ``flag``: the option itself, or the problem parameter it sets."""
    parameters = {
        "--degree": ("--degree", "degree", "factor"),
        "--slice-begin": ("--slice-begin", "slice range"),
        "--slice-end": ("--slice-end", "slice range"),
    }
    return parameters.get(flag, (flag,))


def _check_late_stages(spec) -> None:
    """An accepted run's options also pass what the run builds from them after its folder exists:
    the noise levels, the projection noise, and the method's parts on a small copy of the volume."""
    if spec.method.name in SAMPLER_STEPS:
        sigmas = get_sigmas(spec.method.nfe, spec.prior.sigma_min, spec.prior.sigma_max).float()
        assert torch.isfinite(sigmas).all() and (sigmas.square() > 0).all(), spec.prior
    if hasattr(spec.problem, "sino_noise"):
        noise_from_sino_noise(spec.problem.sino_noise)
    problem = replace(spec.problem, recon_size=min(spec.problem.recon_size or SMALL, SMALL))
    gt, _, _, source_shape = problem.prepare(*read_volume(problem.data), torch.device("cpu"))
    op = problem.operator(gt, source_shape)
    if spec.method.name in SAMPLER_STEPS:
        SAMPLER_STEPS[spec.method.name](spec.method, op, op.A(gt))
    if spec.method.name == "ADMM-TV":
        admm_tv(op, op.A(gt), lam=spec.method.tv_weight, rho=spec.method.admm_rho, n_iter=0, n_cg=0)


def _check_property(script, options, inputs, results: Path) -> None:
    argv = _base_argv(inputs, script, results) + [token for pair in options for token in pair]
    code, err, spec = _validate(script, argv)
    assert "Traceback" not in err, err
    assert not results.exists(), f"{argv}: {results} was created"
    event("accepted" if spec is not None else "refused")
    if spec is not None:
        _check_late_stages(spec)
        return
    assert code == 2, (argv, code, err)
    assert err.count("\n") == 1 and err.endswith("\n"), (argv, err)
    named = [name for flag, _ in options for name in _names(flag) if name in err]
    assert named, (argv, err)


@FUZZ
@given(options=command_lines(CBCT_PROFILE))
@example(options=[("--seed", str(2**64))])
@example(options=[("--seed", str(-(2**64)))])
@example(options=[("--seed", str(2**70))])
@example(options=[("--sigma-max", "1e300")])
@example(options=[("--sigma-max", "inf")])
@example(options=[("--sino-noise", "1e308")])
@example(options=[("--recon-size", "100000")])
@example(options=[("--sigma-min", "50"), ("--sigma-max", "50")])
@example(options=[("--sigma-min", "378"), ("--sigma-max", "0.01")])
@example(options=[("--num-cg", "0")])
@example(options=[("--method", "DDNM"), ("--w-tik", "1")])
@example(options=[("--sigma-min", "5e-324")])
@example(options=[("--NFE", "0x10")])
@example(options=[("--method", "DDNM"), ("--pinv", "exact")])
@example(options=[("--method", "ADMM-TV"), ("--tv-weight", "0")])
@example(options=[("--method", "ADMM-TV"), ("--num-cg", "0")])
def test_cbct_options_are_accepted_or_refused_in_one_line(inputs, stop_at_folder, tmp_path, options):
    _check_property(recon_CBCT, options, inputs, tmp_path / "results")


@FUZZ
@given(options=command_lines(ZSR_PROFILE))
@example(options=[("--degree", "1")])
@example(options=[("--degree", "17")])
@example(options=[("--degree", "40")])
@example(options=[("--seed", "-1")])
@example(options=[("--noise-control", "ar1"), ("--noise-corr-length", "nan")])
@example(options=[("--noise-control", "ar1"), ("--noise-corr-length", "inf")])
@example(options=[("--sigma-min", "1e-400")])
def test_zsr_options_are_accepted_or_refused_in_one_line(inputs, stop_at_folder, tmp_path, options):
    _check_property(recon_MRI_ZSR, options, inputs, tmp_path / "results")


# ------------------------------------------------------------------ the real scripts, end to end


def _run_script(script: str, argv: list):
    return subprocess.run(
        [sys.executable, script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "script,options,fragment",
    [
        ("recon_CBCT.py", [("--seed", str(2**64))], "--seed"),
        ("recon_MRI_ZSR.py", [("--sigma-max", "1e300")], "--sigma-max"),
        ("recon_CBCT.py", [("--num-cg", "0")], "--num-cg"),
        ("recon_MRI_ZSR.py", [("--degree", "40")], "factor 40"),
    ],
)
def test_refused_options_end_to_end(inputs, tmp_path, script, options, fragment):
    module = recon_CBCT if script == "recon_CBCT.py" else recon_MRI_ZSR
    results = tmp_path / "results"
    argv = _base_argv(inputs, module, results) + [token for pair in options for token in pair]
    result = _run_script(script, argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not results.exists()
    assert _validate(module, argv)[0] == 2


def test_accepted_edge_options_end_to_end(inputs, tmp_path):
    """The largest seed, noise level and photon count accepted run to a complete folder."""
    results = tmp_path / "results"
    argv = _base_argv(inputs, recon_CBCT, results) + _flags(
        task="SVCT", degree=8, NFE=2, num_cg=1, sirt_iter=1, slice_begin=0, slice_end=4,
        seed=2**63 - 1, sigma_max="1e4", sino_noise="1e12",
    )  # fmt: skip
    result = _run_script("recon_CBCT.py", argv)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (folder,) = _run_folders(results)
    assert (folder / "recon.nii.gz").exists() and not (folder / "INCOMPLETE").exists()
    recon_volume, _ = read_volume(folder / "recon.nii.gz")
    assert np.isfinite(recon_volume).all()
