"""Building blocks of NCSN++ (score_sde layout: attribute names and registration order are the state dict)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from op import no_autocast, upfirdn2d
from op._extension import is_compiling, triton_kernels, use_inference_kernels
from op.group_norm import group_norm_act, group_norm_channelwise

SKIP_RESCALE = math.sqrt(2.0)
"""Residual sums are divided by this when skip_rescale is on."""

NONLINEARITIES = {
    "swish": nn.SiLU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
}
"""config.model.nonlinearity -> activation module factory."""


def variance_scaling(shape, scale=1.0, generator=None):
    """DDPM initialisation: uniform with variance scale / mean(fan_in, fan_out); scale 0 means 1e-10.

    Args:
        shape: weight shape; dims 0 and 1 are the two fans, the rest the receptive field.
        scale: variance scale.
        generator: optional torch.Generator.
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_avg = (shape[0] + shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    return (torch.rand(*shape, generator=generator) * 2.0 - 1.0) * bound


def conv2d(in_ch, out_ch, kernel_size, init_scale=1.0, stride=1, padding=None, generator=None):
    """nn.Conv2d with DDPM initialisation (variance-scaled weight, zero bias)."""
    padding = kernel_size // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)
    with torch.no_grad():
        conv.weight.copy_(variance_scaling(conv.weight.shape, init_scale, generator))
        conv.bias.zero_()
    return conv


def linear(in_features, out_features, generator=None):
    """nn.Linear with DDPM initialisation."""
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_(variance_scaling(layer.weight.shape, 1.0, generator))
        layer.bias.zero_()
    return layer


def _group_norm_library(x, groups, weight, bias, eps):
    return F.group_norm(x, groups, weight.to(x.dtype), bias.to(x.dtype), eps)


_GROUP_NORM = {"eager": _group_norm_library, "traced": group_norm_channelwise}
"""'traced' while torch.compile traces (fused, layout-friendly statistics), else 'eager' (library kernel)."""


class GroupNorm(nn.GroupNorm):
    """GroupNorm with min(C // 4, 32) groups and eps 1e-6 that keeps its input's dtype under autocast.

    Statistics are accumulated in fp32 either way; keeping bf16 activations in bf16 avoids fp32
    copies of every feature map (identical results in fp32). Eager runs use the library kernel;
    under torch.compile the statistics come per channel (group_norm_channelwise). normalize_act
    adds the bias, normalises and activates in one fused op on channels_last CUDA tensors.
    """

    def __init__(self, channels):
        groups = min(channels // 4, 32)
        if groups < 1 or channels % groups:
            raise ValueError(
                f"GroupNorm over {channels} channels needs a channel count divisible by min(C // 4, 32) "
                f"= {groups}; choose model.nf and model.ch_mult so that every level has such a width"
            )
        super().__init__(num_groups=groups, num_channels=channels, eps=1e-6)

    def forward(self, x):
        with no_autocast(x):
            path = "traced" if is_compiling() else "eager"
            return _GROUP_NORM[path](x, self.num_groups, self.weight, self.bias, self.eps)

    def normalize_act(self, x, act=None, pre_bias=None):
        """act(self(x + pre_bias[:, :, None, None])); pre_bias [N, C] or None, act a module or None.

        With SiLU or no activation on a tensor that op.group_norm fuses (channels_last, CUDA, no
        gradients), one fused op that never materialises x + pre_bias; otherwise the separate
        steps, as they were.
        """
        if (act is None or isinstance(act, nn.SiLU)) and use_inference_kernels(x):
            with no_autocast(x):
                return group_norm_act(
                    x, self.num_groups, self.weight, self.bias, self.eps, act is not None, pre_bias
                )
        if pre_bias is not None:
            x = x + pre_bias[:, :, None, None]
        h = self(x)
        return h if act is None else act(h)


class NIN(nn.Module):
    """Per-pixel linear map over channels ("network in network"); W is [in, out]."""

    def __init__(self, in_dim, num_units, init_scale=0.1, generator=None):
        super().__init__()
        self.W = nn.Parameter(variance_scaling((in_dim, num_units), init_scale, generator))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x):
        """x: [..., in] channels last -> [..., out]."""
        return torch.matmul(x, self.W) + self.b


class GaussianFourierProjection(nn.Module):
    """Fourier features [sin(2 pi W log_sigma), cos(...)] of the log noise level; W is frozen."""

    def __init__(self, embedding_size, scale, generator=None):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size, generator=generator) * scale, requires_grad=False)

    def forward(self, x):
        projection = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(projection), torch.cos(projection)], dim=-1)


