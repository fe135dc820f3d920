"""The factory and the problems: one registry of methods, specs resolved into new specs, explicit baselines."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import algorithms
from recon import factory
from recon.factory import Measured
from recon.problems import PROBLEMS, PROFILES, Baselines, CBCTProblem, ZSRProblem
from recon.specs import MethodSpec, NoiseSpec, PriorSpec, RunSpec


def _config(sigma_min=0.01, sigma_max=50.0, image_size=16, levels=2):
    model = SimpleNamespace(sigma_min=sigma_min, sigma_max=sigma_max, ch_mult=[1] * levels)
    return SimpleNamespace(model=model, data=SimpleNamespace(image_size=image_size))


def _zsr_run(gen, **method):
    """A ZSR problem on a random 6 x 1 x 8 x 8 stack, measured, with a resolved spec."""
    problem = ZSRProblem(task="ZSR", data=Path("volume.nii.gz"), factor=2)
    gt = torch.rand(6, 1, 8, 8, generator=gen)
    op = problem.operator(gt)
    spec = RunSpec(
        problem, PriorSpec(Path("prior.pt")), MethodSpec(**method), NoiseSpec("iscs", {"span": 0.5})
    )
    return factory.resolve(spec, _config(image_size=8)), Measured(problem, gt, op, op.A(gt))


class ShrinkingDenoiser:
    """x0 = x / (1 + sigma^2): the exact denoiser of a standard normal prior."""

    def __call__(self, x, sigma):
        return x / (1.0 + sigma**2)


def test_resolve_fills_the_config_defaults_into_a_new_spec():
    problem = ZSRProblem(task="ZSR", data=Path("v.nii.gz"), factor=4)
    spec = RunSpec(problem, PriorSpec(Path("p.pt"), sigma_max=20.0))
    resolved = factory.resolve(spec, _config())
    assert (resolved.prior.sigma_min, resolved.prior.sigma_max, resolved.problem.recon_size) == (
        0.01,
        20.0,
        16,
    )
    assert spec.prior.sigma_min is None and spec.problem.recon_size is None
    assert factory.resolve(spec, None) is spec
    with pytest.raises(ValueError, match="--recon-size 10: the prior's network halves the planes 2 times"):
        factory.resolve(replace(spec, problem=replace(problem, recon_size=10)), _config(levels=3))
    with pytest.raises(ValueError, match="--sigma-max 0.001 must exceed --sigma-min 0.01"):
        factory.resolve(replace(spec, prior=PriorSpec(Path("p.pt"), sigma_max=0.001)), _config())


def test_noise_knobs_are_checked_against_the_source():
    assert factory.make_noise_source(NoiseSpec("SLERP", {"span": 0.5})) == algorithms.IscsNoise(span=0.5)
    with pytest.raises(ValueError, match="--noise-corr-length 3: --noise-control BCS has no such knob; "):
        factory.make_noise_source(NoiseSpec("BCS", {"corr_length": 3.0}))


def test_sampler_methods_run_the_algorithms_sampler_bitwise(gen):
    spec, measured = _zsr_run(gen, name="DDS", nfe=3, dc_cg_iters=2, w_tik=0.1)
    denoiser = ShrinkingDenoiser()
    got = factory.reconstruct(
        spec,
        measured,
        generator=torch.Generator().manual_seed(4),
        denoiser=denoiser,
        sampler=factory.sampler_config(spec),
    )
    step = algorithms.ConsistencyStep(algorithms.DDSConsistency(measured.op, measured.y, num_cg=2, w_tik=0.1))
    config = algorithms.SamplerConfig(3, 0.01, 50.0, "DDS", algorithms.IscsNoise(span=0.5))
    expected = algorithms.reconstruct(
        denoiser, step, (6, 1, 8, 8), config, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(got, expected)


def test_use_init_starts_from_the_main_baseline(gen):
    spec, measured = _zsr_run(gen, name="DDNM", nfe=2, use_init=True)
    seen = []

    def denoiser(x, sigma):
        seen.append(x.clone())
        return x

    sampler = factory.sampler_config(spec)
    factory.reconstruct(
        spec, measured, generator=torch.Generator().manual_seed(1), denoiser=denoiser, sampler=sampler
    )
    start = sampler.noise((6, 1, 8, 8), torch.Generator().manual_seed(1)) * 50.0
    assert torch.allclose(seen[0], start + measured.baselines.main_stack, atol=1e-5)
    with pytest.raises(
        ValueError, match="w_tik and w_dz apply to method 'DDS' only, got w_tik=0.5, w_dz=0.0"
    ):
        factory.SAMPLER_STEPS["DDNM"](MethodSpec(w_tik=0.5), measured.op, measured.y)


def test_solvers_and_baseline_methods(gen):
    spec, measured = _zsr_run(gen, name="ADMM-TV", tv_weight=0.01, admm_rho=0.1, admm_iter=2, admm_cg_iters=3)
    expected = algorithms.admm_tv(measured.op, measured.y, lam=0.01, rho=0.1, n_iter=2, n_cg=3)
    assert torch.equal(factory.reconstruct(spec, measured, generator=gen), expected)
    baseline = factory.reconstruct(replace(spec, method=MethodSpec("A_dagger")), measured, generator=gen)
    assert baseline is measured.baselines.stacks["ATy"]
    with pytest.raises(ValueError, match="method 'FDK' returns no baseline here; accepted: A_dagger"):
        factory.reconstruct(replace(spec, method=MethodSpec("FDK")), measured, generator=gen)


def test_baselines_name_their_main_and_method_stacks():
    stack = torch.zeros(2, 1, 3, 3)
    with pytest.raises(ValueError, match=r"Baselines: \['SIRT'\] name no stack; accepted: FBP"):
        Baselines({"FBP": stack}, main="FBP", methods={"SIRT": "SIRT"})
    problem = CBCTProblem(
        task="SVCT", data=Path("ct.nii.gz"), num_views=4, sirt_iter=1, baseline_backend="torch"
    )
    gt = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    op = problem.operator(gt)
    baselines = problem.baselines(op, problem.measure(op, gt, torch.Generator()), gt)
    assert list(baselines.stacks) == ["FBP-LV", "FBP-FV", "SIRT-LV"] and baselines.main == "FBP-LV"
    assert set(baselines.methods) == set(CBCTProblem.BASELINE_METHODS)
    assert baselines.of_method("SIRT") is baselines.stacks["SIRT-LV"]


def test_every_script_method_is_registered_once():
    for task, profile in PROFILES.items():
        problem = PROBLEMS[task]
        assert profile.problem is problem and task in problem.PARAMETERS
        registered = (*factory.SAMPLER_STEPS, *factory.SOLVERS)
        assert profile.methods == registered + problem.BASELINE_METHODS
        assert not set(registered) & set(problem.BASELINE_METHODS)


def test_problem_specs_validate_their_task_and_parameter():
    with pytest.raises(ValueError, match="CBCTProblem: task 'ZSR' is not accepted; accepted: SVCT, LACT"):
        CBCTProblem(task="ZSR", data=Path("v.nii.gz"), arc_degrees=90)
    with pytest.raises(ValueError, match="CBCTProblem: task SVCT needs num_views"):
        CBCTProblem(task="SVCT", data=Path("v.nii.gz"), arc_degrees=90)
    problem = CBCTProblem(task="LACT", data=Path("v.nii.gz"), arc_degrees=90, sino_noise=1e4)
    assert problem.parameter == 90 and problem.folder_options() == {"s": "all", "sino": 1e4}
    with pytest.raises(TypeError):
        CBCTProblem("LACT", Path("v.nii.gz"))


def test_make_device_makes_the_chosen_gpu_current(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    problem = ZSRProblem(task="ZSR", data=Path("volume.nii.gz"), factor=2)
    spec = RunSpec(problem, PriorSpec(Path("prior.pt")), MethodSpec(), NoiseSpec("iid", {}), device="cuda", gpu=1)
    assert factory.make_device(spec) == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]
