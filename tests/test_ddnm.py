"""DDNM data consistency with named pseudo-inverses (exact, CG, SIRT) and the pseudo-inverse registry."""

import math

import pytest
import torch

from algorithms import DDNMConsistency, DDSConsistency
from physics import (
    PSEUDO_INVERSES,
    CGPseudoInverse,
    ConeBeamCT,
    ConeBeamGeometry,
    CountingOperator,
    ExactPseudoInverse,
    SIRTPseudoInverse,
    ZAxisSuperResolution,
    make_pseudo_inverse,
    sirt,
)


def _cone(layout="stack"):
    """Few views of a tiny volume: A has a large null space, as in sparse-view CT."""
    geometry = ConeBeamGeometry(volume_shape=(4, 6, 6), det_rows=8, det_cols=12, angles=[0.0, 0.9, 2.1, 4.0])
    return ConeBeamCT(geometry, backend="torch", layout=layout)


@pytest.fixture
def cone_problem(gen):
    """A cone-beam operator, y = A x_true for a non-negative x_true, and a denoised stack x0."""
    op = _cone()
    x_true = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    x0 = x_true + 0.3 * torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    return op, op.A(x_true), x0


def test_ddnm_with_sirt_is_the_reference_step_and_differs_from_dds(cone_problem):
    op, y, x0 = cone_problem
    pinv = make_pseudo_inverse("sirt", op, n_iter=20)
    ddnm = DDNMConsistency(op, y, pinv)
    x = ddnm(x0, 1.0)
    expected = sirt(op, y, 20) + x0 - sirt(op, op.A(x0), 20)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)
    dds = DDSConsistency(op, y, num_cg=5)(x0, 1.0)
    assert float((x - dds).norm()) > 0.1 * float(dds.norm())
    # The data move closer than x0's.
    assert float((op.A(x) - y).norm()) < 0.5 * float((op.A(x0) - y).norm())
    assert ddnm.describe() == {
        "pseudo_inverse": "sirt",
        "n_iter": 20,
        "min_value": 0.0,
        "backend": "torch",
        "linear": False,
        "form": "pinv(y) + x0 - pinv(A x0)",
    }


def test_ddnm_forms_agree_for_a_linear_pseudo_inverse(cone_problem):
    # SIRT without its clip is linear in y, so the residual form equals the reference form.
    op, y, x0 = cone_problem
    pinv = make_pseudo_inverse("sirt", op, n_iter=15, min_value=None)
    assert pinv.linear
    x = DDNMConsistency(op, y, pinv)(x0, 1.0)
    torch.testing.assert_close(x, pinv(y) + x0 - pinv(op.A(x0)), rtol=0, atol=1e-10)
    assert DDNMConsistency(op, y, pinv).describe()["form"] == "x0 + pinv(y - A x0)"


def test_linear_flags_are_honest(cone_problem, gen):
    op, y, _ = cone_problem
    # Data of a volume with negative values, as A x0 of a denoised estimate can be.
    other = op.A(torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64))

    def additivity_gap(pinv):
        total = pinv(y + other)
        return float((total - pinv(y) - pinv(other)).norm() / total.norm())

    assert additivity_gap(SIRTPseudoInverse(op, n_iter=10, min_value=None)) < 1e-12
    assert ExactPseudoInverse(ZAxisSuperResolution(2, axis=2)).linear
    # k-step CG builds its polynomial from y, the bounded SIRT clips: neither is additive.
    for pinv in (CGPseudoInverse(op, 3), SIRTPseudoInverse(op, 10)):
        assert not pinv.linear
        assert additivity_gap(pinv) > 1e-3


def test_ddnm_with_the_exact_pseudo_inverse_is_the_projection_onto_the_data(gen):
    op = ZAxisSuperResolution(3, axis=2, length=10)
    y = op.A(torch.rand(3, 1, 10, 4, generator=gen, dtype=torch.float64))
    x0 = torch.randn(3, 1, 10, 4, generator=gen, dtype=torch.float64)
    ddnm = DDNMConsistency(op, y, make_pseudo_inverse("exact", op))
    x = ddnm(x0, 1.0)
    torch.testing.assert_close(op.A(x), y, rtol=0, atol=1e-14)
    torch.testing.assert_close(ddnm(x, 0.5), x, rtol=0, atol=1e-14)
    # Orthogonal: the correction lies in the row space, i.e. is constant over each group.
    correction = x - x0
    torch.testing.assert_close(op.A_dagger(op.A(correction)), correction, rtol=0, atol=1e-14)
    assert ddnm.describe() == {"pseudo_inverse": "exact", "linear": True, "form": "x0 + pinv(y - A x0)"}


