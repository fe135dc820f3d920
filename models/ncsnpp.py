"""NCSN++ (Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021), score_sde layout.

Modules are registered in score_sde's order inside one ModuleList ``all_modules``, so that the state
dict (keys, shapes, order) is the one of published score_sde checkpoints. The forward pass walks a
plan of module indices fixed at construction: no data-dependent Python branches, no host syncs,
fit for torch.compile, bf16 autocast and channels_last.
"""

import functools
from typing import NamedTuple

import torch
from torch import nn

from models.config import load_config
from models.layers import (
    NONLINEARITIES,
    AttnBlock,
    Combine,
    Downsample,
    GaussianFourierProjection,
    GroupNorm,
    ResnetBlockBigGAN,
    ResnetBlockDDPM,
    Upsample,
    conv2d,
    linear,
    residual_sum,
    timestep_embedding,
)
from models.sde import ve_sigma


class _DownLevel(NamedTuple):
    blocks: tuple  # ((resblock index, attention index or None), ...)
    down: int | None  # resampling module (None at the coarsest level)
    pyramid: int | None  # input-pyramid downsampler
    combine: int | None  # input-pyramid combiner (input_skip)
    image_pyramid: bool  # the pyramid reaching this level is still the input image


class _UpLevel(NamedTuple):
    blocks: tuple  # resblock indices
    attn: int | None
    pyramid_up: int | None  # output-pyramid upsampler (None at the coarsest level)
    pyramid_norm: int | None
    pyramid_conv: int | None
    up: int | None  # resampling module (None at the finest level)


