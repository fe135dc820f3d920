"""Denoiser's fixed-shape path (compile / CUDA graph): balanced chunks, zero padding, same numbers, checks."""

import os

import pytest
import torch

from models import Denoiser, load_config, load_score_model
from models.denoiser import balanced_chunk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "data", "parity_small_config.yaml")
CHECKPOINT = os.path.join(ROOT, "tests", "data", "parity_small_checkpoint.pth")


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
    with pytest.raises(ValueError, match="compile must be True, False or one of default, reduce-overhead"):
        Denoiser(net, compile="fast")
    with pytest.raises(ValueError, match="compile mode 'reduce-overhead' captures CUDA graphs itself"):
        Denoiser(net, compile="reduce-overhead", cuda_graph=True)