@pytest.mark.parametrize(
    "name, options, per_step, once",
    [
        # SIRT: A x0, then 2 n - 1 (from zeros); once: 2 for the weights and SIRT(y).
        ("sirt", {"n_iter": 6}, 2 * 6, 2 + 2 * 6 - 1),
        # CG: A x0, then A^T of the data and 2 per iteration; once: CG(y).
        ("cg", {"n_iter": 4}, 1 + 1 + 2 * 4, 1 + 2 * 4),
    ],
)
def test_ddnm_projector_calls_per_step(cone_problem, name, options, per_step, once):
    op, y, x0 = cone_problem
    counting = CountingOperator(op)
    ddnm = DDNMConsistency(counting, y, make_pseudo_inverse(name, counting, **options))
    assert counting.calls == once
    for _ in range(2):
        counting.calls = 0
        ddnm(x0, 1.0)
        assert counting.calls == per_step


def test_sirt_pseudo_inverse_returns_the_operator_layout_and_respects_its_bound(gen):
    stack, volume = _cone(), _cone(layout="volume")
    y = stack.A(torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64))
    out_stack = SIRTPseudoInverse(stack, n_iter=5)(y)
    out_volume = SIRTPseudoInverse(volume, n_iter=5)(y)
    assert out_stack.shape == (4, 1, 6, 6) and out_volume.shape == (4, 6, 6)
    torch.testing.assert_close(out_volume, out_stack[:, 0], rtol=0, atol=1e-12)
    bounded = SIRTPseudoInverse(stack, n_iter=5, min_value=0.2)(y - 1.0)
    assert bounded.min() == 0.2
    # Weights: one set per dtype and device, computed on first use.
    pinv = SIRTPseudoInverse(stack, n_iter=2)
    first = pinv.weights(y)
    assert pinv.weights(y.clone()) is first
    assert pinv.weights(y.float()).inv_col.dtype == torch.float32


def test_registry_and_one_line_errors():
    op = _cone()
    assert set(PSEUDO_INVERSES) == {"exact", "cg", "sirt"}
    assert all(PSEUDO_INVERSES[name].name == name for name in PSEUDO_INVERSES)
    cases = [
        (("pinv", op), {}, r"unknown pseudo-inverse 'pinv'; accepted: exact, cg, sirt"),
        (("sirt", op), {"n_iter": 0}, r"n_iter must be an integer >= 1, got 0"),
        (("cg", op), {"n_iter": -2}, r"n_iter must be an integer >= 1, got -2"),
        (("sirt", op), {"n_iter": 2.5}, r"n_iter must be an integer >= 1, got 2.5"),
        (("cg", op), {"n_iter": True}, r"n_iter must be an integer >= 1, got True"),
        (("sirt", op), {"min_value": math.nan}, r"min_value must be None or a finite number"),
        (("sirt", op), {"backend": "cuda"}, r"backend must be one of \['torch', 'astra'\], got 'cuda'"),
        (("cg", op), {"min_value": 0.0}, r"pseudo-inverse 'cg' has no option min_value; accepted: n_iter"),
        (("exact", op), {}, r"closed-form A_dagger \(dagger_is_exact\), not ConeBeamCT; accepted for it"),
        (
            ("sirt", ZAxisSuperResolution(2)),
            {"backend": "astra"},
            r"needs a whole ConeBeamCT \(not a view block\), got ZAxisSuperResolution",
        ),
        (
            ("sirt", op.view_block(0, 2, combine=lambda t, how: None)),
            {"backend": "astra"},
            r"needs a whole ConeBeamCT \(not a view block\), got ConeBeamCT",
        ),
    ]
    for args, options, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            make_pseudo_inverse(*args, **options)
        assert "\n" not in str(info.value)


def test_astra_backend_refuses_cpu_tensors():
    op = _cone()
    pinv = make_pseudo_inverse("sirt", op, backend="astra")
    with pytest.raises(RuntimeError, match=r"runs on CUDA tensors.*backend='torch'"):
        pinv(torch.zeros(op.measurement_shape))


def test_ddnm_refuses_a_pseudo_inverse_of_another_operator_and_a_stray_count(cone_problem):
    op, y, _ = cone_problem
    with pytest.raises(ValueError, match="pinv was built for another operator"):
        DDNMConsistency(op, y, make_pseudo_inverse("cg", _cone()))
    with pytest.raises(ValueError, match=r"n_iter=5 applies to the operator's own A_dagger only"):
        DDNMConsistency(op, y, make_pseudo_inverse("cg", op), n_iter=5)


def test_ddnm_without_a_pseudo_inverse_uses_the_operators_own(cone_problem):
    op, y, x0 = cone_problem
    ddnm = DDNMConsistency(op, y, n_iter=3)
    x = ddnm(x0, 1.0)
    torch.testing.assert_close(x, x0 + op.A_dagger(y - op.A(x0), n_iter=3), rtol=0, atol=0)
    # The residual form of k CG iterations is k CG iterations from x0: DDS without Tikhonov.
    torch.testing.assert_close(x, DDSConsistency(op, y, num_cg=3)(x0, 1.0), rtol=0, atol=1e-10)
    assert ddnm.describe() == {
        "pseudo_inverse": "A_dagger",
        "n_iter": 3,
        "linear": True,
        "form": "x0 + pinv(y - A x0)",
    }
