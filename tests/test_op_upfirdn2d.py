"""op.upfirdn2d: the torch path against a direct loop implementation, its adjoint backward, and errors."""

import pytest
import torch
import torch.nn.functional as F

from op import upfirdn2d
from op.upfirdn2d import _UpFirDn2d


def direct_upfirdn2d(x, kernel, up, down, pads):
    """Definition by loops: zero insertion, zero padding (negative crops), true convolution, decimation."""
    px0, px1, py0, py1 = pads
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    upsampled = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    upsampled[:, :, ::up, ::up] = x
    padded_h, padded_w = h * up + py0 + py1, w * up + px0 + px1
    out_h, out_w = (padded_h - kh) // down + 1, (padded_w - kw) // down + 1
    out = torch.zeros(n, c, out_h, out_w, dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            for a in range(kh):
                for b in range(kw):
                    src_y, src_x = i * down + a - py0, j * down + b - px0
                    if 0 <= src_y < h * up and 0 <= src_x < w * up:
                        out[:, :, i, j] += upsampled[:, :, src_y, src_x] * kernel[kh - 1 - a, kw - 1 - b]
    return out


CASES = [
    # up, down, pads (x0, x1, y0, y1), kernel shape, input (H, W)
    (2, 1, (2, 1, 2, 1), (4, 4), (5, 7)),  # NCSN++ FIR upsampling
    (1, 2, (1, 1, 1, 1), (4, 4), (7, 6)),  # NCSN++ FIR downsampling, odd height
    (1, 1, (2, 2, 2, 2), (4, 4), (5, 5)),  # NCSN++ filter before the strided convolution
    (1, 1, (1, 1, 1, 1), (4, 4), (6, 3)),  # filter after the transposed convolution
    (2, 2, (1, 2, 0, 3), (3, 5), (5, 4)),
    (2, 1, (0, 3, 1, 0), (3, 2), (3, 5)),  # upsampling the transposed-conv form cannot express
    (1, 1, (-1, 2, 1, -1), (3, 2), (6, 5)),  # negative pads crop
    (1, 2, (0, 0, 0, 0), (1, 1), (5, 5)),  # plain decimation
    (2, 1, (0, 0, 0, 0), (1, 1), (3, 4)),  # plain zero insertion
]


@pytest.mark.parametrize("up, down, pads, kernel_shape, size", CASES)
def test_torch_path_matches_definition(gen, up, down, pads, kernel_shape, size):
    x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
    kernel = torch.randn(*kernel_shape, generator=gen, dtype=torch.float64)
    out = upfirdn2d(x, kernel, up=up, down=down, pad=pads)
    expected = direct_upfirdn2d(x, kernel, up, down, pads)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("up, down, pads, kernel_shape, size", CASES)
def test_backward_is_the_adjoint(gen, up, down, pads, kernel_shape, size):
    """The backward used with the CUDA kernel (upfirdn2d of the gradient, flipped kernel, up/down
    swapped): <A x, y> = <x, A^T y>, and its own backward is A again (second order)."""
    kernel = torch.randn(*kernel_shape, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64, requires_grad=True)
    ax = _UpFirDn2d.apply(x, kernel, up, down, pads, "torch")
    y = torch.randn(ax.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    (aty,) = torch.autograd.grad(ax, x, y, create_graph=True)
    assert aty.shape == x.shape
    torch.testing.assert_close((ax * y).sum(), (x * aty).sum(), rtol=1e-12, atol=1e-12)
    z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (az,) = torch.autograd.grad(aty, y, z)
    torch.testing.assert_close(az, upfirdn2d(z, kernel, up=up, down=down, pad=pads), rtol=1e-12, atol=1e-12)


def test_gradcheck_tiny(gen):
    x = torch.randn(1, 1, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: upfirdn2d(t, kernel, up=2, pad=(2, 1)), (x,))
    assert torch.autograd.gradcheck(lambda t: _UpFirDn2d.apply(t, kernel, 1, 2, (1, 1, 2, 1), "torch"), (x,))
    assert torch.autograd.gradgradcheck(
        lambda t: _UpFirDn2d.apply(t, kernel, 2, 1, (2, 1, 2, 1), "torch"), (x,)
    )


def test_two_pads_mean_both_axes(gen):
    x = torch.randn(1, 2, 6, 5, generator=gen)
    kernel = torch.rand(3, 3, generator=gen)
    torch.testing.assert_close(
        upfirdn2d(x, kernel, down=2, pad=(1, 2)), upfirdn2d(x, kernel, down=2, pad=(1, 2, 1, 2))
    )


def test_channels_last_and_float32_agree_with_float64(gen):
    x = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
    kernel = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])).double() / 16
    for up, down, pad in ((2, 1, (2, 1)), (1, 2, (1, 1))):
        expected = upfirdn2d(x, kernel, up=up, down=down, pad=pad)
        single = upfirdn2d(
            x.float().contiguous(memory_format=torch.channels_last), kernel.float(), up=up, down=down, pad=pad
        )
        assert single.dtype == torch.float32
        torch.testing.assert_close(single.double(), expected, rtol=1e-6, atol=1e-6)


def test_bf16_input_stays_bf16_under_autocast(gen):
    x = torch.randn(1, 2, 8, 8, generator=gen)
    kernel = torch.ones(2, 2) / 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_fp32 = upfirdn2d(x, kernel, down=2)
        out_bf16 = upfirdn2d(x.bfloat16(), kernel, down=2)
    assert out_fp32.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), F.avg_pool2d(x, 2), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"up": 0}, ValueError, "up must be an integer >= 1"),
        ({"down": 1.5}, ValueError, "down must be an integer >= 1"),
        ({"pad": (1, 2, 3)}, ValueError, "pad must be 2 or 4 integers"),
        ({"pad": (-3, -3)}, ValueError, "smaller than the kernel"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, words):
    with pytest.raises(error, match=words):
        upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(3, 3), **kwargs)


def test_bad_tensors_raise_type_errors():
    with pytest.raises(TypeError, match=r"x must be a floating \[N, C, H, W\] tensor"):
        upfirdn2d(torch.zeros(4, 4), torch.ones(3, 3))
    with pytest.raises(TypeError, match=r"kernel must be a non-empty \[kh, kw\] tensor"):
        upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(3))
