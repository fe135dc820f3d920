"""Denoiser's fixed-shape path (compile / CUDA graph): balanced chunks, zero padding, full and regional
compilation with eager's numbers, out-of-memory halving, checks."""

import os

import pytest
import torch

from models import Denoiser, build_model, load_config, load_score_model
from models.denoiser import REGIONAL_BLOCKS, balanced_chunk, compile_regions
from tests.test_models_ncsnpp import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "data", "parity_small_config.yaml")
CHECKPOINT = os.path.join(ROOT, "tests", "data", "parity_small_checkpoint.pth")
INDUCTOR_TESTS = "ISCS_INDUCTOR_TESTS"


class ShapeRecorder(torch.nn.Module):
    """Score -x / sigma per slice, recording the input shapes and whether padded rows are zero."""

    config = load_config(CONFIG)

    def __init__(self):
        super().__init__()
        self.shapes = []
        self.inputs = []

    def forward(self, x, sigma):
        self.shapes.append(tuple(x.shape))
        self.inputs.append(x.clone())
        return -x / sigma[:, None, None, None]


@pytest.fixture(autouse=True)
def compile_caches_in_tmp(monkeypatch, tmp_path):
    """Compile caches of these tests go to a temporary folder (set as the user's choice)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by a recorder of its arguments that returns the module unchanged."""
    calls = []

    def compile_stub(module, **kwargs):
        calls.append(kwargs)
        return module

    monkeypatch.setattr(torch, "compile", compile_stub)
    return calls


