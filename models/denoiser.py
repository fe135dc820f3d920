"""The denoiser D(x, sigma) = x + sigma^2 score(x, sigma) over a slice stack, in memory-sized chunks."""

import math
import warnings

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
"""precision name -> autocast dtype (None: plain fp32)."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile modes the denoiser accepts (compile=True means "default")."""

GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""The compile modes that already replay CUDA graphs (so cuda_graph=True would nest captures)."""

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


def balanced_chunk(num_slices: int, limit: int) -> int:
    """The smallest chunk size that covers num_slices in as few chunks of at most limit slices.

    Fixed-shape calls pad the last chunk to this size, so balancing keeps the padding below one
    slice per chunk (256 slices with a limit of 175: two chunks of 128, not 175 + 81 padded to 175).
    """
    chunks = math.ceil(num_slices / limit)
    return math.ceil(num_slices / chunks)


class _FixedShapeCall:
    """The network on static input buffers of one chunk shape, optionally replayed as a CUDA graph.

    A chunk is copied into the input buffer; a short last chunk leaves zeros in the rest, so the
    (compiled) network always sees the same shape. The output is a view into a buffer that the
    next call overwrites.

    Args:
        fn: the (compiled) network, fn(x [B, C, H, W], sigma [B]) -> score.
        shape: chunk shape (B, C, H, W).
        device: CUDA or CPU device of the buffers.
        memory_format: layout of the input buffer.
        cuda_graph: capture the call as a CUDA graph on its first use (CUDA devices only).
    """

    def __init__(self, fn, shape, device, memory_format, cuda_graph):
        self.fn = fn
        self.input = torch.zeros(shape, device=device).contiguous(memory_format=memory_format)
        self.sigma = torch.zeros(shape[0], device=device)
        self.cuda_graph = cuda_graph
        self.graph = None
        self.output = None

    def __call__(self, chunk: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Scores [len(chunk), C, H, W] of chunk (at most B slices) at the 0-d noise level sigma."""
        count = chunk.shape[0]
        self.input[:count].copy_(chunk)
        self.input[count:].zero_()
        self.sigma.copy_(sigma.expand_as(self.sigma))
        if self.cuda_graph and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.output[:count]
        return self.fn(self.input, self.sigma)[:count]

    def _capture(self):
        """Warm up on a side stream (compiling, choosing convolution algorithms), then capture."""
        try:
            stream = torch.cuda.Stream(self.input.device)
            stream.wait_stream(torch.cuda.current_stream(self.input.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.fn(self.input, self.sigma)
            torch.cuda.current_stream(self.input.device).wait_stream(stream)
            # The warm-up's activations go back to the driver, so the graph's own pool can take them.
            torch.cuda.synchronize(self.input.device)
            torch.cuda.empty_cache()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.output = self.fn(self.input, self.sigma)
            self.graph = graph
        except RuntimeError as exc:
            self.cuda_graph = False
            self.output = None
            warnings.warn(
                f"Denoiser: CUDA graph capture failed ({str(exc).splitlines()[0][:200]}); "
                "running the network without a graph",
                RuntimeWarning,
                stacklevel=4,
            )


class Denoiser:
    """D(x, sigma) = x + sigma^2 net(x, sigma) for a stack of slices, in chunks, without gradients.

    Args:
        net: score network (load_score_model), net(x [B,C,H,W], sigma [B]) -> score.
        slice_batch: slices per network call; None chooses it: on CUDA from the free device memory
            and bytes_per_slice (once per call), on the CPU CPU_SLICE_BATCH.
        precision: "fp32", or "bf16" for bf16 autocast (the result is fp32 either way).
        channels_last: run the network in channels_last memory layout (faster convolutions on
            CUDA; converts the network's weights in place).
        compile: run the network through torch.compile: True (its default mode) or a name of
            COMPILE_MODES. The network is compiled once per chunk shape, so the chunk size is
            fixed per stack size (balanced_chunk of the slice_batch or memory limit) and the last
            chunk is zero-padded to it. The first call pays the compilation (tens of seconds
            for the 256x256 NCSN++ on a GPU).
        cuda_graph: capture the fixed-shape network call as a CUDA graph and replay it (CUDA only;
            elsewhere, or if the capture fails, the call runs as is, with one warning). Implies the
            fixed chunk shape of compile; the graph's memory stays reserved while the denoiser lives.
    """

    def __init__(
        self, net, slice_batch=None, precision="fp32", channels_last=False, compile=False, cuda_graph=False
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"Denoiser: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if slice_batch is not None and (
            isinstance(slice_batch, bool) or not isinstance(slice_batch, int) or slice_batch < 1
        ):
            raise ValueError(f"Denoiser: slice_batch must be a positive integer or None, got {slice_batch!r}")
        if not (isinstance(compile, bool) or compile in COMPILE_MODES):
            raise ValueError(
                f"Denoiser: compile must be True, False or one of {', '.join(COMPILE_MODES)}, got {compile!r}"
            )
        if cuda_graph and compile in GRAPH_MODES:
            raise ValueError(
                f"Denoiser: compile mode {compile!r} captures CUDA graphs itself; with cuda_graph=True "
                f"use compile=True or one of {', '.join(m for m in COMPILE_MODES if m not in GRAPH_MODES)}"
            )
        self.net = net
        self.slice_batch = slice_batch
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            net.to(memory_format=torch.channels_last)
        self.compile_mode = ("default" if compile is True else compile) or None
        self.cuda_graph = bool(cuda_graph)
        self._network = None
        self._calls = {}

    @property
    def fixed_shape(self) -> bool:
        """Whether every network call sees one chunk shape (compile or cuda_graph)."""
        return self.compile_mode is not None or self.cuda_graph

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Denoised slices x0 [N, C, H, W] (fp32) of noisy slices x at noise std sigma (float, 0-d tensor)."""
        return self._run(x, sigma, denoise=True)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The score net(x, sigma) [N, C, H, W] (fp32) of the noisy slices x."""
        return self._run(x, sigma, denoise=False)

    def chunk_size(self, x: torch.Tensor) -> int:
        """Slices per network call for x: the given slice_batch, else chosen for x's device.

        With a fixed chunk shape (compile, cuda_graph) it is balanced over x's slices.
        """
        if self.slice_batch is not None:
            limit = self.slice_batch
        elif x.device.type != "cuda":
            limit = CPU_SLICE_BATCH
        else:
            free, _ = torch.cuda.mem_get_info(x.device)
            limit = max(1, int(free * MEMORY_FRACTION // bytes_per_slice(self.net.config, self.precision)))
        return balanced_chunk(x.shape[0], limit) if self.fixed_shape else limit

    def _run(self, x, sigma, denoise):
        if x.dim() != 4:
            raise ValueError(f"Denoiser: x must be a slice stack [N, C, H, W], got shape {tuple(x.shape)}")
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(dtype=torch.float32, device=x.device)
        else:
            # A fill on the device, not a host-to-device copy, so the sampler loop never waits.
            sigma = torch.full((), float(sigma), dtype=torch.float32, device=x.device)
        if sigma.dim() != 0:
            raise ValueError(
                f"Denoiser: sigma must be a python float or a 0-d tensor, got shape {tuple(sigma.shape)}"
            )
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        autocast_dtype = PRECISIONS[self.precision]
        with (
            torch.no_grad(),
            torch.autocast(
                x.device.type,
                dtype=autocast_dtype or torch.bfloat16,
                enabled=autocast_dtype is not None,
                # A graph must not replay casts that the autocast cache frees when the region ends.
                cache_enabled=not self.cuda_graph,
            ),
        ):
            size = self.chunk_size(x)
            network = self._fixed_call(x, size) if self.fixed_shape else self._eager_call
            for start in range(0, x.shape[0], size):
                chunk = x[start : start + size]
                score = network(chunk, sigma).float()
                out[start : start + chunk.shape[0]] = chunk + sigma**2 * score if denoise else score
        return out

    def _eager_call(self, chunk, sigma):
        return self.net(chunk.contiguous(memory_format=self.memory_format), sigma.expand(chunk.shape[0]))

    def _fixed_call(self, x, size):
        """The _FixedShapeCall for chunks of size slices of x (built, and compiled, on first use)."""
        key = (size, *x.shape[1:], x.device)
        if key not in self._calls:
            if self._network is None:
                self._network = (
                    torch.compile(self.net, mode=self.compile_mode, dynamic=False)
                    if self.compile_mode is not None
                    else self.net
                )
            graph = self.cuda_graph and x.device.type == "cuda"
            if self.cuda_graph and not graph and not self._calls:
                warnings.warn(
                    f"Denoiser: cuda_graph applies to CUDA tensors only; running on {x.device} without one",
                    RuntimeWarning,
                    stacklevel=4,
                )
            shape = (size, *x.shape[1:])
            self._calls[key] = _FixedShapeCall(self._network, shape, x.device, self.memory_format, graph)
        return self._calls[key]
