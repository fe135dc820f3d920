"""The boundary between the command line and the library: parsed options <-> ``RunSpec`` <-> argv.

:func:`spec_from_args` turns the parser's options into a :class:`~recon.specs.RunSpec` once:
``--degree`` becomes the problem's named parameter (``arc_degrees``, ``num_views``, ``factor``) and
``--num-cg`` the two CG counts it feeds (DDS/DDNM data consistency, ADMM-TV x-updates). Nothing
below this module reads or writes an argparse object. :func:`spec_options` gives a spec's values
back under the option names (what ``args.yaml`` records), and :func:`to_argv` renders a spec as the
command line of its entry script (what the evidence experiment launches); parsing that command
line gives the same spec.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, List

from algorithms.noise import NOISE_KNOBS
from recon.parser import ScriptProfile, build_parser, knob_dest
from recon.problems import PROFILES
from recon.specs import MethodSpec, NoiseSpec, OutputSpec, PriorSpec, RunSpec


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The run specification of parsed options (``recon.parser.parse_args``)."""
    profile = PROFILES[args.task]
    problem = profile.problem(
        task=args.task,
        data=args.data,
        slice_begin=args.slice_begin,
        slice_end=args.slice_end,
        recon_size=args.recon_size,
        **{profile.problem.PARAMETERS[args.task]: args.degree},
        **{name: getattr(args, name) for name in profile.extra_fields},
    )
    method = MethodSpec(
        name=args.method,
        nfe=args.NFE,
        dc_cg_iters=args.num_cg,
        w_tik=args.w_tik,
        w_dz=args.w_dz,
        renoise=args.renoise_method,
        use_init=args.use_init,
        tv_weight=args.tv_weight,
        admm_rho=args.admm_rho,
        admm_iter=args.admm_iter,
        admm_cg_iters=args.num_cg,
        pinv=args.pinv,
        pinv_iter=args.pinv_iter,
        pinv_min=args.pinv_min,
    )
    knobs = {knob: getattr(args, knob_dest(knob)) for knob in NOISE_KNOBS}
    noise = NoiseSpec(args.noise_control, {knob: value for knob, value in knobs.items() if value is not None})
    prior = PriorSpec(
        checkpoint=args.checkpoint_path,
        config=args.config_path,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
        precision=args.precision,
        compile=args.compile,
        slice_batch=args.slice_batch,
        trust=args.trust_checkpoint,
    )
    output = OutputSpec(
        results_dir=args.results_dir, save_intermediates=args.save_intermediates, gif=args.gif
    )
    return RunSpec(problem, prior, method, noise, output, device=args.device, gpu=args.gpu, seed=args.seed)


def _option_values(spec: RunSpec, profile: ScriptProfile) -> Dict[str, Any]:
    """The spec's values by option name (the parser's ``dest``); None for an option left at None."""
    problem, method, prior, output = spec.problem, spec.method, spec.prior, spec.output
    if method.dc_cg_iters != method.admm_cg_iters:
        raise ValueError(
            f"dc_cg_iters {method.dc_cg_iters} and admm_cg_iters {method.admm_cg_iters} differ; "
            "accepted: equal counts (the command line's --num-cg sets both)"
        )
    unknown = sorted(set(spec.noise.knobs) - set(NOISE_KNOBS))
    if unknown:
        raise ValueError(f"noise knobs {unknown} are not accepted; accepted: {', '.join(NOISE_KNOBS)}")
    return {
        "task": problem.task,
        "degree": problem.parameter,
        "method": method.name,
        "data": problem.data,
        "slice_begin": problem.slice_begin,
        "slice_end": problem.slice_end,
        "recon_size": problem.recon_size,
        **{name: getattr(problem, name) for name in profile.extra_fields},
        "NFE": method.nfe,
        "num_cg": method.dc_cg_iters,
        "w_tik": method.w_tik,
        "w_dz": method.w_dz,
        "sigma_max": prior.sigma_max,
        "sigma_min": prior.sigma_min,
        "noise_control": spec.noise.source,
        **{knob_dest(knob): spec.noise.knobs.get(knob) for knob in NOISE_KNOBS},
        "renoise_method": method.renoise,
        "use_init": method.use_init,
        "checkpoint_path": prior.checkpoint,
        "config_path": prior.config,
        "slice_batch": prior.slice_batch,
        "precision": prior.precision,
        "compile": prior.compile,
        "trust_checkpoint": prior.trust,
        "pinv": method.pinv,
        "pinv_iter": method.pinv_iter,
        "pinv_min": method.pinv_min,
        "tv_weight": method.tv_weight,
        "admm_rho": method.admm_rho,
        "admm_iter": method.admm_iter,
        "device": spec.device,
        "gpu": spec.gpu,
        "seed": spec.seed,
        "results_dir": output.results_dir,
        "save_intermediates": output.save_intermediates,
        "gif": output.gif,
    }


def _options(profile: ScriptProfile) -> List[argparse.Action]:
    return [action for action in build_parser(profile)._actions if action.dest != "help"]


def spec_options(spec: RunSpec) -> Dict[str, Any]:
    """The options that parse into ``spec``, by option name in the parser's order (``args.yaml``)."""
    profile = PROFILES[spec.problem.task]
    values = _option_values(spec, profile)
    return {action.dest: values[action.dest] for action in _options(profile)}


def to_argv(spec: RunSpec) -> List[str]:
    """The command line that runs ``spec`` with its entry script (``PROFILES[task].prog``).

    Every option is written out (the defaults too, so that the line does not depend on the
    machine's default device); options whose value is None are left at their default None.
    """
    profile = PROFILES[spec.problem.task]
    values = _option_values(spec, profile)
    argv: List[str] = []
    for action in _options(profile):
        value = values[action.dest]
        if value is None and action.default is None:
            continue
        if value is None:
            # An option that can be unset away from its default (--pinv-min) takes the word "none".
            argv += [action.option_strings[0], "none"]
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(action.option_strings[0 if value else 1])
        else:
            argv += [action.option_strings[0], str(value)]
    return argv
