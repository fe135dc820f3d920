"""Denoiser: D(x, sigma) = x + sigma^2 score, chunked like unchunked, chunk sizing, out-of-memory
halving, the compile rule and cache folder, argument checks."""

import os

import pytest
import torch

import models.denoiser as denoiser_module
from models import (
    Denoiser,
    DenoiserMemoryError,
    check_slice_batch,
    load_config,
    load_score_model,
    should_compile,
)
from models.denoiser import KNEE_PIXELS, configure_compile_cache, fit_chunk, knee_slices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "data", "parity_small_config.yaml")
CHECKPOINT = os.path.join(ROOT, "tests", "data", "parity_small_checkpoint.pth")


@pytest.fixture(scope="module")
def net():
    return load_score_model(CONFIG, CHECKPOINT)


class ScaleNet(torch.nn.Module):
    """A stand-in network whose score is -x / sigma (per slice)."""

    config = load_config(CONFIG)

    def forward(self, x, sigma):
        return -x / sigma[:, None, None, None]


def test_denoiser_formula(gen):
    x = torch.rand(5, 1, 4, 4, generator=gen)
    denoiser = Denoiser(ScaleNet(), slice_batch=2)
    torch.testing.assert_close(denoiser(x, 3.0), x - 3.0 * x)
    torch.testing.assert_close(denoiser.score(x, torch.tensor(2.0)), -x / 2.0)


@pytest.mark.parametrize("slice_batch", [1, 3, None])
def test_chunked_equals_unchunked(net, gen, slice_batch):
    x = torch.rand(7, 1, 32, 32, generator=gen)
    whole = Denoiser(net, slice_batch=7)(x, 0.8)
    chunked = Denoiser(net, slice_batch=slice_batch)(x, 0.8)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_denoiser_matches_the_network(net, gen):
    x = torch.rand(2, 1, 32, 32, generator=gen)
    with torch.no_grad():
        score = net(x, torch.full((2,), 4.0))
    torch.testing.assert_close(Denoiser(net)(x, 4.0), x + 16.0 * score)


def test_bf16_is_close_and_fp32_out(net, gen):
    x = torch.rand(3, 1, 32, 32, generator=gen)
    exact = Denoiser(net)(x, 2.0)
    approx = Denoiser(net, precision="bf16")(x, 2.0)
    assert approx.dtype == torch.float32
    assert (approx - exact).norm() / exact.norm() < 2e-2


def test_chunk_size_on_cpu_is_fixed(net):
    assert Denoiser(net).chunk_size(torch.zeros(9, 1, 32, 32)) == 4
    assert Denoiser(net, slice_batch=6).chunk_size(torch.zeros(9, 1, 32, 32)) == 6


def test_knee_and_memory_fit():
    assert knee_slices(256, 256) == 32 and knee_slices(128, 128) == 128 and knee_slices(4096, 4096) == 1
    assert knee_slices(100, 100) == KNEE_PIXELS // 10_000
    gib, mib = 2**30, 2**20
    # 100 MiB a slice with the 1.25 margin: 10 GiB hold 81 slices, capped at the knee; 1 GiB holds 8.
    assert fit_chunk(100 * mib, 10 * gib, knee=32) == 32
    assert fit_chunk(100 * mib, 10 * gib, knee=128) == 81
    assert fit_chunk(100 * mib, 1 * gib, knee=32) == 8
    assert fit_chunk(100 * mib, -gib, knee=32) == 1


class OutOfMemoryAbove(torch.nn.Module):
    """Score -x / sigma, but a CUDA out-of-memory error for batches above limit (recorded either way)."""

    config = load_config(CONFIG)

    def __init__(self, limit, wrap=False):
        super().__init__()
        self.limit, self.wrap, self.batches = limit, wrap, []

    def forward(self, x, sigma):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if not self.wrap:
                raise error
            # Compilers re-raise it wrapped in their own error types.
            raise RuntimeError("backend compiler failed") from error
        return -x / sigma[:, None, None, None]


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "wrapped"])
def test_out_of_memory_halves_the_chunk_once_and_goes_on(gen, wrap):
    net = OutOfMemoryAbove(limit=3, wrap=wrap)
    x = torch.rand(10, 1, 8, 8, generator=gen)
    denoiser = Denoiser(net, slice_batch=8)
    with pytest.warns(RuntimeWarning, match="8 slices per call ran out of memory; going on with 4") as caught:
        out = denoiser(x, 2.0)
    assert len(caught) == 1
    torch.testing.assert_close(out, x - 2.0 * x)
    assert net.batches == [8, 4, 2, 2, 2, 2, 2]
    net.batches.clear()
    denoiser(x, 2.0)
    assert net.batches == [2] * 5