def timestep_embedding(timesteps, dim, max_positions=10000):
    """Sinusoidal embedding of (float) timesteps [B] -> [B, dim] (transformer/DDPM convention)."""
    half = dim // 2
    rate = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -rate)
    angles = timesteps.float()[:, None] * freqs[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


def fir_kernel(taps, gain=1.0):
    """2-D FIR kernel from 1-D taps (outer product), normalised to sum to gain."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k) if k.dim() == 1 else k
    return k / k.sum() * gain


def fir_upsample(x, kernel):
    """2x FIR upsampling; kernel from fir_kernel(taps, gain=4)."""
    p = kernel.shape[0] - 2
    return upfirdn2d(x, kernel, up=2, pad=((p + 1) // 2 + 1, p // 2))


def fir_downsample(x, kernel):
    """2x FIR downsampling; kernel from fir_kernel(taps)."""
    p = kernel.shape[0] - 2
    return upfirdn2d(x, kernel, down=2, pad=((p + 1) // 2, p // 2))


def naive_upsample(x):
    """2x nearest-neighbour upsampling."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def naive_downsample(x):
    """2x box downsampling (mean of each 2x2 block)."""
    return F.avg_pool2d(x, 2)


class FIRConv2d(nn.Module):
    """3x3 convolution fused with 2x FIR up- or downsampling (StyleGAN2's resampling convolution).

    Down: FIR filter then stride-2 convolution. Up: stride-2 transposed convolution (zero insertion
    then the convolution) then FIR filter; the bias is added last.

    Args:
        in_ch, out_ch: widths; taps: 1-D FIR taps; up: upsample (else downsample);
        generator: optional torch.Generator for the initial weights.
    """

    def __init__(self, in_ch, out_ch, taps, up, generator=None):
        super().__init__()
        self.weight = nn.Parameter(variance_scaling((out_ch, in_ch, 3, 3), 1.0, generator))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up = up
        self.register_buffer("fir", fir_kernel(taps, gain=4.0 if up else 1.0), persistent=False)

    def forward(self, x):
        k, w = self.fir.shape[0], self.weight.shape[-1]
        if self.up:
            p = (k - 2) - (w - 1)
            x = F.conv_transpose2d(x, self.weight.flip([2, 3]).transpose(0, 1), stride=2)
            x = upfirdn2d(x, self.fir, pad=((p + 1) // 2 + 1, p // 2 + 1))
            return x + self.bias.reshape(1, -1, 1, 1)
        p = (k - 2) + (w - 1)
        x = upfirdn2d(x, self.fir, pad=((p + 1) // 2, p // 2))
        return F.conv2d(x, self.weight, self.bias, stride=2)


class Combine(nn.Module):
    """Merge an input-pyramid image into the features: 1x1 conv, then concatenation or sum."""

    def __init__(self, dim1, dim2, method, generator=None):
        super().__init__()
        self.Conv = conv2d(dim1, dim2, 1, generator=generator)
        self.method = method

    def forward(self, x, y):
        h = self.Conv(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels (DDPM), with a residual connection."""

    def __init__(self, channels, skip_rescale, init_scale, generator=None):
        super().__init__()
        self.GroupNorm_0 = GroupNorm(channels)
        self.NIN_0 = NIN(channels, channels, generator=generator)
        self.NIN_1 = NIN(channels, channels, generator=generator)
        self.NIN_2 = NIN(channels, channels, generator=generator)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale, generator=generator)
        self.skip_rescale = skip_rescale

    def forward(self, x):
        b, c, height, width = x.shape
        tokens = self.GroupNorm_0.normalize_act(x).permute(0, 2, 3, 1).reshape(b, 1, height * width, c)
        q, k, v = self.NIN_0(tokens), self.NIN_1(tokens), self.NIN_2(tokens)
        attended = F.scaled_dot_product_attention(q, k, v, scale=c**-0.5)
        h = self.NIN_3(attended).reshape(b, height, width, c).permute(0, 3, 1, 2)
        return residual_sum(x, h, self.skip_rescale)


def residual_sum(x, h, skip_rescale, bias=None):
    """x + h (+ bias [C] per channel), divided by sqrt(2) when skip_rescale keeps the variance of
    the sum; with a bias, one fused pass on channels_last CUDA tensors of one shape and dtype (no
    gradients)."""
    if (
        bias is not None
        and x.shape == h.shape
        and x.dtype == h.dtype
        and use_inference_kernels(x)
        and use_inference_kernels(h)
    ):
        scale = 1 / SKIP_RESCALE if skip_rescale else 1.0
        return triton_kernels("channels_last_triton").residual_sum(x, h, bias, scale)
    if bias is not None:
        h = h + bias.reshape(1, -1, 1, 1)
    return (x + h) / SKIP_RESCALE if skip_rescale else x + h


def conv_without_bias(conv, x):
    """conv(x) (an nn.Conv2d) without its bias, which a fused op that follows adds."""
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


class _Resample(nn.Module):
    """2x resampling of the ddpm blocks and the pyramids: FIR or naive, optionally with a convolution.

    Args:
        in_ch, out_ch (default in_ch): widths (they differ only with a convolution).
        with_conv: add a 3x3 convolution (fused with the FIR resampling when fir).
        fir: FIR resampling with the taps; else nearest / box (upsampling / downsampling).
        taps: 1-D FIR taps.
        generator: optional torch.Generator for the convolution's initial weights.
    """

    up = True

    def __init__(self, in_ch, out_ch=None, with_conv=False, fir=False, taps=(1, 3, 3, 1), generator=None):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = FIRConv2d(in_ch, out_ch, taps, up=self.up, generator=generator)
        elif with_conv and self.up:
            self.Conv_0 = conv2d(in_ch, out_ch, 3, generator=generator)
        elif with_conv:
            self.Conv_0 = conv2d(in_ch, out_ch, 3, stride=2, padding=0, generator=generator)
        if fir and not with_conv:
            self.register_buffer("fir", fir_kernel(taps, gain=4.0 if self.up else 1.0), persistent=False)
        direction = "up" if self.up else "down"
        self.mode = f"{direction}_{'fir' if fir else 'plain'}{'_conv' if with_conv else ''}"

    def forward(self, x):
        return _RESAMPLE_2X[self.mode](self, x)


class Upsample(_Resample):
    """2x upsampling: FIR, or nearest neighbour; see _Resample."""

    up = True


class Downsample(_Resample):
    """2x downsampling: FIR, or box / stride-2 convolution with TensorFlow 'SAME' padding; see _Resample."""

    up = False


_RESAMPLE_2X = {
    "up_fir": lambda m, x: fir_upsample(x, m.fir),
    "up_fir_conv": lambda m, x: m.Conv2d_0(x),
    "up_plain": lambda m, x: naive_upsample(x),
    "up_plain_conv": lambda m, x: m.Conv_0(naive_upsample(x)),
    "down_fir": lambda m, x: fir_downsample(x, m.fir),
    "down_fir_conv": lambda m, x: m.Conv2d_0(x),
    # 'SAME' padding of TensorFlow for a stride-2 window: one extra row and column at the end.
    "down_plain": lambda m, x: F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, stride=2),
    "down_plain_conv": lambda m, x: m.Conv_0(F.pad(x, (0, 1, 0, 1))),
}


class _ResnetBlock(nn.Module):
    """The residual branch both block types share, registered in score_sde's order:
    GroupNorm_0, Conv_0, Dense_0 (noise embedding), GroupNorm_1, Dropout_0, Conv_1.

    Args:
        act: activation module; in_ch, out_ch: widths; temb_dim: noise-embedding width;
        dropout: dropout rate; skip_rescale: divide the residual sum by sqrt(2);
        init_scale: scale of the last convolution's initial weights; generator: optional torch.Generator.
    """

    def __init__(
        self, act, in_ch, out_ch, temb_dim, dropout=0.1, skip_rescale=True, init_scale=0.0, generator=None
    ):
        super().__init__()
        self.GroupNorm_0 = GroupNorm(in_ch)
        self.Conv_0 = conv2d(in_ch, out_ch, 3, generator=generator)
        self.Dense_0 = linear(temb_dim, out_ch, generator=generator)
        self.GroupNorm_1 = GroupNorm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv2d(out_ch, out_ch, 3, init_scale=init_scale, generator=generator)
        self.act = act
        self.skip_rescale = skip_rescale

    def _branch(self, h, temb, fold):
        """Conv_0 to Conv_1 on the normalised, activated (and resampled) input h -> (h, bias).

        With fold (the fused channels_last path) the convolutions leave their biases out: Conv_0's
        joins the noise embedding as GroupNorm_1's pre-bias, and Conv_1's is returned for the
        residual sum to add; otherwise the bias is None. Either way the block computes the same sums.
        """
        embedding = None if temb is None else self.Dense_0(temb)
        if not fold:
            h = self.GroupNorm_1.normalize_act(self.Conv_0(h), self.act, embedding)
            return self.Conv_1(self.Dropout_0(h)), None
        bias = self.Conv_0.bias
        pre_bias = bias.expand(h.shape[0], -1) if embedding is None else embedding + bias
        h = self.GroupNorm_1.normalize_act(conv_without_bias(self.Conv_0, h), self.act, pre_bias)
        return conv_without_bias(self.Conv_1, self.Dropout_0(h)), self.Conv_1.bias


class ResnetBlockDDPM(_ResnetBlock):
    """DDPM residual block; a NIN shortcut where the widths differ (out_ch defaults to in_ch).

    Other arguments: those of _ResnetBlock.
    """

    def __init__(self, in_ch, out_ch=None, generator=None, **branch):
        out_ch = out_ch or in_ch
        super().__init__(in_ch=in_ch, out_ch=out_ch, generator=generator, **branch)
        self.project_skip = in_ch != out_ch
        if self.project_skip:
            self.NIN_0 = NIN(in_ch, out_ch, generator=generator)

    def forward(self, x, temb=None):
        """x: [B, in_ch, H, W]; temb: the activated noise embedding [B, temb_dim] or None."""
        fold = use_inference_kernels(x)
        h, bias = self._branch(self.GroupNorm_0.normalize_act(x, self.act), temb, fold)
        if self.project_skip:
            x = self.NIN_0(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return residual_sum(x, h, self.skip_rescale, bias)


class ResnetBlockBigGAN(_ResnetBlock):
    """BigGAN residual block, optionally resampling 2x on both branches; 1x1 shortcut.

    Args:
        in_ch, out_ch (default in_ch): widths; up / down: resample 2x; fir: FIR resampling with
        the 1-D taps (else naive); generator: optional torch.Generator; other arguments: those of
        _ResnetBlock.
    """

    def __init__(
        self, in_ch, out_ch=None, up=False, down=False, fir=False, taps=(1, 3, 3, 1), generator=None, **branch
    ):
        out_ch = out_ch or in_ch
        super().__init__(in_ch=in_ch, out_ch=out_ch, generator=generator, **branch)
        self.project_skip = in_ch != out_ch or up or down
        if self.project_skip:
            self.Conv_2 = conv2d(in_ch, out_ch, 1, generator=generator)
        self.resample = ("up" if up else "down" if down else "none") + (
            "_fir" if fir and (up or down) else ""
        )
        if fir and (up or down):
            self.register_buffer("fir", fir_kernel(taps, gain=4.0 if up else 1.0), persistent=False)

    def forward(self, x, temb=None):
        """x: [B, in_ch, H, W]; temb: the activated noise embedding [B, temb_dim] or None."""
        fold = use_inference_kernels(x)
        h, x = _RESAMPLE[self.resample](self, self.GroupNorm_0.normalize_act(x, self.act), x)
        h, bias = self._branch(h, temb, fold)
        if self.project_skip and fold:
            x, bias = conv_without_bias(self.Conv_2, x), bias + self.Conv_2.bias
        elif self.project_skip:
            x = self.Conv_2(x)
        return residual_sum(x, h, self.skip_rescale, bias)


_RESAMPLE = {
    "none": lambda m, h, x: (h, x),
    "up": lambda m, h, x: (naive_upsample(h), naive_upsample(x)),
    "down": lambda m, h, x: (naive_downsample(h), naive_downsample(x)),
    "up_fir": lambda m, h, x: (fir_upsample(h, m.fir), fir_upsample(x, m.fir)),
    "down_fir": lambda m, h, x: (fir_downsample(h, m.fir), fir_downsample(x, m.fir)),
}
