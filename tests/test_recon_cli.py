"""The shared parser: every option documented with its default, real booleans, range-checked values."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from recon.parser import build_parser, parse_args
from recon.problems import CBCT_PROFILE, ZSR_PROFILE

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_OPTIONS = [
    "--task",
    "--degree",
    "--method",
    "--data",
    "--slice-begin",
    "--slice-end",
    "--recon-size",
    "--NFE",
    "--num-cg",
    "--w-tik",
    "--w-dz",
    "--sigma-max",
    "--sigma-min",
    "--noise-control",
    "--noise-span",
    "--noise-corr-length",
    "--renoise-method",
    "--use-init",
    "--no-use-init",
    "--checkpoint-path",
    "--config-path",
    "--gpu",
    "--seed",
    "--results-dir",
    "--save-intermediates",
    "--slice-batch",
    "--precision",
    "--device",
    "--gif",
]
CBCT_ONLY = ["--sino-noise", "--sirt-iter", "--baseline-backend"]


@pytest.mark.parametrize("script,extra", [("recon_CBCT.py", CBCT_ONLY), ("recon_MRI_ZSR.py", [])])
def test_help_lists_every_option_with_its_default(script, extra):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    # One block per option: from its "  --name" line to the next option's line.
    blocks = {}
    for block in re.split(r"\n(?=  -)", result.stdout):
        names = re.findall(r"--[\w-]+", block.strip().split("\n")[0])
        blocks.update({name: " ".join(block.split()) for name in names})
    for option in REFERENCE_OPTIONS + extra:
        assert option in blocks, option
        assert "(default:" in blocks[option], option


def test_cbct_only_options_are_absent_from_zsr():
    options = {s for action in build_parser(ZSR_PROFILE)._actions for s in action.option_strings}
    assert not options & set(CBCT_ONLY)


def test_task_defaults_and_choices():
    cbct, zsr = parse_args(CBCT_PROFILE, []), parse_args(ZSR_PROFILE, [])
    assert (cbct.task, cbct.degree, cbct.method) == ("SVCT", 30, "DDS")
    assert (zsr.task, zsr.degree, zsr.method) == ("ZSR", 4, "DDS")
    assert isinstance(cbct.data, Path) and isinstance(cbct.checkpoint_path, Path)
    assert cbct.noise_control == "SLERP" and cbct.use_init is False and cbct.save_intermediates is False


def test_booleans_are_real_booleans():
    args = parse_args(CBCT_PROFILE, ["--use-init", "--save-intermediates", "--gif"])
    assert args.use_init is True and args.save_intermediates is True and args.gif is True
    assert parse_args(CBCT_PROFILE, ["--use-init", "--no-use-init"]).use_init is False


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--NFE", "0"], "--NFE: '0' is out of range"),
        (["--num-cg", "-1"], "--num-cg: '-1' is out of range"),
        (["--w-tik", "abc"], "--w-tik: 'abc' is not a number"),
        (["--sigma-max", "0"], "--sigma-max: '0' is out of range"),
        (["--method", "FDK"], "invalid choice: 'FDK'"),
        (["--noise-control", "pink"], "invalid choice: 'pink'"),
        (["--use-init", "yes"], "unrecognized arguments: yes"),
    ],
)
def test_bad_values_exit_with_code_2_and_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(ZSR_PROFILE, argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err
