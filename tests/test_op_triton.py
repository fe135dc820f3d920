"""The Triton kernels for channels_last CUDA tensors (GroupNorm + bias + SiLU, upfirdn2d, residual
sum with a bias), their torch twins, and the network's fused path that uses them."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models.denoiser as denoiser_module
import op._extension as extension
from models import Denoiser, build_model
from models.layers import GroupNorm
from op.group_norm import group_norm_channelwise
from tests.test_models_ncsnpp import tiny_config, tiny_inputs

ROOT = Path(__file__).resolve().parents[1]


def _library(x, groups, weight, bias, silu, pre_bias):
    shifted = x if pre_bias is None else x + pre_bias[:, :, None, None]
    y = F.group_norm(shifted, groups, weight, bias, 1e-6)
    return F.silu(y) if silu else y


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_twin_equals_the_library_with_bias_and_silu(gen, silu, with_bias, layout):
    # Offset means make the group statistics depend on the bias and on combining the channel means.
    x = torch.randn(3, 64, 9, 7, generator=gen, dtype=torch.float64) * 2 + 5
    x = x.contiguous(memory_format=layout)
    weight = torch.randn(64, generator=gen, dtype=torch.float64)
    bias = torch.randn(64, generator=gen, dtype=torch.float64)
    pre_bias = torch.randn(3, 64, generator=gen, dtype=torch.float64) * 3 if with_bias else None
    got = group_norm_channelwise(x, 16, weight, bias, 1e-6, silu, pre_bias)
    torch.testing.assert_close(got, _library(x, 16, weight, bias, silu, pre_bias), rtol=1e-12, atol=1e-12)


def test_normalize_act_off_the_fused_path_is_the_separate_steps_bitwise(gen):
    norm = GroupNorm(64).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=gen))
        norm.bias.copy_(torch.randn(64, generator=gen))
    x = torch.randn(2, 64, 6, 5, generator=gen)
    t = torch.randn(2, 64, generator=gen)
    for act in (nn.SiLU(), nn.ELU(), None):
        expected = norm(x + t[:, :, None, None])
        expected = expected if act is None else act(expected)
        assert torch.equal(norm.normalize_act(x, act, t), expected)


def test_normalize_act_fuses_only_silu_or_no_activation(gen, monkeypatch):
    norm = GroupNorm(32).eval()
    x = torch.randn(2, 32, 4, 4, generator=gen)
    t = torch.randn(2, 32, generator=gen)
    calls = []

    def fused(x, groups, weight, bias, eps, silu, pre_bias):
        calls.append((groups, eps, silu, pre_bias))
        return group_norm_channelwise(x, groups, weight, bias, eps, silu, pre_bias)

    monkeypatch.setattr("models.layers.use_inference_kernels", lambda x: True)
    monkeypatch.setattr("models.layers.group_norm_act", fused)
    torch.testing.assert_close(norm.normalize_act(x, nn.SiLU(), t), F.silu(norm(x + t[:, :, None, None])))
    norm.normalize_act(x)
    norm.normalize_act(x, nn.ELU(), t)
    assert [(g, e, s, p is t) for g, e, s, p in calls] == [(8, 1e-6, True, True), (8, 1e-6, False, False)]


_KERNEL_CHECK = textwrap.dedent(
    """
    import sys, torch
    from op import group_norm_triton as kernels
    from op.group_norm import group_norm_channelwise
    device = sys.argv[1]
    gen = torch.Generator().manual_seed(0)
    worst = {}
    # C=96 and 384 leave a partial channel block; 300 and 37 x 41 pixels a partial pixel tile;
    # TARGET_PROGRAMS=2 makes each program combine many tiles (Chan's formula).
    for targets in (2048, 2):
        kernels.TARGET_PROGRAMS = targets
        for n, c, h, w in ((2, 96, 15, 20), (1, 384, 37, 41), (3, 128, 16, 16)):
            for dtype in (torch.float32, torch.bfloat16):
                x = (torch.randn(n, c, h, w, generator=gen) * 2 + 5).to(dtype)
                x = x.to(device).contiguous(memory_format=torch.channels_last)
                weight, bias = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
                pre_bias = torch.randn(n, c, generator=gen)
                weight, bias, pre_bias = weight.to(device), bias.to(device), pre_bias.to(device)
                groups = c // 4 if c < 128 else 32
                for silu in (False, True):
                    got = kernels.group_norm_act(x, groups, weight, bias, 1e-6, silu, pre_bias)
                    want = group_norm_channelwise(x, groups, weight, bias, 1e-6, silu, pre_bias)
                    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
                    scale = want.float().abs().max().item()
                    error = (got.float() - want.float()).abs().max().item() / scale
                    worst[str(dtype)] = max(worst.get(str(dtype), 0.0), error)
    # fp32: rounding of the statistics only; bf16: at most one rounding step of the output apart.
    assert worst["torch.float32"] < 1e-5, worst
    assert worst["torch.bfloat16"] < 2 ** -7, worst

    from op import channels_last_triton as cl
    from op.upfirdn2d import upfirdn2d_torch
    kernel = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1]))
    kernel = (kernel / kernel.sum()).to(device)
    odd = torch.rand(3, 5, generator=gen).to(device)
    # NCSN++'s cases (up, down, FIRConv2d pads), negative pads (crops), an odd kernel and up/down 3.
    cases = [(kernel, 2, 1, (2, 1, 2, 1)), (kernel, 1, 2, (1, 1, 1, 1)), (kernel, 1, 1, (2, 2, 2, 2)),
             (kernel, 1, 1, (-1, 2, 0, -2)), (odd, 3, 1, (1, 2, 0, 3)), (odd, 1, 3, (2, 0, 1, 1))]
    for c in (1, 96, 256):
        x64 = torch.randn(2, c, 13, 10, generator=gen, dtype=torch.float64).to(device)
        for taps, up, down, pads in cases:
            want = upfirdn2d_torch(x64, taps.double(), up, down, pads)
            for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2 ** -7)):
                x = x64.to(dtype).contiguous(memory_format=torch.channels_last)
                got = cl.upfirdn2d(x, taps, up, down, pads)
                assert got.shape == want.shape and got.dtype == dtype
                assert got.is_contiguous(memory_format=torch.channels_last)
                error = (got.double() - want).abs().max().item() / want.abs().max().item()
                assert error < tolerance, (c, up, down, pads, dtype, error)

    x = torch.randn(2, 40, 7, 9, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    h = torch.randn(2, 40, 7, 9, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(40, generator=gen).to(device)
    got = cl.residual_sum(x, h, bias, 0.5 ** 0.5)
    want = (x + h + bias[:, None, None]) * 0.5 ** 0.5
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - want).abs().max().item() < 1e-5
    print(worst)
    """
)


def _triton_importable():
    return importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(
    not torch.cuda.is_available() or not _triton_importable(), reason="needs CUDA and Triton"
)
def test_triton_kernels_match_the_twin_on_cuda():
    command = [sys.executable, "-c", _KERNEL_CHECK, "cuda"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(
    torch.cuda.is_available() or not _triton_importable() or np.lib.NumpyVersion(np.__version__) >= "2.3.0",
    reason="for machines without CUDA that have Triton, whose interpreter (3.6) needs numpy < 2.3",
)
def test_triton_kernels_match_the_twin_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-c", _KERNEL_CHECK, "cpu"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_fused_path_folds_the_biases_into_the_same_network(gen, monkeypatch):
    """The fused path leaves the convolutions' biases to the ops that follow (GroupNorm's pre-bias,
    the residual sum) and computes the same network."""
    net = build_model(tiny_config(init_scale=1.0), generator=torch.Generator().manual_seed(3)).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=gen))
    x, sigma = tiny_inputs(gen)
    with torch.no_grad():
        expected = net(x, sigma)
        twin = SimpleNamespace(
            residual_sum=lambda x, h, bias, scale: (x + h + bias.reshape(1, -1, 1, 1)) * scale
        )
        monkeypatch.setattr("models.layers.use_inference_kernels", lambda x: True)
        monkeypatch.setattr("models.layers.triton_kernels", lambda name: twin)
        folded = net(x, sigma)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


def test_denoiser_layout_follows_the_fused_norm(gen, monkeypatch):
    net = build_model(tiny_config(init_scale=1.0), generator=torch.Generator().manual_seed(3)).eval()
    x, _ = tiny_inputs(gen)
    nchw = Denoiser(net)
    expected = nchw(x, 0.5)
    assert nchw.memory_format == torch.contiguous_format
    monkeypatch.setattr(denoiser_module, "triton_supported", lambda device: True)
    fused = Denoiser(net)
    torch.testing.assert_close(fused(x, 0.5), expected, rtol=1e-4, atol=1e-5)
    assert fused.memory_format == torch.channels_last
    assert net.all_modules[net.conv_in].weight.is_contiguous(memory_format=torch.channels_last)


def test_gradients_keep_the_kernels_without_backward_out(monkeypatch):
    """The Triton GroupNorm and residual-sum kernels have no backward: they run only where
    autograd records nothing (training takes the library path)."""
    monkeypatch.setattr(extension, "use_channels_last_kernels", lambda x: True)
    x = torch.zeros(1, 4, 2, 2)
    assert not extension.use_inference_kernels(x)
    with torch.no_grad():
        assert extension.use_inference_kernels(x)
