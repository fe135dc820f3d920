"""The command-line boundary: options -> RunSpec -> argv round trips, and nothing below it takes argparse."""

import argparse
import importlib
import inspect
import math
import pkgutil
from dataclasses import replace
from pathlib import Path

import pytest

from algorithms import NOISE_SOURCES
from algorithms.noise import NOISE_KNOBS
from recon.cli import spec_from_args, spec_options, to_argv
from recon.parser import build_parser, knob_option, parse_args
from recon.problems import CBCT_PROFILE, PROFILES, ZSR_PROFILE, CBCTProblem, ZSRProblem
from recon.specs import MethodSpec, NoiseSpec, OutputSpec, PriorSpec, RunSpec

ROOT = Path(__file__).resolve().parents[1]
# The packages whose functions must not take the parsed command line.
LIBRARY = ("recon", "algorithms", "physics", "models", "utils", "experiments")
# The boundary: the functions that turn a parsed command line into specifications or settings.
BOUNDARY = {("recon.cli", "spec_from_args"), ("experiments.iscs_eval", "options_from_args")}

ARGV = {
    "recon_CBCT.py": [
        "--task", "SVCT", "--degree", "30", "--method", "DDNM", "--data", "/data/ct.nii.gz",
        "--slice-begin", "2", "--slice-end", "9", "--recon-size", "64", "--sino-noise", "1e4",
        "--sirt-iter", "7", "--baseline-backend", "torch", "--NFE", "12", "--num-cg", "3",
        "--sigma-max", "80.5", "--noise-control", "iscs", "--noise-span", "0.25",
        "--renoise-method", "DDIM", "--use-init", "--config-path", "/c/model.yaml", "--slice-batch", "8",
        "--precision", "bf16", "--tv-weight", "0.003", "--admm-rho", "0.02", "--admm-iter", "9",
        "--device", "cpu", "--gpu", "1", "--seed", "3", "--results-dir", "/out", "--gif",
    ],
    "recon_MRI_ZSR.py": [
        "--degree", "3", "--method", "A_dagger", "--noise-control", "ar1", "--noise-corr-length", "inf",
        "--w-tik", "0.5", "--w-dz", "1e-05", "--sigma-min", "0.002", "--compile", "--save-intermediates",
        "--no-gif", "--device", "cpu",
    ],
}  # fmt: skip


@pytest.mark.parametrize("profile", [CBCT_PROFILE, ZSR_PROFILE], ids=lambda profile: profile.prog)
def test_argv_round_trip_gives_the_same_spec(profile):
    spec = spec_from_args(parse_args(profile, ARGV[profile.prog]))
    assert spec_from_args(parse_args(profile, to_argv(spec))) == spec
    defaults = spec_from_args(parse_args(profile, ["--device", "cpu"]))
    assert spec_from_args(parse_args(profile, to_argv(defaults))) == defaults


@pytest.mark.parametrize("profile", [CBCT_PROFILE, ZSR_PROFILE], ids=lambda profile: profile.prog)
def test_spec_options_are_the_parsed_options_in_the_parser_order(profile):
    args = parse_args(profile, ARGV[profile.prog])
    options = spec_options(spec_from_args(args))
    assert list(options.items()) == list(vars(args).items())


def test_degree_and_num_cg_map_to_named_fields():
    lact = spec_from_args(parse_args(CBCT_PROFILE, ["--task", "LACT", "--degree", "120", "--num-cg", "4"]))
    assert lact.problem == CBCTProblem(task="LACT", data=CBCT_PROFILE.data, arc_degrees=120)
    assert (lact.method.dc_cg_iters, lact.method.admm_cg_iters) == (4, 4)
    svct = spec_from_args(parse_args(CBCT_PROFILE, ["--task", "SVCT", "--degree", "20"]))
    assert (svct.problem.num_views, svct.problem.arc_degrees, svct.problem.parameter) == (20, None, 20)
    zsr = spec_from_args(parse_args(ZSR_PROFILE, ["--degree", "5"]))
    assert isinstance(zsr.problem, ZSRProblem) and zsr.problem.factor == 5
    assert not hasattr(zsr.problem, "sino_noise")


def test_spec_defaults_are_the_command_line_defaults():
    args = parse_args(ZSR_PROFILE, [])
    spec = spec_from_args(args)
    assert spec.method == MethodSpec()
    assert spec.noise == NoiseSpec()
    assert spec.prior == PriorSpec(checkpoint=ZSR_PROFILE.checkpoint)
    assert spec.output == OutputSpec()
    assert spec == RunSpec(spec.problem, spec.prior, device=args.device)


def test_specs_are_frozen_and_a_command_line_needs_one_cg_count():
    spec = spec_from_args(parse_args(ZSR_PROFILE, []))
    with pytest.raises(AttributeError):
        spec.method.nfe = 3
    odd = replace(spec, method=replace(spec.method, admm_cg_iters=7))
    with pytest.raises(ValueError, match="dc_cg_iters 5 and admm_cg_iters 7 differ"):
        to_argv(odd)
    with pytest.raises(ValueError, match=r"noise knobs \['pink'\] are not accepted"):
        to_argv(replace(spec, noise=NoiseSpec("iid", {"pink": 1.0})))


def test_every_noise_source_parameter_is_a_knob_with_an_option():
    parameters = {name for cls in NOISE_SOURCES.values() for name in inspect.signature(cls).parameters}
    assert parameters == set(NOISE_KNOBS)
    for profile in PROFILES.values():
        flags = {flag for action in build_parser(profile)._actions for flag in action.option_strings}
        assert {knob_option(knob) for knob in NOISE_KNOBS} <= flags
    spec = spec_from_args(parse_args(CBCT_PROFILE, ["--noise-corr-length", "2.5", "--noise-span", "0"]))
    assert spec.noise.knobs == {"span": 0.0, "corr_length": 2.5}
    assert math.isinf(
        spec_from_args(parse_args(ZSR_PROFILE, ARGV[ZSR_PROFILE.prog])).noise.knobs["corr_length"]
    )


def _library_modules():
    for package in LIBRARY:
        yield importlib.import_module(package)
        for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            try:
                yield importlib.import_module(info.name)
            except ModuleNotFoundError as error:
                # Kernel modules import their optional compiler at the top (the CPU build of torch has no Triton).
                if error.name != "triton":
                    raise


def _takes_the_command_line(function) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        "Namespace" in str(parameter.annotation)
        or (parameter.name == "args" and parameter.kind is not inspect.Parameter.VAR_POSITIONAL)
        for parameter in parameters
    )


def test_nothing_below_the_boundary_takes_an_argparse_namespace():
    offenders, boundary_seen = [], set()
    for module in _library_modules():
        for name, member in vars(module).items():
            if getattr(member, "__module__", None) != module.__name__:
                continue
            functions = [(name, member)] if inspect.isfunction(member) else []
            if inspect.isclass(member):
                functions += [
                    (f"{name}.{key}", value) for key, value in vars(member).items() if callable(value)
                ]
            for qualified, function in functions:
                if not _takes_the_command_line(function):
                    continue
                if (module.__name__, qualified) in BOUNDARY:
                    boundary_seen.add((module.__name__, qualified))
                else:
                    offenders.append(f"{module.__name__}.{qualified}")
    assert offenders == []
    # The check sees the boundary itself, so it would see an offender too.
    assert boundary_seen == BOUNDARY
    assert isinstance(parse_args(ZSR_PROFILE, []), argparse.Namespace)
