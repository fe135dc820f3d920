"""Triton cone-beam kernels: parity with the float64 torch path, adjointness, the gather's weights
against the forward's and the scatter's, determinism and view blocks.

Without CUDA the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1 while
physics._cone_triton is imported). Skipped where Triton is not installed.
"""

import importlib
import math
import os

import pytest
import torch

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

from physics import ConeBeamCT, ConeBeamGeometry, select_views  # noqa: E402
from physics.cone_beam import _torch_adjoint, _torch_forward, index_space_vectors  # noqa: E402

# A wide cone on a small non-cubic volume: at 45 and 135 degrees x- and y-dominant rays meet in
# one view; the detector is wider than the volume's shadow, so some rays miss it.
GEOMETRY = ConeBeamGeometry(
    volume_shape=(6, 3, 4),
    det_rows=9,
    det_cols=10,
    det_spacing=2.0,
    source_distance=16.0,
    detector_distance=10.0,
    angles=tuple(k * math.pi / 4 + 0.05 * (k % 3 == 2) for k in range(8)),
)
DET = (GEOMETRY.det_rows, GEOMETRY.det_cols)


@pytest.fixture(scope="module")
def kernels():
    """physics._cone_triton; without CUDA, imported anew with its kernels interpreted, and restored after."""
    module = importlib.import_module("physics._cone_triton")
    if DEVICE == "cuda":
        yield module
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield importlib.reload(module)
    if previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = previous
    importlib.reload(module)


def _relative(a, b):
    return float((a.cpu().double() - b.cpu().double()).norm() / b.cpu().double().norm())


def _operator(views):
    return ConeBeamCT(GEOMETRY, views=views, backend="triton", device=DEVICE, layout="volume")


def _vectors(views):
    return index_space_vectors(GEOMETRY, views).float().to(DEVICE)


def test_forward_matches_float64_torch_and_tiles_do_not_change_it(kernels, gen):
    x = torch.rand(GEOMETRY.volume_shape, generator=gen, dtype=torch.float64)
    y = kernels.forward(x.float().to(DEVICE), _vectors(None), DET, GEOMETRY.voxel_size)
    assert _relative(y, _torch_forward(x, index_space_vectors(GEOMETRY, None), DET, 1.0)) < 2e-6
    retiled = kernels.forward(x.float().to(DEVICE), _vectors(None), DET, 1.0, tile=(16, 16), num_warps=2)
    assert torch.equal(retiled, y)


def test_gather_adjoint_matches_float64_torch_is_the_transpose_and_repeats_bitwise(kernels, gen):
    op = _operator(select_views("LACT", 135, num_full=GEOMETRY.num_views))
    assert op.views.tolist() == [0, 1, 2]
    x = torch.rand(op.volume_shape, generator=gen).to(DEVICE)
    y = torch.rand(op.measurement_shape, generator=gen).to(DEVICE)
    assert kernels.gather_plan(kernels.geometry_table(op._vecs), DET, op.volume_shape) is not None
    back = op.A_adjoint(y)
    reference = _torch_adjoint(y.double().cpu(), op._vecs.cpu(), op.volume_shape, GEOMETRY.voxel_size)
    assert _relative(back, reference) < 2e-6
    # Dot-product test of the float32 pair, summed in float64.
    lhs = float(torch.sum(op.A(x).double() * y.double()))
    rhs = float(torch.sum(x.double() * back.double()))
    assert abs(lhs - rhs) / abs(lhs) < 2e-6
    assert torch.equal(op.A_adjoint(y), back)


def test_gather_weights_are_the_forward_weights_bitwise(kernels):
    # One ray per view: each voxel gets at most one contribution per view, rounded once to fixed
    # point by both adjoints, so equal volumes mean the same rays, planes, corners and weights.
    vecs = _vectors(torch.tensor([1, 5, 6]))
    y = torch.zeros(3, *DET, device=DEVICE)
    y[0, 4, 5] = 1.0
    y[1, 0, 3] = 2.0
    y[2, 8, 6] = 0.5
    scattered = kernels.adjoint_scatter(y, vecs, GEOMETRY.volume_shape, 1.0)
    assert scattered.count_nonzero() > 8
    assert torch.equal(kernels.adjoint_gather(y, vecs, GEOMETRY.volume_shape, 1.0), scattered)


class _BlockCombine:
    """``combine`` of one view block, run after the whole operator: "max" gives the whole's largest
    contribution (what an all-reduce over the blocks gives), "sum" records the block's int64 sums.

    The blocks run one after the other (Triton's interpreter is not thread-safe): their recorded
    sums must add to the whole operator's, bitwise.
    """

    def __init__(self, largest=None):
        self.largest = largest
        self.calls = []
        self.recorded = {}

    def __call__(self, t, how):
        self.calls.append((how, t.dtype))
        self.recorded[how] = t.clone()
        if how == "max" and self.largest is not None:
            t.copy_(self.largest)


# The interpreter casts the NaN sums to int64 before the NaN unit turns them back to NaN.
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_view_blocks_add_to_the_whole_adjoint_bitwise_and_non_finite_gives_nan(kernels, gen):
    op = _operator(select_views("SVCT", 3, num_full=GEOMETRY.num_views))
    y = torch.rand(op.measurement_shape, generator=gen).to(DEVICE)
    # The last block's projections 1000x larger: its largest contribution sets every block's unit.
    y[2] *= 1000.0
    whole = _BlockCombine()
    op.view_block(0, 3, whole).A_adjoint(y)
    total = torch.zeros_like(whole.recorded["sum"])
    for start, stop in [(0, 2), (2, 3)]:
        block = _BlockCombine(whole.recorded["max"])
        op.view_block(start, stop, block).A_adjoint(y[start:stop])
        assert block.calls == [("max", torch.float64), ("sum", torch.int64)]
        total += block.recorded["sum"]
    assert torch.equal(total, whole.recorded["sum"])
    # A NaN or infinity in one block makes its largest contribution infinite, and so every
    # block's volume NaN.
    for bad in (math.nan, math.inf):
        y[1, 4, 5] = bad
        block = _BlockCombine()
        assert torch.isnan(op.view_block(1, 2, block).A_adjoint(y[1:2])).all()
        assert float(block.recorded["max"]) == math.inf
    assert torch.isnan(op.view_block(2, 3, _BlockCombine(block.recorded["max"])).A_adjoint(y[2:])).all()


def test_non_circular_geometry_falls_back_to_the_scatter_adjoint(kernels, gen):
    # Rows that also step in-plane (a tilted detector): no closed form for the gather.
    vecs = index_space_vectors(GEOMETRY, torch.tensor([0, 3]))
    vecs[:, 9] = 0.3
    y = torch.rand(2, *DET, generator=gen)
    tilted = vecs.float().to(DEVICE)
    assert kernels.gather_plan(kernels.geometry_table(tilted), DET, GEOMETRY.volume_shape) is None
    back = kernels.adjoint(y.to(DEVICE), tilted, GEOMETRY.volume_shape, 1.0)
    assert _relative(back, _torch_adjoint(y.double(), vecs, GEOMETRY.volume_shape, 1.0)) < 2e-6
    x = torch.rand(GEOMETRY.volume_shape, generator=gen, dtype=torch.float64)
    projected = kernels.forward(x.float().to(DEVICE), tilted, DET, 1.0)
    assert _relative(projected, _torch_forward(x, vecs, DET, 1.0)) < 2e-6
    with pytest.raises(ValueError, match="circular orbit"):
        kernels.adjoint_gather(y.to(DEVICE), tilted, GEOMETRY.volume_shape, 1.0)