class NCSNpp(nn.Module):
    """The NCSN++ noise-conditional score network.

    Args:
        config: model config (YAML path, dict or ConfigDict; validated by models.load_config).
        generator: optional torch.Generator for the initial weights.

    forward(x, sigma): x [B, C, H, W] images (in [0, 1] unless data.centered), sigma [B] noise
    standard deviations (a 0-d tensor is broadcast). Returns the score [B, C, H, W] (divided by
    sigma when model.scale_by_sigma). With embedding_type 'positional' the network is conditioned
    on the index of the entry of its sigma table (geometric, sigma_max first, num_scales entries)
    nearest to sigma in log scale, and scales by that entry.
    """

    def __init__(self, config, generator=None):
        super().__init__()
        config = load_config(config)
        self.config = config
        m, data = config.model, config.data
        self.register_buffer(
            "sigmas",
            ve_sigma(torch.linspace(1.0, 0.0, m.num_scales, dtype=torch.float64), m.sigma_min, m.sigma_max),
        )
        self.act = act = NONLINEARITIES[m.nonlinearity]()
        self.nf = nf = m.nf
        self.embedding_type = m.embedding_type
        self.conditional = m.conditional
        self.centered = data.centered
        self.scale_by_sigma = m.scale_by_sigma
        self.skip_rescale = m.skip_rescale
        self.progressive = m.progressive
        self.progressive_input = m.progressive_input
        self.biggan = m.resblock_type == "biggan"
        channels = data.num_channels
        resolutions = [data.image_size // 2**level for level in range(len(m.ch_mult))]

        modules = []

        def add(module):
            modules.append(module)
            return len(modules) - 1

        # Noise-level embedding and its two dense layers.
        self.embed_index = None
        if m.embedding_type == "fourier":
            self.embed_index = add(GaussianFourierProjection(nf, m.fourier_scale, generator))
        embed_dim = 2 * nf if m.embedding_type == "fourier" else nf
        self.dense = None
        if m.conditional:
            self.dense = (add(linear(embed_dim, 4 * nf, generator)), add(linear(4 * nf, 4 * nf, generator)))

        common = {
            "act": act,
            "dropout": m.dropout,
            "init_scale": m.init_scale,
            "skip_rescale": m.skip_rescale,
            "temb_dim": 4 * nf,
            "generator": generator,
        }
        resblock = {
            "biggan": functools.partial(ResnetBlockBigGAN, fir=m.fir, taps=m.fir_kernel, **common),
            "ddpm": functools.partial(ResnetBlockDDPM, **common),
        }[m.resblock_type]
        attention = functools.partial(
            AttnBlock, skip_rescale=m.skip_rescale, init_scale=m.init_scale, generator=generator
        )
        resampling = {"fir": m.fir, "taps": m.fir_kernel, "generator": generator}

        # Downsampling path.
        self.conv_in = add(conv2d(channels, nf, 3, generator=generator))
        skip_channels = [nf]
        in_ch, pyramid_ch = nf, channels
        image_pyramid = True
        down_levels = []
        for level, mult in enumerate(m.ch_mult):
            blocks = []
            for _ in range(m.num_res_blocks):
                block = add(resblock(in_ch=in_ch, out_ch=nf * mult))
                in_ch = nf * mult
                attn = add(attention(in_ch)) if resolutions[level] in m.attn_resolutions else None
                blocks.append((block, attn))
                skip_channels.append(in_ch)
            down = pyramid = combine = None
            if level != len(m.ch_mult) - 1:
                if self.biggan:
                    down = add(resblock(down=True, in_ch=in_ch))
                else:
                    down = add(Downsample(in_ch, with_conv=m.resamp_with_conv, **resampling))
                pyramid, combine, in_ch, pyramid_ch = _BUILD_INPUT_PYRAMID[m.progressive_input](
                    add, in_ch, pyramid_ch, m.progressive_combine, resampling, generator
                )
                skip_channels.append(in_ch)
            down_levels.append(_DownLevel(tuple(blocks), down, pyramid, combine, image_pyramid))
            # A residual pyramid is convolved into features at its first level; input_skip's stays the image.
            image_pyramid = image_pyramid and m.progressive_input != "residual"
        self.down_levels = tuple(down_levels)

        # Bottleneck.
        in_ch = skip_channels[-1]
        self.mid = (add(resblock(in_ch=in_ch)), add(attention(in_ch)), add(resblock(in_ch=in_ch)))

        # Upsampling path.
        up_levels = []
        pyramid_ch = 0
        for level in reversed(range(len(m.ch_mult))):
            blocks = []
            for _ in range(m.num_res_blocks + 1):
                blocks.append(add(resblock(in_ch=in_ch + skip_channels.pop(), out_ch=nf * m.ch_mult[level])))
                in_ch = nf * m.ch_mult[level]
            attn = add(attention(in_ch)) if resolutions[level] in m.attn_resolutions else None
            coarsest = level == len(m.ch_mult) - 1
            pyramid_up, pyramid_norm, pyramid_conv, pyramid_ch = _BUILD_OUTPUT_PYRAMID[m.progressive](
                add, coarsest, in_ch, pyramid_ch, channels, m.init_scale, resampling, generator
            )
            up = None
            if level != 0:
                if self.biggan:
                    up = add(resblock(in_ch=in_ch, up=True))
                else:
                    up = add(Upsample(in_ch, with_conv=m.resamp_with_conv, **resampling))
            up_levels.append(_UpLevel(tuple(blocks), attn, pyramid_up, pyramid_norm, pyramid_conv, up))
        self.up_levels = tuple(up_levels)

        self.out = None
        if m.progressive != "output_skip":
            self.out = (
                add(GroupNorm(in_ch)),
                add(conv2d(in_ch, channels, 3, init_scale=m.init_scale, generator=generator)),
            )
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Score of the noisy images x at noise level sigma; see the class docstring for shapes."""
        mods = self.all_modules
        sigma = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])
        temb, used_sigmas = _NOISE_EMBEDDING[self.embedding_type](self, sigma)
        if self.conditional:
            # Each residual block applies the nonlinearity to the embedding first: do it once here.
            temb = self.act(mods[self.dense[1]](self.act(mods[self.dense[0]](temb))))
        else:
            temb = None
        if not self.centered:
            x = 2 * x - 1.0

        # Downsampling path, keeping every block's output for the skips.
        pyramid = x
        hs = [from_image(mods[self.conv_in], x)]
        for level in self.down_levels:
            for block, attn in level.blocks:
                h = mods[block](hs[-1], temb)
                if attn is not None:
                    h = mods[attn](h)
                hs.append(h)
            if level.down is not None:
                h = self._resample(level.down, hs[-1], temb)
                h, pyramid = _INPUT_PYRAMID[self.progressive_input](self, level, h, pyramid)
                hs.append(h)

        # Bottleneck.
        first, attn, second = self.mid
        h = mods[second](mods[attn](mods[first](hs[-1], temb)), temb)

        # Upsampling path, consuming the skips in reverse.
        pyramid = None
        for level in self.up_levels:
            for block in level.blocks:
                h = mods[block](torch.cat([h, hs.pop()], dim=1), temb)
            if level.attn is not None:
                h = mods[level.attn](h)
            h, pyramid = _OUTPUT_PYRAMID[self.progressive](self, level, h, pyramid)
            if level.up is not None:
                h = self._resample(level.up, h, temb)

        if self.out is None:
            h = pyramid
        else:
            h = mods[self.out[1]](mods[self.out[0]].normalize_act(h, self.act))
        if self.scale_by_sigma:
            h = h / used_sigmas.reshape(-1, *([1] * (h.dim() - 1)))
        return h

    def _resample(self, index, h, temb):
        module = self.all_modules[index]
        return module(h, temb) if self.biggan else module(h)


def from_image(module, image, *features):
    """module(image, *features) where the image is the network's input: under autocast in fp32, the
    result cast to the autocast dtype; otherwise as is.

    Rounding the noisy input to bf16 (8 significant bits) perturbs it by about 0.2 % of its value,
    which the network passes almost unchanged into its noise estimate: at small noise levels that
    was most of the bf16 network's error. Features rounded after an fp32 convolution are many
    channels with independent rounding, which the next convolution averages down.
    """
    device_type = image.device.type
    weight = next(module.parameters(), None)
    # Weights stored in a low precision (bench_network's bf16w variants) run as they are.
    if not torch.is_autocast_enabled(device_type) or (weight is not None and weight.dtype != torch.float32):
        return module(image, *features)
    with torch.autocast(device_type, enabled=False):
        out = module(image.float(), *(feature.float() for feature in features))
    return out.to(torch.get_autocast_dtype(device_type))


def _fourier_embedding(net, sigma):
    return net.all_modules[net.embed_index](torch.log(sigma)), sigma


def _positional_embedding(net, sigma):
    distance = torch.log(net.sigmas)[None, :] - torch.log(sigma.to(net.sigmas.dtype))[:, None]
    index = distance.abs().argmin(dim=1)
    return timestep_embedding(index, net.nf), net.sigmas[index].to(sigma.dtype)


_NOISE_EMBEDDING = {"fourier": _fourier_embedding, "positional": _positional_embedding}
"""embedding_type -> f(net, sigma [B]) -> (embedding, sigma used for scale_by_sigma)."""


def _input_none(net, level, h, pyramid):
    return h, pyramid


def _input_skip(net, level, h, pyramid):
    pyramid = net.all_modules[level.pyramid](pyramid)
    return from_image(net.all_modules[level.combine], pyramid, h), pyramid


def _input_residual(net, level, h, pyramid):
    down = net.all_modules[level.pyramid]
    pyramid = from_image(down, pyramid) if level.image_pyramid else down(pyramid)
    pyramid = residual_sum(pyramid, h, net.skip_rescale)
    return pyramid, pyramid


_INPUT_PYRAMID = {"none": _input_none, "input_skip": _input_skip, "residual": _input_residual}
"""progressive_input -> f(net, level, h, pyramid) -> (h, pyramid) after a downsampling step."""


def _output_none(net, level, h, pyramid):
    return h, pyramid


def _output_skip(net, level, h, pyramid):
    mods = net.all_modules
    image = mods[level.pyramid_conv](mods[level.pyramid_norm].normalize_act(h, net.act))
    if level.pyramid_up is None:
        return h, image
    return h, mods[level.pyramid_up](pyramid) + image


def _output_residual(net, level, h, pyramid):
    mods = net.all_modules
    if level.pyramid_up is None:
        return h, mods[level.pyramid_conv](mods[level.pyramid_norm].normalize_act(h, net.act))
    pyramid = residual_sum(mods[level.pyramid_up](pyramid), h, net.skip_rescale)
    return pyramid, pyramid


_OUTPUT_PYRAMID = {"none": _output_none, "output_skip": _output_skip, "residual": _output_residual}
"""progressive -> f(net, level, h, pyramid) -> (h, pyramid) at the end of an upsampling level."""


def _build_input_none(add, in_ch, pyramid_ch, method, resampling, generator):
    return None, None, in_ch, pyramid_ch


def _build_input_skip(add, in_ch, pyramid_ch, method, resampling, generator):
    pyramid = add(Downsample(pyramid_ch, with_conv=False, **resampling))
    combine = add(Combine(pyramid_ch, in_ch, method, generator))
    return pyramid, combine, in_ch * 2 if method == "cat" else in_ch, pyramid_ch


def _build_input_residual(add, in_ch, pyramid_ch, method, resampling, generator):
    pyramid = add(Downsample(pyramid_ch, in_ch, with_conv=True, **resampling))
    return pyramid, None, in_ch, in_ch


_BUILD_INPUT_PYRAMID = {
    "none": _build_input_none,
    "input_skip": _build_input_skip,
    "residual": _build_input_residual,
}
"""progressive_input -> builder(add, in_ch, pyramid_ch, ...) -> (pyramid, combine, in_ch, pyramid_ch)."""


def _build_output_none(add, coarsest, in_ch, pyramid_ch, channels, init_scale, resampling, generator):
    return None, None, None, pyramid_ch


def _build_output_skip(add, coarsest, in_ch, pyramid_ch, channels, init_scale, resampling, generator):
    up = None if coarsest else add(Upsample(pyramid_ch, with_conv=False, **resampling))
    norm = add(GroupNorm(in_ch))
    conv = add(conv2d(in_ch, channels, 3, init_scale=init_scale, generator=generator))
    return up, norm, conv, channels


def _build_output_residual(add, coarsest, in_ch, pyramid_ch, channels, init_scale, resampling, generator):
    if coarsest:
        norm = add(GroupNorm(in_ch))
        conv = add(conv2d(in_ch, in_ch, 3, generator=generator))
        return None, norm, conv, in_ch
    return add(Upsample(pyramid_ch, in_ch, with_conv=True, **resampling)), None, None, in_ch


_BUILD_OUTPUT_PYRAMID = {
    "none": _build_output_none,
    "output_skip": _build_output_skip,
    "residual": _build_output_residual,
}
"""progressive -> builder(add, coarsest, in_ch, ...) -> (pyramid_up, _norm, _conv, pyramid_ch)."""


MODELS = {"ncsnpp": NCSNpp}
"""config.model.name -> network class."""


def build_model(config, generator=None) -> nn.Module:
    """Build the score network named by config.model.name with freshly initialised weights.

    Args:
        config: YAML path, dict or ConfigDict (validated by models.load_config).
        generator: optional torch.Generator for the initial weights.
    """
    config = load_config(config)
    return MODELS[config.model.name](config, generator=generator)
