"""Operators of physics/ and algorithms/tv.py: exact adjoints, pseudo-inverses, geometry and views."""

import ast
import dataclasses
import math
import pathlib
import sys
import threading
import warnings

import pytest
import torch

import physics
from algorithms import tv
from physics import (
    LinearOperator,
    ConeBeamCT,
    ConeBeamGeometry,
    CountingOperator,
    ZAxisSuperResolution,
    cgls,
    cone_beam,
    select_views,
    sirt,
    sirt_weights,
)


def _cone(shape, det, views=None, plan_budget=cone_beam.PLAN_BUDGET, layout="stack", **kw):
    geometry = ConeBeamGeometry(volume_shape=shape, det_rows=det[0], det_cols=det[1], **kw)
    return ConeBeamCT(geometry, views=views, backend="torch", plan_budget=plan_budget, layout=layout)


class _Full:
    """A_full / A_full_adjoint seen as an operator of their own."""

    def __init__(self, op):
        self.A, self.A_adjoint = op.A_full, op.A_full_adjoint
        self.op = op

    @property
    def plan_nbytes(self):
        return self.op.plan_nbytes


class _Diff:
    def __init__(self, axis):
        self.A = lambda x: tv.diff(x, axis)
        self.A_adjoint = lambda g: tv.diff_adjoint(g, axis)


class _Gradient:
    def __init__(self, axes):
        self.A = lambda x: tv.gradient(x, axes)
        self.A_adjoint = lambda g: tv.gradient_adjoint(g, axes)


# name -> (cone-beam operator factory taking keyword arguments of ConeBeamCT, domain shape)
CONES = {
    "cone_odd_shape_7views": (
        lambda **kw: _cone((5, 7, 9), (5, 11), views=select_views("SVCT", 7), **kw),
        (5, 1, 7, 9),
    ),
    # Short distances give a wide cone, so x- and y-dominant rays meet in one view (45 degrees).
    "cone_wide_cone_mixed_axes": (
        lambda **kw: _cone(
            (6, 8, 7),
            (16, 24),
            source_distance=20.0,
            detector_distance=15.0,
            angles=[0.0, math.pi / 4, 1.0, 2.5, 4.0],
            **kw,
        ),
        (6, 1, 8, 7),
    ),
    "cone_voxel_size": (
        lambda **kw: _cone((4, 6, 6), (8, 12), voxel_size=0.7, angles=[0.3, 1.9], **kw),
        (4, 1, 6, 6),
    ),
    "cone_full_views": (
        lambda **kw: _Full(
            _cone((3, 5, 4), (4, 8), angles=torch.linspace(0, 6, 11), views=torch.tensor([2, 5]), **kw)
        ),
        (3, 1, 5, 4),
    ),
    # The demo geometry, small: most detector rows miss the volume, rays enter and leave through z.
    "cone_demo_geometry": (
        lambda **kw: ConeBeamCT(
            ConeBeamGeometry.for_volume((4, 12, 10)), views=select_views("LACT", 30), backend="torch", **kw
        ),
        (4, 1, 12, 10),
    ),
    "cone_volume_layout": (
        lambda **kw: _cone((5, 7, 9), (5, 11), views=select_views("SVCT", 7), layout="volume", **kw),
        (5, 7, 9),
    ),
}

