"""Denoiser: D(x, sigma) = x + sigma^2 score, chunked like unchunked, memory estimate, argument checks."""

import os

import pytest
import torch

from models import Denoiser, bytes_per_slice, load_config, load_score_model

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


def test_memory_estimate_scales_with_size_and_precision():
    config = load_config(os.path.join(ROOT, "configs", "ve", "AAPM_256_ncsnpp_Chung.yaml"))
    fp32, bf16 = bytes_per_slice(config, "fp32"), bytes_per_slice(config, "bf16")
    assert fp32 == 2 * bf16
    assert 100e6 < bf16 < 1e9
    small = load_config({**config.to_dict(), "data": {**config.data.to_dict(), "image_size": 128}})
    assert bytes_per_slice(small, "fp32") == pytest.approx(fp32 / 4, rel=0.25)


def test_bad_arguments(net):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        Denoiser(net, precision="fp16")
    with pytest.raises(ValueError, match="slice_batch must be a positive integer or None, got 0"):
        Denoiser(net, slice_batch=0)
    with pytest.raises(ValueError, match=r"slice stack \[N, C, H, W\]"):
        Denoiser(net)(torch.zeros(1, 32, 32), 1.0)
    with pytest.raises(ValueError, match="python float or a 0-d tensor"):
        Denoiser(net)(torch.zeros(2, 1, 32, 32), torch.ones(2))
