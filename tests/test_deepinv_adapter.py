"""physics.to_deepinv: our operators inside deepinv, checked with deepinv's own tools.

Skipped where deepinv does not import (it is not a dependency of the project).
"""

import pytest
import torch

from physics import (
    ConeBeamCT,
    ConeBeamGeometry,
    ZAxisSuperResolution,
    make_pseudo_inverse,
    select_views,
    to_deepinv,
)

deepinv = pytest.importorskip("deepinv")


def _geometry(det_rows, det_cols):
    return ConeBeamGeometry(
        volume_shape=(3, 5, 4), det_rows=det_rows, det_cols=det_cols, angles=torch.linspace(0, 6, 12)
    )


def _cone(layout="stack"):
    views = select_views("SVCT", 5, num_full=12)
    return ConeBeamCT(_geometry(6, 9), views=views, backend="torch", layout=layout)


OPERATORS = {
    "cone_stack": (_cone, (3, 5, 4), (5, 6, 9)),
    "cone_volume": (lambda: _cone("volume"), (3, 5, 4), (5, 6, 9)),
    # A slice stack [N, 1, h, w] shows as the volume [N, h, w].
    "zsr_stack": (lambda: ZAxisSuperResolution(3, axis=2, shape=(2, 1, 7, 4)), (2, 7, 4), (2, 3, 4)),
    "zsr_volume": (lambda: ZAxisSuperResolution(2, axis=0, shape=(6, 3, 5)), (6, 3, 5), (3, 3, 5)),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_deepinv_adjointness_and_batch_layout(name, gen):
    make, volume, measurement = OPERATORS[name]
    op = make()
    physics = to_deepinv(op)
    assert isinstance(physics, deepinv.physics.LinearPhysics)
    x = torch.rand((2, 1) + volume, generator=gen, dtype=torch.float64)
    y = physics.A(x)
    assert y.shape == (2, 1) + measurement
    # Each batch entry is the operator applied to that entry.
    torch.testing.assert_close(y[1].reshape(op.measurement_shape), op.A(x[1].reshape(op.input_shape)))
    assert physics.A_adjoint(y).shape == x.shape
    torch.manual_seed(0)
    error = physics.adjointness_test(x, num_samples=3)
    assert float(error) < 1e-12


def test_deepinv_least_squares_agrees_with_our_pseudo_inverses(gen):
    # ZSR: deepinv's least squares against the closed form.
    zsr = ZAxisSuperResolution(3, axis=2, shape=(2, 1, 7, 4))
    physics = to_deepinv(zsr, max_iter=200, tol=1e-12, implicit_backward_solver=False)
    y = zsr.A(torch.rand(2, 1, 7, 4, generator=gen, dtype=torch.float64))
    for solver in ("CG", "lsqr"):
        theirs = physics.A_dagger(y.reshape(1, 1, 2, 3, 4), solver=solver).reshape(zsr.input_shape)
        torch.testing.assert_close(theirs, make_pseudo_inverse("exact", zsr)(y), rtol=0, atol=1e-8)
    # CT, 12 views of 60 voxels (condition number about 200): run to convergence, CG and LSQR reach
    # the least-squares solution. deepinv's CG adds eps (1e-8) to squared residual norms, which
    # stalls it near 1e-2 here: eps=1e-30 lets it converge.
    op = ConeBeamCT(_geometry(8, 12), backend="torch")
    y = op.A(torch.rand(op.input_shape, generator=gen, dtype=torch.float64))
    ours = make_pseudo_inverse("cg", op, n_iter=300)(y)
    physics = to_deepinv(op, max_iter=300, tol=1e-14, implicit_backward_solver=False)
    for solver, options in (("CG", {"eps": 1e-30}), ("lsqr", {})):
        theirs = physics.A_dagger(y[None, None], solver=solver, **options).reshape(op.input_shape)
        assert float((theirs - ours).norm() / ours.norm()) < 1e-9


def test_to_deepinv_errors():
    with pytest.raises(ValueError, match=r"to_deepinv needs an operator of fixed shapes.*input_shape=None"):
        to_deepinv(ZAxisSuperResolution(2))
    physics = to_deepinv(_cone())
    message = r"A takes volumes: got shape \(1, 3, 1, 5, 4\); accepted: \[B, 1, 3, 5, 4\]"
    with pytest.raises(ValueError, match=message):
        physics.A(torch.zeros(1, 3, 1, 5, 4))
    with pytest.raises(ValueError, match=r"A_adjoint takes measurements: .*accepted: \[B, 1, 5, 6, 9\]"):
        physics.A_adjoint(torch.zeros(1, 5, 6, 9))