# name -> (operator factory, domain shape); cone-beam operators with their cached plan and on the fly.
OPERATORS = {
    **{name: (make, shape) for name, (make, shape) in CONES.items()},
    **{
        f"{name}_on_the_fly": (lambda m=make: m(plan_budget=0), shape)
        for name, (make, shape) in CONES.items()
    },
    "zsr_f2_axis2": (lambda: ZAxisSuperResolution(2, axis=2), (3, 1, 8, 5)),
    "zsr_f3_axis2_partial": (lambda: ZAxisSuperResolution(3, axis=2, length=10), (2, 1, 10, 4)),
    "zsr_f4_axis0_partial": (lambda: ZAxisSuperResolution(4, axis=0, length=7), (7, 1, 3, 5)),
    "zsr_f5_axis_last": (lambda: ZAxisSuperResolution(5, axis=-1), (2, 1, 3, 15)),
    "zsr_f3_fixed_shape_partial": (
        lambda: ZAxisSuperResolution(3, axis=2, shape=(2, 1, 10, 4)),
        (2, 1, 10, 4),
    ),
    "slab_32_to_128": (lambda: physics.SlabAverage(4, 32, 128, axis=2), (2, 1, 128, 3)),
    "slab_100_to_128": (lambda: physics.SlabAverage(4, 100, 128, axis=2), (2, 1, 128, 3)),
    "diff_axis0": (lambda: _Diff(0), (5, 1, 4, 6)),
    "diff_axis3": (lambda: _Diff(3), (5, 1, 4, 6)),
    "gradient_xyz": (lambda: _Gradient((0, 2, 3)), (5, 1, 4, 6)),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_adjointness(name, gen):
    make, shape = OPERATORS[name]
    op = make()
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    ax = op.A(x)
    y = torch.rand(ax.shape, generator=gen, dtype=torch.float64)
    aty = op.A_adjoint(y)
    lhs = torch.sum(ax * y)
    rhs = torch.sum(x * aty)
    assert ax.abs().max() > 0
    assert abs(float(lhs - rhs)) / float(ax.norm() * y.norm()) < 1e-5
    # Operators return the layout they were given.
    assert aty.shape == x.shape


def _physics_operator_classes():
    """Every class that ``physics`` exports with an ``A`` method, the Protocol and the call counter aside."""
    classes = {c for c in vars(physics).values() if isinstance(c, type) and callable(getattr(c, "A", None))}
    return classes - {LinearOperator, CountingOperator}


@pytest.mark.parametrize(
    "name", sorted(n for n in OPERATORS if n.startswith(("cone", "zsr")) and not n.endswith("on_the_fly"))
)
def test_physics_operators_keep_the_contract(name, gen):
    make, shape = OPERATORS[name]
    op = make()
    if isinstance(op, _Full):
        op = op.op
    assert type(op) in _physics_operator_classes()
    assert isinstance(op, LinearOperator)
    x = torch.rand(op.input_shape or shape, generator=gen, dtype=torch.float64)
    y = op.A(x)
    assert op.measurement_shape in (None, tuple(y.shape))
    assert op.A_adjoint(y).shape == op.A_dagger(y).shape == x.shape
    if op.dagger_is_exact:
        torch.testing.assert_close(op.A(op.A_dagger(y)), y)


def test_every_physics_operator_class_is_tested_against_the_contract():
    tested = {type(make()) for make, _ in OPERATORS.values()}
    assert _physics_operator_classes() == {ConeBeamCT, ZAxisSuperResolution, physics.SlabAverage}
    assert _physics_operator_classes() <= tested
    # The Protocol checks members: an object without A_dagger or the shapes does not pass.
    assert not isinstance(_Diff(0), LinearOperator)


def test_optional_backends_are_imported_inside_functions_only():
    # deepinv (the adapter) and astra (baselines) must not become dependencies of importing physics.
    root = pathlib.Path(physics.__file__).parents[1]
    for path in sorted((root / "physics").glob("*.py")) + sorted((root / "algorithms").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                optional = [n for n in names if n.split(".")[0] in ("deepinv", "astra")]
                assert not optional, f"{path.name} imports {optional} at module level"


def test_cone_layouts_agree_and_other_layouts_are_rejected(gen):
    stack = _cone((4, 5, 6), (6, 10), angles=[0.0, 1.0, 2.0])
    volume = _cone((4, 5, 6), (6, 10), angles=[0.0, 1.0, 2.0], layout="volume")
    assert (stack.layout, stack.input_shape, volume.input_shape) == ("stack", (4, 1, 5, 6), (4, 5, 6))
    x = torch.rand(4, 1, 5, 6, generator=gen, dtype=torch.float64)
    y = stack.A(x)
    assert y.shape == stack.measurement_shape == volume.measurement_shape == (3, 6, 10)
    torch.testing.assert_close(volume.A(x[:, 0]), y, rtol=0, atol=0)
    torch.testing.assert_close(volume.A_adjoint(y), stack.A_adjoint(y)[:, 0], rtol=0, atol=0)
    for op, shape in ((stack, (4, 1, 5, 6)), (volume, (4, 5, 6))):
        assert op.A_adjoint(y).shape == op.A_dagger(y, n_iter=2).shape == op.fdk(y).shape == shape
        assert op.A_full_adjoint(op.A_full(x.reshape(shape))).shape == shape
        assert op.view_block(0, 2, combine=lambda t, how: None).A_adjoint(y[:2]).shape == shape
    with pytest.raises(ValueError, match=r"layout='stack'.*\[D,1,H,W\].*got shape \(4, 5, 6\).*'volume'"):
        stack.A(x[:, 0])
    with pytest.raises(ValueError, match=r"got shape \(1, 4, 5, 6\); accepted: \[4, 1, 5, 6\]"):
        stack.A(x[:, 0][None])
    with pytest.raises(ValueError, match=r"layout='volume'.*accepted: \[4, 5, 6\].*layout='stack'"):
        volume.A(x)
    with pytest.raises(ValueError, match=r"\[D,1,H,W\]"):
        stack.A(torch.rand(4, 1, 6, 5))
    with pytest.raises(ValueError, match="projections"):
        stack.A_adjoint(torch.rand(2, 6, 10))
    with pytest.raises(TypeError, match="float16"):
        stack.A(x.half())
    with pytest.raises(ValueError, match=r"layout must be one of \['stack', 'volume'\], got 'batch'"):
        _cone((4, 5, 6), (6, 10), angles=[0.0], layout="batch")


def _close(a, b, tol):
    torch.testing.assert_close(a.double(), b, rtol=0, atol=tol * float(b.abs().max()))


@pytest.mark.parametrize("name", sorted(CONES))
def test_cone_cached_plan_equals_on_the_fly(name, gen):
    make, shape = CONES[name]
    cached, on_the_fly = make(), make(plan_budget=0)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = torch.rand(on_the_fly.A(x).shape, generator=gen, dtype=torch.float64)
    ax, aty = on_the_fly.A(x), on_the_fly.A_adjoint(y)
    _close(cached.A(x), ax, 1e-12)
    _close(cached.A_adjoint(y), aty, 1e-12)
    # The float32 plan holds the float64 weights rounded once: float32 accuracy (sampling on the fly
    # in float32 rounds the coordinates and is off by up to ~1e-4).
    _close(cached.A(x.float()), ax, 1e-6)
    _close(cached.A_adjoint(y.float()), aty, 1e-6)
    _close(on_the_fly.A(x.float()), ax, 1e-4)
    assert cached.A(x.float()).dtype == cached.A_adjoint(y.float()).dtype == torch.float32
    assert cached.plan_nbytes > 0 and on_the_fly.plan_nbytes == 0


def test_cone_plan_budget_is_exact_and_over_budget_runs_on_the_fly(gen):
    make, shape = CONES["cone_demo_geometry"]
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    unlimited = make()
    y = unlimited.A(x)
    size = unlimited.plan_nbytes
    fits = make(plan_budget=size)
    assert torch.equal(fits.A(x), y)
    assert fits.plan_nbytes == size
    over, on_the_fly = make(plan_budget=size - 1), make(plan_budget=0)
    assert torch.equal(over.A(x), on_the_fly.A(x))
    assert torch.equal(over.A_adjoint(y), on_the_fly.A_adjoint(y))
    assert over.plan_nbytes == 0
    # Each dtype and view set has its own plan.
    unlimited.A(x.float())
    assert unlimited.plan_nbytes > size
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="plan_budget"):
            make(plan_budget=bad)


def test_cone_plan_ignores_thread_count_and_keeps_autograd(gen):
    make, shape = CONES["cone_odd_shape_7views"]
    op = make()
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = torch.rand(op.measurement_shape, generator=gen, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = op.A(x), op.A_adjoint(y)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(op.A(x), serial[0]) and torch.equal(op.A_adjoint(y), serial[1])
    # Inputs that require grad take the differentiable on-the-fly path: d/dx <A x, y> = A^T y.
    x.requires_grad_(True)
    torch.sum(op.A(x) * y).backward()
    torch.testing.assert_close(x.grad, op.A_adjoint(y))


def test_cone_without_scipy_warns_once_and_samples_on_the_fly(monkeypatch, gen):
    make, shape = CONES["cone_voxel_size"]
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    expected = make(plan_budget=0).A(x)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setattr(cone_beam, "_missing_modules", set())
    op = make()
    with pytest.warns(RuntimeWarning, match="scipy is not installed"):
        y = op.A(x)
    assert torch.equal(y, expected) and op.plan_nbytes == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op.A_adjoint(y)


class _ThreadCombine:
    """``combine`` of view blocks that run in one thread each, as an all-reduce over processes would."""

    def __init__(self, parts):
        self.barrier = threading.Barrier(parts, timeout=60)
        self.slots = [None] * parts
        self.calls = []

    def for_part(self, part):
        def combine(t, how):
            self.calls.append((part, how, t.dtype))
            self.slots[part] = t.clone()
            self.barrier.wait()
            stacked = torch.stack(self.slots)
            total = stacked.sum(0) if how == "sum" else stacked.amax(0)
            self.barrier.wait()
            t.copy_(total)

        return combine


def _adjoint_by_blocks(op, y, bounds):
    """Each view block's ``A_adjoint`` of its part of ``y``, the blocks run concurrently."""
    combine = _ThreadCombine(len(bounds))
    blocks = [op.view_block(a, b, combine.for_part(i)) for i, (a, b) in enumerate(bounds)]
    results = [None] * len(bounds)

    def run(i):
        a, b = bounds[i]
        results[i] = blocks[i].A_adjoint(y[a:b])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bounds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return blocks, results, combine.calls


@pytest.mark.parametrize("plan_budget", [cone_beam.PLAN_BUDGET, 0], ids=["cached_plan", "on_the_fly"])
def test_cone_view_blocks_project_their_views_and_sum_the_adjoint(plan_budget, gen):
    op = _cone((4, 6, 5), (6, 9), angles=torch.linspace(0.0, 5.0, 5), plan_budget=plan_budget)
    x = torch.rand(4, 1, 6, 5, generator=gen, dtype=torch.float64)
    y = torch.rand(op.measurement_shape, generator=gen, dtype=torch.float64)
    bounds = [(0, 2), (2, 5)]
    blocks, results, calls = _adjoint_by_blocks(op, y, bounds)
    whole = op.A_adjoint(y)
    for block, (a, b), result in zip(blocks, bounds, results, strict=True):
        assert block.view_range == (a, b)
        assert torch.equal(block.views, op.views[a:b])
        torch.testing.assert_close(block.A(x), op.A(x)[a:b], rtol=1e-12, atol=0)
        torch.testing.assert_close(result, whole, rtol=1e-12, atol=1e-12)
    # Both parts hold the same reduction; the torch backend sums floats once per adjoint.
    assert torch.equal(results[0], results[1])
    assert sorted(calls) == [(0, "sum", torch.float64), (1, "sum", torch.float64)]
    # The full-view methods stay per block: nothing to combine.
    assert torch.equal(blocks[0].A_full_adjoint(op.A_full(x)), op.A_full_adjoint(op.A_full(x)))
    assert not op.sums_views_exactly(y)
    for start, stop in [(0, 0), (3, 2), (-1, 2), (0, 6)]:
        with pytest.raises(ValueError, match=r"view_block: need 0 <= start < stop <= 5"):
            op.view_block(start, stop, combine=lambda t, how: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton backend needs CUDA")
def test_cone_triton_adjoint_is_reproducible_and_view_blocks_add_exactly():
    geometry = ConeBeamGeometry.for_volume((24, 48, 40))
    op = ConeBeamCT(geometry, views=select_views("SVCT", 9), device="cuda")
    generator = torch.Generator("cuda").manual_seed(0)
    y = torch.rand(op.measurement_shape, generator=generator, device="cuda")
    # One block's projections 1000x larger: its largest contribution must set every block's unit.
    y[7:] *= 1000.0
    assert op.sums_views_exactly(y)
    whole = op.A_adjoint(y)
    assert torch.equal(whole, op.A_adjoint(y))
    reference = ConeBeamCT(geometry, views=op.views, backend="torch").A_adjoint(y.double().cpu())
    # The kernels compute ray parameters in float32: about 1e-5 relative, fixed point or not.
    assert float((whole.cpu().double() - reference).norm() / reference.norm()) < 5e-5
    bounds = [(0, 4), (4, 7), (7, 9)]
    _, results, calls = _adjoint_by_blocks(op, y, bounds)
    for result in results:
        assert torch.equal(result, whole)
    assert sorted(how for _, how, _ in calls) == ["max"] * 3 + ["sum"] * 3
    assert {dtype for _, how, dtype in calls if how == "sum"} == {torch.int64}
    assert torch.equal(op.A_adjoint(torch.zeros_like(y)), torch.zeros_like(whole))
    for bad in (math.nan, math.inf):
        broken = y.clone()
        broken[4, 3, 5] = bad
        assert torch.isnan(op.A_adjoint(broken)).all()
        _, results, _ = _adjoint_by_blocks(op, broken, bounds)
        assert all(torch.isnan(result).all() for result in results)


def test_cone_dagger_decreases_least_squares_residual(gen):
    op = _cone((4, 6, 6), (8, 12), angles=torch.linspace(0, math.pi, 5))
    y = op.A(torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64))
    y = y + 0.1 * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    data_residuals, normal_residuals = [], []

    def record(k, x, r):
        data_residuals.append(float((op.A(x) - y).norm()))
        normal_residuals.append(float(r.norm()))

    op.A_dagger(y, n_iter=8, callback=record)
    # CG on the normal equations minimises |A x - y| over growing Krylov spaces: monotone by theory.
    assert all(b <= a * (1 + 1e-12) for a, b in zip(data_residuals, data_residuals[1:]))
    assert normal_residuals[-1] < 1e-2 * float(op.A_adjoint(y).norm())


def test_sirt_and_cgls_fit_consistent_data(gen):
    op = _cone((4, 6, 6), (8, 12), angles=torch.linspace(0, 2 * math.pi, 12)[:-1])
    truth = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = op.A(truth)
    start = float(y.norm())
    for x in (sirt(op, y, 50), cgls(op, y, 20)):
        assert float((op.A(x) - y).norm()) < 0.05 * start
    assert sirt(op, -y, 3).min() >= 0
    assert sirt(op, -y, 3, min_value=None).min() < 0
    # astra's MinConstraint: any lower bound, reached by some voxels and respected by all.
    clipped = sirt(op, y, 5, min_value=0.3)
    assert clipped.min() == 0.3 and (clipped > 0.3).any()
    for bad in (float("nan"), float("inf"), "0"):
        with pytest.raises(ValueError, match="min_value must be None or a finite number"):
            sirt(op, y, 1, min_value=bad)


def _well_posed_cone():
    """24 views around 4 x 6 x 6 voxels on an 8 x 12 detector: A is injective."""
    return _cone((4, 6, 6), (8, 12), angles=torch.linspace(0, 2 * math.pi, 25)[:-1])


@pytest.mark.parametrize("min_value", [0.0, None])
def test_sirt_of_noiseless_data_converges_to_the_volume(min_value, gen):
    op = _well_posed_cone()
    truth = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = op.A(truth)
    errors = {}

    def record(k, x):
        if k + 1 in (10, 30, 100):
            errors[k + 1] = float((x - truth).norm() / truth.norm())

    sirt(op, y, 100, min_value=min_value, callback=record)
    assert errors[10] > 1.2 * errors[30] > 1.44 * errors[100]
    assert errors[100] < 0.16


def test_sirt_costs_two_projector_calls_per_iteration_and_reuses_its_weights(gen):
    op = CountingOperator(_well_posed_cone())
    y = op.A(torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64))
    op.calls = 0
    weights = sirt_weights(op, y)
    assert op.calls == 2
    op.calls = 0
    from_zeros = sirt(op, y, 7, weights=weights)
    # From zeros the first forward projection is skipped: A 0 = 0.
    assert op.calls == 2 * 7 - 1
    op.calls = 0
    from_given_zeros = sirt(op, y, 7, x0=torch.zeros_like(weights.inv_col), weights=weights)
    assert op.calls == 2 * 7
    torch.testing.assert_close(from_zeros, from_given_zeros, rtol=0, atol=1e-12)
    torch.testing.assert_close(sirt(op, y, 7), from_zeros, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"x0 has shape \(4, 6, 6\); accepted: \[4, 1, 6, 6\]"):
        sirt(op, y, 1, x0=torch.zeros(4, 6, 6, dtype=torch.float64))


@pytest.mark.parametrize("factor,axis,length", [(2, 2, 8), (3, 2, 10), (4, 0, 7), (5, -1, 15), (7, 3, 9)])
def test_zsr_pseudo_inverse_and_decoupling(factor, axis, length, gen):
    op = ZAxisSuperResolution(factor, axis=axis, length=length)
    shape = [3, 1, 4, 6]
    shape[axis] = length
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = op.A(x)
    assert y.shape[axis] == math.ceil(length / factor)
    torch.testing.assert_close(op.A(op.A_dagger(y)), y)
    # A_dagger is the pseudo-inverse: A^+ A is the orthogonal projector onto the row space.
    p = op.A_dagger(op.A(x))
    torch.testing.assert_close(op.A_dagger(op.A(p)), p)
    torch.testing.assert_close(torch.sum((x - p) * p), torch.tensor(0.0, dtype=torch.float64))
    c = op.decouple(x)
    torch.testing.assert_close(op.couple(c), x)
    torch.testing.assert_close(c.norm(), x.norm())
    # Coefficient 0 of each group is sqrt(group size) times the group mean, i.e. what A sees.
    sizes = torch.tensor([min(factor, length - s) for s in range(0, length, factor)], dtype=torch.float64)
    view = [1] * x.dim()
    view[axis] = -1
    firsts = c.index_select(axis, torch.arange(0, length, factor))
    torch.testing.assert_close(firsts, y * sizes.sqrt().view(view))


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8])
def test_decouple_matrix_is_orthonormal_with_constant_first_vector(factor):
    q = ZAxisSuperResolution(factor).decouple_matrix()
    torch.testing.assert_close(q @ q.T, torch.eye(factor, dtype=torch.float64))
    torch.testing.assert_close(q[:, 0], torch.full((factor,), factor**-0.5, dtype=torch.float64))
    torch.testing.assert_close(q[0, :], torch.full((factor,), factor**-0.5, dtype=torch.float64))


