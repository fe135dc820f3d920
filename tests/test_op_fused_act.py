"""op.fused_bias_act: the torch path against the direct formula, and argument checks."""

import math

import pytest
import torch

from op import ACTIVATIONS, fused_bias_act, fused_leaky_relu

FORMULAS = {
    "linear": lambda v, a: v,
    "relu": lambda v, a: torch.where(v > 0, v, torch.zeros_like(v)),
    "lrelu": lambda v, a: torch.where(v > 0, v, a * v),
    "silu": lambda v, a: v / (1 + torch.exp(-v)),
    "elu": lambda v, a: torch.where(v > 0, v, a * (torch.exp(v) - 1)),
}


def test_every_activation_has_a_formula():
    assert set(FORMULAS) == set(ACTIVATIONS)


@pytest.mark.parametrize("act", sorted(FORMULAS))
def test_matches_direct_formula(gen, act):
    x = torch.randn(3, 5, 4, 2, generator=gen, dtype=torch.float64)
    bias = torch.randn(5, generator=gen, dtype=torch.float64)
    alpha, gain = 0.3, 1.7
    out = fused_bias_act(x, bias, act, alpha=alpha, gain=gain)
    expected = FORMULAS[act](x + bias[None, :, None, None], alpha) * gain
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_defaults_follow_the_table(gen):
    x = torch.randn(4, 3, generator=gen)
    expected = torch.where(x > 0, x, 0.2 * x) * math.sqrt(2.0)
    torch.testing.assert_close(fused_bias_act(x, act="lrelu"), expected)
    torch.testing.assert_close(fused_leaky_relu(x), expected)


def test_bf16_rounds_once(gen):
    """16-bit inputs are computed in fp32 and rounded once, as the CUDA kernel does."""
    x = torch.randn(2, 8, 5, generator=gen).bfloat16()
    bias = torch.randn(8, generator=gen).bfloat16()
    out = fused_bias_act(x, bias, "silu", gain=1.0)
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.silu(x.float() + bias.float()[None, :, None]).bfloat16()
    assert torch.equal(out, expected)


def test_gradients_reach_input_and_bias(gen):
    x = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fused_bias_act(a, b, "elu", alpha=0.7, gain=1.3), (x, bias))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown act 'gelu'; accepted: linear, relu, lrelu, silu, elu"):
        fused_bias_act(torch.zeros(2, 3), act="gelu")
    with pytest.raises(ValueError, match=r"bias must have shape \[3\]"):
        fused_bias_act(torch.zeros(2, 3), torch.zeros(4))
    with pytest.raises(TypeError, match="at least 2 dims"):
        fused_bias_act(torch.zeros(3))