def test_out_of_memory_at_one_slice_is_one_line(gen):
    denoiser = Denoiser(OutOfMemoryAbove(limit=0), slice_batch=2)
    with pytest.warns(RuntimeWarning), pytest.raises(DenoiserMemoryError) as info:
        denoiser(torch.rand(3, 1, 8, 8, generator=gen), 1.0)
    message = str(info.value)
    assert (
        "\n" not in message
        and "one slice of 1x8x8 does not fit" in message
        and "Tried to allocate 2.00 GiB" in message
    )


def test_other_errors_are_not_taken_for_out_of_memory(gen):
    class Broken(torch.nn.Module):
        def forward(self, x, sigma):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        Denoiser(Broken(), slice_batch=2)(torch.rand(3, 1, 8, 8, generator=gen), 1.0)


def test_memory_is_measured_on_cuda_only(net):
    with pytest.raises(ValueError, match="memory is measured on CUDA devices only, got a tensor on cpu"):
        Denoiser(net).measure_bytes_per_slice(torch.zeros(2, 1, 32, 32))


def test_slice_batch_check():
    check_slice_batch(None, 5)
    check_slice_batch(5, 5)
    with pytest.raises(
        ValueError, match=r"^slice batch 6 exceeds the volume's 5 slices; accepted: 1 to 5, or none"
    ):
        check_slice_batch(6, 5)
    with pytest.raises(ValueError, match="slice batch must be a positive integer, got 0"):
        check_slice_batch(0, 5)


def test_should_compile_weighs_the_saving_against_the_compile_time(monkeypatch):
    monkeypatch.setattr(denoiser_module, "triton_supported", lambda device: True)
    monkeypatch.setattr(denoiser_module, "EAGER_S_PER_SLICE_256", 2.0)
    monkeypatch.setattr(denoiser_module, "COMPILED_S_PER_SLICE_256", 1.0)
    monkeypatch.setattr(denoiser_module, "COMPILE_SECONDS", 100.0)
    # Saving 1 s per 256 x 256 slice and step: 10 x 10 saves exactly the compile time, 11 x 10 more.
    assert not should_compile(10, 10, 256, "cuda")
    assert should_compile(11, 10, 256, torch.device("cuda", 0))
    assert not should_compile(11, 10, 128, "cuda") and should_compile(41, 10, (128, 128), "cuda")
    assert not should_compile(10**6, 10**3, 256, "cpu")


def test_shipped_compile_constants_compile_only_where_eager_is_slow(monkeypatch):
    # Without Triton the eager network is about twice the compiled one: long runs compile.
    monkeypatch.setattr(denoiser_module, "triton_supported", lambda device: False)
    assert should_compile(512, 100, 256, "cuda")
    assert not should_compile(16, 10, 128, "cuda")
    # With Triton it is within 3 %: only about a million slice evaluations pay the compile back.
    monkeypatch.setattr(denoiser_module, "triton_supported", lambda device: True)
    assert not should_compile(512, 100, 256, "cuda")
    assert should_compile(2048, 1000, 256, "cuda")


def test_compile_cache_folder_is_per_user_and_never_overrides(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "environ", {"XDG_CACHE_HOME": str(tmp_path), "TRITON_CACHE_DIR": "/users/choice"})
    configure_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "iscs" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == "/users/choice"


def test_bad_arguments(net):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        Denoiser(net, precision="fp16")
    with pytest.raises(ValueError, match="slice_batch must be a positive integer or None, got 0"):
        Denoiser(net, slice_batch=0)
    with pytest.raises(ValueError, match=r"slice stack \[N, C, H, W\]"):
        Denoiser(net)(torch.zeros(1, 32, 32), 1.0)
    with pytest.raises(ValueError, match="python float or a 0-d tensor"):
        Denoiser(net)(torch.zeros(2, 1, 32, 32), torch.ones(2))


def test_cuda_graph_by_default_on_cuda_only(net, recwarn):
    """cuda_graph=None: a graph on CUDA devices (decided at the first call), unless the compile mode
    replays graphs itself; none on the CPU, and no warning there."""
    cpu = Denoiser(net)
    cpu(torch.rand(3, 1, 8, 8), 0.5)
    assert cpu.cuda_graph is False and not cpu.fixed_shape and not recwarn.list
    cuda = Denoiser(net)
    cuda._resolve_auto(torch.device("cuda", 0))
    assert cuda.cuda_graph is True and cuda.fixed_shape
    graphs_itself = Denoiser(net, compile="reduce-overhead")
    graphs_itself._resolve_auto(torch.device("cuda", 0))
    assert graphs_itself.cuda_graph is False