def test_zsr_keeps_any_layout_or_one_fixed_shape(gen):
    free = ZAxisSuperResolution(2, axis=-2)
    assert free.input_shape is None and free.measurement_shape is None
    for shape in [(3, 1, 8, 5), (8, 5), (2, 3, 4, 6, 5)]:
        x = torch.rand(shape, generator=gen, dtype=torch.float64)
        assert free.A_adjoint(free.A(x)).shape == free.A_dagger(free.A(x)).shape == x.shape
    fixed = ZAxisSuperResolution(3, axis=2, shape=[2, 1, 10, 4])
    assert (fixed.input_shape, fixed.measurement_shape, fixed.length) == ((2, 1, 10, 4), (2, 1, 4, 4), 10)
    x = torch.rand(2, 1, 10, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(fixed.A(x), ZAxisSuperResolution(3, axis=2, length=10).A(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"A takes one shape: got shape \(3, 1, 10, 4\); accepted: \[2, 1,"):
        fixed.A(torch.zeros(3, 1, 10, 4))
    for method in (fixed.A_adjoint, fixed.A_dagger):
        with pytest.raises(ValueError, match=r"A_adjoint and A_dagger take one shape.*accepted: \[2, 1, 4,"):
            method(torch.zeros(2, 1, 5, 4))
    with pytest.raises(ValueError, match="length 9 disagrees with shape"):
        ZAxisSuperResolution(3, axis=2, length=9, shape=(2, 1, 10, 4))
    with pytest.raises(ValueError, match="axis 4 is out of range for shape"):
        ZAxisSuperResolution(3, axis=4, shape=(2, 1, 10, 4))
    with pytest.raises(ValueError, match="shape must be None or a sequence of integers >= 1"):
        ZAxisSuperResolution(3, shape=(2, 0, 10))


def test_zsr_errors():
    with pytest.raises(ValueError, match="factor"):
        ZAxisSuperResolution(1)
    with pytest.raises(ValueError, match="not divisible"):
        ZAxisSuperResolution(3).A(torch.zeros(1, 1, 10, 4))
    with pytest.raises(ValueError, match="expected 10"):
        ZAxisSuperResolution(3, length=10).A(torch.zeros(1, 1, 9, 4))
    with pytest.raises(ValueError, match="out of range"):
        ZAxisSuperResolution(2, axis=5).A(torch.zeros(1, 1, 4, 4))


def test_tv_shrinkage():
    v = torch.tensor([[3.0, -0.5, 0.0], [4.0, 0.2, -1.0]])
    torch.testing.assert_close(tv.soft_threshold(v, 1.0), torch.tensor([[2.0, 0.0, 0.0], [3.0, 0.0, 0.0]]))
    # Column norms 5, ~0.54, 1: the first shrinks to norm 4, the others vanish.
    torch.testing.assert_close(tv.shrink_isotropic(v, 1.0), torch.tensor([[2.4, 0.0, 0.0], [3.2, 0.0, 0.0]]))
    x = torch.zeros(4, 1, 3, 3)
    x[2:] = 1.0
    assert float(tv.tv_norm(x, kind="anisotropic")) == pytest.approx(9.0)


def test_select_views():
    assert select_views("LACT", 90).tolist() == list(range(90))
    assert select_views("LACT", 360).numel() == 360
    assert select_views("LACT", 0.5).tolist() == [0]
    assert select_views("SVCT", 20).tolist() == list(range(0, 360, 18))
    assert select_views("SVCT", 1).tolist() == [0]
    assert select_views("SVCT", 7).tolist() == [0, 51, 102, 154, 205, 257, 308]
    assert select_views("SVCT", 360).tolist() == list(range(360))
    for task, degree, message in [
        ("LACT", 0, r"\(0, 360\]"),
        ("LACT", 361, r"\(0, 360\]"),
        ("LACT", 0.1, "keeps no view"),
        ("SVCT", 0, r"\[1, 360\]"),
        ("SVCT", 361, r"\[1, 360\]"),
        ("SVCT", 2.5, "integer"),
        ("CT", 90, "LACT"),
        ("SVCT", float("nan"), "finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            select_views(task, degree)


def test_geometry_defaults_and_validation():
    g = ConeBeamGeometry(volume_shape=(256, 256, 256))
    assert (g.det_rows, g.det_cols, g.det_spacing, g.source_distance, g.detector_distance) == (
        512,
        512,
        2.0,
        700.0,
        500.0,
    )
    assert g.num_views == 360 and g.angles[1] == pytest.approx(2 * math.pi / 360)
    assert ConeBeamGeometry.for_volume((256, 256, 256)) == g
    small = ConeBeamGeometry.for_volume((128, 128, 128), num_views=90)
    assert (small.det_rows, small.det_cols, small.det_spacing, small.num_views) == (256, 256, 2.0, 90)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.voxel_size = 2.0
    bad = [
        dict(volume_shape=(0, 4, 4)),
        dict(volume_shape=(4, 4)),
        dict(volume_shape=(4, 4, 4), voxel_size=-1.0),
        dict(volume_shape=(4, 4, 4), det_spacing=0.0),
        dict(volume_shape=(4, 4, 4), source_distance=float("inf")),
        dict(volume_shape=(4, 4, 4), angles=[]),
        dict(volume_shape=(4, 4, 4), angles=[0.0, float("nan")]),
        dict(volume_shape=(4, 4, 4), det_rows=0),
        dict(volume_shape=(256, 256, 256), det_cols=100),
        dict(volume_shape=(4, 400, 400), source_distance=100.0),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            ConeBeamGeometry(**kwargs)
    with pytest.raises(TypeError):
        ConeBeamGeometry((4, 4, 4))
    with pytest.raises(ValueError, match="views"):
        ConeBeamCT(g, views=torch.tensor([360]))
    with pytest.raises(ValueError, match="backend"):
        ConeBeamCT(g, backend="cuda")