@pytest.mark.parametrize(
    "num_slices, limit, expected",
    [(256, 175, 128), (512, 175, 171), (256, 256, 256), (7, 3, 3), (9, 4, 3), (1, 4, 1)],
)
def test_balanced_chunk(num_slices, limit, expected):
    size = balanced_chunk(num_slices, limit)
    assert size == expected
    chunks = -(-num_slices // size)
    assert size <= limit and chunks == -(-num_slices // limit) and chunks * size - num_slices < chunks


def test_compiled_path_sees_one_shape_and_zero_padding(gen, fake_compile):
    net = ShapeRecorder()
    x = torch.rand(10, 1, 4, 4, generator=gen)
    denoiser = Denoiser(net, slice_batch=4, compile="max-autotune-no-cudagraphs")
    out = denoiser(x, 2.0)
    # 10 slices under a limit of 4: three chunks of 4 (not 4, 4, 2), the last with two zero slices.
    assert net.shapes == [(4, 1, 4, 4)] * 3
    assert torch.count_nonzero(net.inputs[-1][2:]) == 0
    torch.testing.assert_close(out, x - 2.0 * x)
    assert fake_compile == [{"mode": "max-autotune-no-cudagraphs", "dynamic": False}]
    denoiser(x[:9], 1.0)
    assert net.shapes[-1] == (3, 1, 4, 4) and len(fake_compile) == 1


def test_fixed_shape_matches_the_plain_path(gen, fake_compile):
    net = load_score_model(CONFIG, CHECKPOINT)
    x = torch.rand(3, 1, 32, 32, generator=gen)
    plain = Denoiser(net, slice_batch=2)(x, 0.7)
    fixed = Denoiser(net, slice_batch=2, compile=True, channels_last=True)
    torch.testing.assert_close(fixed(x, torch.tensor(0.7)), plain, rtol=1e-5, atol=1e-5)
    assert fake_compile == [{"mode": "default", "dynamic": False}]


def test_cuda_graph_off_cuda_warns_once_and_runs(gen):
    net = ShapeRecorder()
    x = torch.rand(3, 1, 4, 4, generator=gen)
    denoiser = Denoiser(net, slice_batch=2, cuda_graph=True)
    with pytest.warns(RuntimeWarning, match="cuda_graph applies to CUDA tensors only"):
        out = denoiser(x, 3.0)
    torch.testing.assert_close(out, x - 3.0 * x)
    assert net.shapes == [(2, 1, 4, 4)] * 2


def test_bad_fast_options():
    net = ShapeRecorder()
    with pytest.raises(
        ValueError, match="compile must be True, False or one of full, regional, default, reduce"
    ):
        Denoiser(net, compile="fast")
    with pytest.raises(ValueError, match="compile mode 'reduce-overhead' captures CUDA graphs itself"):
        Denoiser(net, compile="reduce-overhead", cuda_graph=True)


def test_regional_compiles_each_block_and_leaves_the_network_alone(gen, fake_compile):
    net = load_score_model(CONFIG, CHECKPOINT)
    blocks = [m for m in net.all_modules if isinstance(m, REGIONAL_BLOCKS)]
    x = torch.rand(3, 1, 32, 32, generator=gen)
    plain = Denoiser(net, slice_batch=2)(x, 0.7)
    torch.testing.assert_close(
        Denoiser(net, slice_batch=2, compile="regional")(x, 0.7), plain, rtol=1e-5, atol=1e-5
    )
    assert len(blocks) == 23 and fake_compile == [{"mode": "default", "dynamic": False}] * len(blocks)


def test_compile_regions_swaps_blocks_in_a_shallow_copy():
    net = build_model(CONFIG)
    compiled = compile_regions(net)
    assert compiled is not net and compiled.all_modules is not net.all_modules
    for mine, theirs in zip(net.all_modules, compiled.all_modules, strict=True):
        if isinstance(mine, REGIONAL_BLOCKS):
            assert theirs is not mine and theirs._orig_mod is mine
        else:
            assert theirs is mine
    assert not any(type(m).__name__ == "OptimizedModule" for m in net.modules())


@pytest.fixture
def traced_compile(monkeypatch):
    """torch.compile with dynamo's tracing only (backend "eager"): the regions are traced and run as
    graphs, at a fraction of inductor's compile time."""
    real = torch.compile

    def compile_traced(module, mode=None, dynamic=None):
        return real(module, backend="eager", dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", compile_traced)


def _tiny_network():
    return build_model(tiny_config(init_scale=1.0), generator=torch.Generator().manual_seed(3)).eval()


def test_traced_regions_give_eager_numbers(gen, traced_compile):
    """Each block runs as its own traced graph (the whole network's trace is tested in
    test_models_traced_paths)."""
    net = _tiny_network()
    x = torch.rand(3, 1, 16, 16, generator=gen)
    eager = Denoiser(net, slice_batch=2)(x, 2.0)
    regional = Denoiser(net, slice_batch=2, compile="regional")
    torch.testing.assert_close(regional(x, 2.0), eager, rtol=1e-5, atol=1e-5)
    blocks = sum(isinstance(m, REGIONAL_BLOCKS) for m in net.modules())
    assert sum(type(m).__name__ == "OptimizedModule" for m in regional._network.modules()) == blocks == 18


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get(INDUCTOR_TESTS) != "1",
    reason=f"inductor's C++ compile takes minutes on a small CPU; set {INDUCTOR_TESTS}=1 to run it",
)
@pytest.mark.parametrize("scope", ["full", "regional"])
def test_inductor_scopes_give_eager_numbers_on_cpu(gen, scope):
    """Real inductor code for the CPU (needs a C++ compiler; skipped where compiling fails)."""
    net = _tiny_network()
    x = torch.rand(2, 1, 16, 16, generator=gen)
    eager = Denoiser(net, slice_batch=x.shape[0])(x, 1.5)
    try:
        compiled = Denoiser(net, slice_batch=x.shape[0], compile=scope)(x, 1.5)
    except Exception as err:  # noqa: BLE001 -- no compiler, or no inductor for this platform
        pytest.skip(f"torch.compile is not available here ({type(err).__name__}: {str(err)[:100]})")
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_fixed_shape_out_of_memory_rebuilds_a_smaller_call(gen, fake_compile):
    class OutOfMemoryAbove(ShapeRecorder):
        def forward(self, x, sigma):
            if x.shape[0] > 3:
                self.shapes.append(tuple(x.shape))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            return super().forward(x, sigma)

    net = OutOfMemoryAbove()
    x = torch.rand(10, 1, 4, 4, generator=gen)
    denoiser = Denoiser(net, slice_batch=8, compile=True)
    with pytest.warns(RuntimeWarning, match="5 slices per call ran out of memory; going on with 2"):
        out = denoiser(x, 2.0)
    # 10 slices under 8: two chunks of 5; after the failure a limit of 2: five chunks of 2.
    assert net.shapes == [(5, 1, 4, 4)] + [(2, 1, 4, 4)] * 5
    torch.testing.assert_close(out, x - 2.0 * x)
    assert len(denoiser._calls) == 1 and len(fake_compile) == 1
