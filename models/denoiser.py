"""The denoiser D(x, sigma) = x + sigma^2 score(x, sigma) over a slice stack, in memory-sized chunks."""

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
"""precision name -> autocast dtype (None: plain fp32)."""

CPU_SLICE_BATCH = 4
"""Slices per chunk on the CPU, where memory is not the limit."""

MEMORY_FRACTION = 0.6
"""Share of the free CUDA memory that the chunks may use (the rest is margin for fragmentation)."""


def bytes_per_slice(config, precision="fp32") -> int:
    """Estimated peak activation memory of one slice through the network, in bytes.

    Counts the skip activations kept for the upsampling path, plus at the widest level the
    working set of a residual block (concatenated input, normalised copy, two convolution
    outputs and the shortcut), plus a dense attention matrix where attention runs.

    Args:
        config: validated model config (models.load_config).
        precision: "fp32" or "bf16" (bf16 halves every activation).
    """
    m, size = config.model, config.data.image_size
    element = 2 if PRECISIONS[precision] is not None else 4
    skips, working = m.nf * size**2, 0
    for level, mult in enumerate(m.ch_mult):
        pixels = (size // 2**level) ** 2
        width = m.nf * mult
        skips += (m.num_res_blocks + 1) * width * pixels
        working = max(working, 8 * width * pixels)
        if size // 2**level in list(m.attn_resolutions) or level == len(m.ch_mult) - 1:
            working = max(working, 2 * pixels * pixels + 4 * width * pixels)
    return int((skips + working) * element)


class Denoiser:
    """D(x, sigma) = x + sigma^2 net(x, sigma) for a stack of slices, in chunks, without gradients.

    Args:
        net: score network (load_score_model), net(x [B,C,H,W], sigma [B]) -> score.
        slice_batch: slices per network call; None chooses it: on CUDA from the free device memory
            and bytes_per_slice (once per call), on the CPU CPU_SLICE_BATCH.
        precision: "fp32", or "bf16" for bf16 autocast (the result is fp32 either way).
        channels_last: run the network in channels_last memory layout (faster convolutions on
            CUDA; converts the network's weights in place).
    """

    def __init__(self, net, slice_batch=None, precision="fp32", channels_last=False):
        if precision not in PRECISIONS:
            raise ValueError(f"Denoiser: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if slice_batch is not None and (
            isinstance(slice_batch, bool) or not isinstance(slice_batch, int) or slice_batch < 1
        ):
            raise ValueError(f"Denoiser: slice_batch must be a positive integer or None, got {slice_batch!r}")
        self.net = net
        self.slice_batch = slice_batch
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            net.to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Denoised slices x0 [N, C, H, W] (fp32) of noisy slices x at noise std sigma (float, 0-d tensor)."""
        return self._run(x, sigma, denoise=True)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The score net(x, sigma) [N, C, H, W] (fp32) of the noisy slices x."""
        return self._run(x, sigma, denoise=False)

    def chunk_size(self, x: torch.Tensor) -> int:
        """Slices per network call for x: the given slice_batch, else chosen for x's device."""
        if self.slice_batch is not None:
            return self.slice_batch
        if x.device.type != "cuda":
            return CPU_SLICE_BATCH
        free, _ = torch.cuda.mem_get_info(x.device)
        per_slice = bytes_per_slice(self.net.config, self.precision)
        return max(1, int(free * MEMORY_FRACTION // per_slice))

    def _run(self, x, sigma, denoise):
        if x.dim() != 4:
            raise ValueError(f"Denoiser: x must be a slice stack [N, C, H, W], got shape {tuple(x.shape)}")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.dim() != 0:
            raise ValueError(
                f"Denoiser: sigma must be a python float or a 0-d tensor, got shape {tuple(sigma.shape)}"
            )
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        autocast_dtype = PRECISIONS[self.precision]
        with (
            torch.no_grad(),
            torch.autocast(
                x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ),
        ):
            size = self.chunk_size(x)
            for start in range(0, x.shape[0], size):
                chunk = x[start : start + size]
                noisy = chunk.contiguous(memory_format=self.memory_format)
                score = self.net(noisy, sigma.expand(chunk.shape[0])).float()
                out[start : start + chunk.shape[0]] = chunk + sigma**2 * score if denoise else score
        return out
