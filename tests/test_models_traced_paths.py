"""What NCSN++ runs under torch.compile: channel-wise GroupNorm statistics; one graph, eager's numbers."""

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.layers import GroupNorm, group_norm_channelwise
from tests.test_models_ncsnpp import tiny_config, tiny_inputs


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channelwise_group_norm_equals_the_library(gen, layout):
    # An offset mean makes the group variance depend on combining the channel means correctly.
    x = (torch.randn(3, 64, 9, 7, generator=gen, dtype=torch.float64) * 2 + 5).contiguous(
        memory_format=layout
    )
    weight = torch.randn(64, generator=gen, dtype=torch.float64)
    bias = torch.randn(64, generator=gen, dtype=torch.float64)
    expected = F.group_norm(x, 16, weight, bias, 1e-6)
    torch.testing.assert_close(
        group_norm_channelwise(x, 16, weight, bias, 1e-6), expected, rtol=1e-12, atol=1e-12
    )
    low = group_norm_channelwise(x.bfloat16(), 16, weight.float(), bias.float(), 1e-6)
    assert low.dtype == torch.bfloat16
    assert (low.double() - expected).norm() / expected.norm() < 1e-2


def test_group_norm_module_traces_into_the_channelwise_path(gen, monkeypatch):
    norm = GroupNorm(32).eval()
    x = torch.randn(2, 32, 5, 5, generator=gen)
    used = []
    monkeypatch.setattr(
        "models.layers._GROUP_NORM",
        {
            "eager": lambda *a: used.append("eager") or F.group_norm(*a),
            "traced": lambda *a: used.append("traced") or group_norm_channelwise(*a),
        },
    )
    eager = norm(x)
    traced = torch.compile(norm, backend="eager", fullgraph=True)(x)
    assert used == ["eager", "traced"]
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


def test_ncsnpp_traces_in_one_graph_with_the_same_numbers(gen):
    """The whole network traces without graph breaks (fullgraph), on the taps FIR and channel-wise
    GroupNorm paths, and gives eager's output."""
    net = build_model(tiny_config(init_scale=1.0), generator=torch.Generator().manual_seed(3)).eval()
    x, sigma = tiny_inputs(gen)
    with torch.no_grad():
        expected = net(x, sigma)
        traced = torch.compile(net, backend="eager", fullgraph=True, dynamic=False)(x, sigma)
    torch.testing.assert_close(traced, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("progressive_input", ["residual", "input_skip", "none"])
def test_under_autocast_the_input_image_is_convolved_in_fp32(gen, progressive_input):
    """Under bf16 autocast, exactly the convolutions that read the input image compute in fp32 (their
    output is fp32 before it is handed on in bf16); every other one in bf16; one graph still."""
    net = build_model(
        tiny_config(progressive_input=progressive_input), generator=torch.Generator().manual_seed(3)
    ).eval()
    x, sigma = tiny_inputs(gen)
    outputs = {}

    def record(module, args, output):
        outputs.setdefault(module, output.dtype)

    for module in net.modules():
        if type(module).__name__ in ("Conv2d", "FIRConv2d"):
            module.register_forward_hook(record)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eager = net(x, sigma)
        traced = torch.compile(net, backend="eager", fullgraph=True, dynamic=False)(x, sigma)
    in_fp32 = [module for module, dtype in outputs.items() if dtype == torch.float32]
    assert {module.weight.shape[1] for module in in_fp32} == {x.shape[1]}
    assert len(in_fp32) == {"residual": 2, "input_skip": 3, "none": 1}[progressive_input]
    assert all(dtype in (torch.float32, torch.bfloat16) for dtype in outputs.values())
    torch.testing.assert_close(traced, eager)


def test_a_network_with_bf16_weights_runs_as_it_is_under_autocast(gen):
    """Weights stored in bf16 (bench_network's bf16w variants) are not fed an fp32 image."""
    net = build_model(tiny_config(), generator=torch.Generator().manual_seed(3)).eval()
    x, sigma = tiny_inputs(gen)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        score = net.to(torch.bfloat16)(x, sigma)
    assert score.shape == x.shape and torch.isfinite(score).all()
