"""op.upfirdn2d's taps path (what torch.compile traces): the definition, layouts, dtypes and dispatch."""

import pytest
import torch

from op import upfirdn2d
from op.upfirdn2d import PATHS, choose_path, upfirdn2d_taps, upfirdn2d_torch
from tests.test_op_upfirdn2d import CASES, direct_upfirdn2d

MORE_CASES = [
    (2, 2, (2, 1, 3, 0), (4, 4), (7, 5)),  # both factors: zeros inserted first
    (3, 2, (2, 1, 1, 2), (3, 4), (9, 10)),
    (3, 1, (0, 0, 0, 0), (2, 2), (3, 3)),  # a phase that no tap meets is zero
    (1, 2, (2, 2, 2, 2), (4, 4), (9, 8)),
]


@pytest.mark.parametrize("up, down, pads, kernel_shape, size", CASES + MORE_CASES)
def test_taps_path_matches_definition(gen, up, down, pads, kernel_shape, size):
    x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
    kernel = torch.randn(*kernel_shape, generator=gen, dtype=torch.float64)
    out = upfirdn2d_taps(x, kernel, up, down, pads)
    expected = direct_upfirdn2d(x, kernel, up, down, pads)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("up, down, pads", [(2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)), (2, 2, (1, 2, 0, 3))])
def test_taps_path_keeps_channels_last_and_bf16(gen, up, down, pads):
    x = torch.randn(2, 4, 9, 8, generator=gen).contiguous(memory_format=torch.channels_last)
    kernel = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 16
    out = upfirdn2d_taps(x, kernel, up, down, pads)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, upfirdn2d_torch(x, kernel, up, down, pads), rtol=1e-6, atol=1e-6)
    low = upfirdn2d_taps(x.bfloat16(), kernel, up, down, pads)
    assert low.dtype == torch.bfloat16
    assert (low.float() - out).norm() / out.norm() < 1e-2


def test_tracing_takes_the_taps_path(gen):
    """Under torch.compile the op traces into the taps path in one graph, and eager CPU stays on torch."""
    x = torch.randn(1, 2, 6, 6, generator=gen)
    kernel = torch.rand(4, 4, generator=gen)
    seen = []

    def spy(*args):
        seen.append(choose_path(args[0]))
        return upfirdn2d(*args, up=2, pad=(2, 1))

    traced = torch.compile(spy, backend="eager", fullgraph=True)
    torch.testing.assert_close(traced(x, kernel), upfirdn2d_torch(x, kernel, 2, 1, (2, 1, 2, 1)))
    assert seen == ["taps"]
    assert choose_path(x) == "torch"
    assert set(PATHS) == {"cuda", "triton", "torch", "taps"}
