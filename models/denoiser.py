"""The denoiser D(x, sigma) = x + sigma^2 score(x, sigma) over a slice stack, in memory-sized chunks.

Chunk size. A given slice_batch is used as is. Otherwise, on the CPU, CPU_SLICE_BATCH; on CUDA,
the smallest of: the knee (KNEE_PIXELS: bigger chunks are no faster, but compile longer and hold
more memory), and what fits in the free memory after reserve_bytes for the rest of the run, where
one slice's memory is MEASURED once per plane shape by a probe (an eager call on PROBE_SLICES
slices, peak allocation over the slices, times PROBE_MARGIN). A chunk that still runs out of
memory is halved and the call goes on (one warning); one slice that does not fit raises
DenoiserMemoryError.

Compilation. compile="full" compiles the whole network (one graph: fastest kernels, longest first
compile); compile="regional" compiles each residual and attention block (REGIONAL_BLOCKS) on its
own, so repeated blocks share their compiled code and the first compile is shorter; either way a
CUDA graph (cuda_graph=True) replays the whole fixed-shape call. Compile caches live in a per-user
folder that survives runs (configure_compile_cache). should_compile says when compiling pays back.
"""

import copy
import math
import os
import warnings
from pathlib import Path

import torch

from models.layers import AttnBlock, ResnetBlockBigGAN, ResnetBlockDDPM
from models.precision import PRECISIONS, autocast
from op._extension import triton_supported
from utils.device import on_device, synchronize

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile modes the denoiser accepts (as compile=<mode>: the whole network in that mode)."""

COMPILE_SCOPES = ("full", "regional")
"""What compile=<scope> compiles: the whole network, or each block of REGIONAL_BLOCKS on its own."""

DEFAULT_COMPILE_SCOPE = "full"
"""What compile=True means. "full" until benchmarks/bench_denoiser.py shows "regional" within a few
per cent of its s/slice on the GPU (it prints the comparison)."""

GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""The compile modes that already replay CUDA graphs (so cuda_graph=True would nest captures)."""

REGIONAL_BLOCKS = (ResnetBlockBigGAN, ResnetBlockDDPM, AttnBlock)
"""The repeated blocks that compile="regional" compiles one by one (45 in the 256 NCSN++)."""

CPU_SLICE_BATCH = 4
"""Slices per chunk on the CPU, where memory is not the limit."""

KNEE_PIXELS = 32 * 256 * 256
"""Pixels per network call (slices x H x W) from which the GPU runs the network at full throughput
(the knee): automatic chunks hold at most KNEE_PIXELS // (H W) slices, 32 for 256 x 256 planes.
Bigger chunks buy under 5 %, compile longer and hold more memory. Measured by
benchmarks/bench_denoiser.py on an H200 (the CUDA default, bf16 channels_last with the Triton
kernels in a CUDA graph: 4.15 ms/slice at 16 slices, 3.97 at 32, 3.89 at 64; BENCHMARKS.md)."""

PROBE_SLICES = 8
"""Slices of the probe call that measures one slice's peak memory."""

PROBE_MARGIN = 1.25
"""Safety factor on the probe's per-slice memory (compiled kernels, graph pools and allocator
fragmentation differ from the eager probe)."""

RESERVE_STACKS = 8
"""Default memory kept free for the rest of the run, in fp32 copies of the slice stack (the
sampler's and the data-consistency step's volumes) ..."""

RESERVE_FIXED_BYTES = 2 * 2**30
"""... plus this much for the operator's and libraries' workspaces."""

# should_compile's model of the 256 x 256 NCSN++ in bf16 on one GPU (NVIDIA H200); times scale with
# the pixels of a plane. benchmarks/bench_network.py measures them; BENCHMARKS.md has the runs.
EAGER_S_PER_SLICE_256 = 4.0e-3
"""Seconds per slice of the eager bf16 network as the entry scripts run it on CUDA with Triton:
channels_last, op's Triton kernels, replayed in a CUDA graph (bench_network variant bf16w-cl-graph:
4.00 ms at 16 slices on an H200; bench_denoiser: 3.97 ms at the default 32)."""

EAGER_NCHW_S_PER_SLICE_256 = 8.0e-3
"""... and without Triton, where the eager network runs NCHW with the library kernels (bench_network
variant bf16: 8.05 ms at 16 slices on an H200)."""

COMPILED_S_PER_SLICE_256 = 3.9e-3
"""Seconds per slice of the compiled (DEFAULT_COMPILE_SCOPE) network replayed in a CUDA graph
(benchmarks/bench_e2e_dds.py: 1.005 s per NFE on 256 slices, H200)."""

COMPILE_SECONDS = 120.0
"""First compile of DEFAULT_COMPILE_SCOPE with empty caches (the first run on a machine): about
120 s on two fresh H200 machines; regional compilation had not finished after 59 s either."""

CACHE_ENV = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}
"""Compile-cache variables that configure_compile_cache points into the per-user cache folder."""


class DenoiserMemoryError(MemoryError):
    """Not even one slice of the plane fits in the device memory."""


def check_slice_batch(slice_batch, num_slices: int) -> None:
    """A one-line ValueError when slice_batch (None: chosen from memory) exceeds the num_slices
    slices of the volume or is not a positive integer."""
    if slice_batch is None:
        return
    if isinstance(slice_batch, bool) or not isinstance(slice_batch, int) or slice_batch < 1:
        raise ValueError(f"slice batch must be a positive integer, got {slice_batch!r}")
    if slice_batch > num_slices:
        raise ValueError(
            f"slice batch {slice_batch} exceeds the volume's {num_slices} slices; accepted: 1 to "
            f"{num_slices}, or none to choose it from the free memory"
        )


def knee_slices(height: int, width: int) -> int:
    """The knee chunk for planes of height x width: KNEE_PIXELS // (height width), at least 1."""
    return max(1, KNEE_PIXELS // (height * width))


def fit_chunk(bytes_per_slice: float, budget_bytes: float, knee: int) -> int:
    """Slices per chunk: as many as budget_bytes holds at bytes_per_slice x PROBE_MARGIN, at most
    knee, at least 1 (a chunk that then does not fit is halved at run time)."""
    fits = int(budget_bytes // (bytes_per_slice * PROBE_MARGIN)) if bytes_per_slice > 0 else knee
    return max(1, min(knee, fits))


def balanced_chunk(num_slices: int, limit: int) -> int:
    """The smallest chunk size that covers num_slices in as few chunks of at most limit slices.

    Fixed-shape calls pad the last chunk to this size, so balancing keeps the padding below one
    slice per chunk (256 slices with a limit of 175: two chunks of 128, not 175 + 81 padded to 175).
    """
    chunks = math.ceil(num_slices / limit)
    return math.ceil(num_slices / chunks)


def should_compile(num_slices: int, nfe: int, plane_size, device) -> bool:
    """Whether compiling the network pays back within one reconstruction.

    True when the predicted saving, (EAGER_S_PER_SLICE_256, or EAGER_NCHW_S_PER_SLICE_256 where
    Triton cannot run, - COMPILED_S_PER_SLICE_256) scaled to the plane's pixels x num_slices x nfe,
    exceeds COMPILE_SECONDS; never off CUDA (the compiled path replays CUDA graphs). With Triton
    the eager network is within 3 % of the compiled one, so compiling pays back only past about a
    million slice evaluations.

    Args:
        num_slices: slices of the volume the network sees at each step.
        nfe: network evaluations per slice (sampler steps).
        plane_size: side of the square planes, or (height, width).
        device: torch.device or name.
    """
    if torch.device(device).type != "cuda":
        return False
    height, width = (plane_size, plane_size) if isinstance(plane_size, int) else plane_size
    eager = EAGER_S_PER_SLICE_256 if triton_supported(device) else EAGER_NCHW_S_PER_SLICE_256
    saving_per_slice = (eager - COMPILED_S_PER_SLICE_256) * height * width / 256**2
    return saving_per_slice * num_slices * nfe > COMPILE_SECONDS


def compile_cache_dir() -> Path:
    """The per-user folder of the compile caches: $XDG_CACHE_HOME/iscs, else ~/.cache/iscs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "iscs"


def configure_compile_cache() -> None:
    """Keep inductor's and Triton's compile caches in compile_cache_dir() (which survives runs and
    reboots) and turn on torch's FX graph and AOT autograd caches, except where the user set the
    variables (CACHE_ENV, TORCHINDUCTOR_FX_GRAPH_CACHE, TORCHINDUCTOR_AUTOGRAD_CACHE)."""
    for variable, folder in CACHE_ENV.items():
        os.environ.setdefault(variable, str(compile_cache_dir() / folder))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    if "TORCHINDUCTOR_FX_GRAPH_CACHE" not in os.environ:
        inductor_config.fx_graph_cache = True
    # torch < 2.5 has no AOT autograd cache.
    if "TORCHINDUCTOR_AUTOGRAD_CACHE" not in os.environ and hasattr(
        functorch_config, "enable_autograd_cache"
    ):
        functorch_config.enable_autograd_cache = True


def compile_regions(net, mode="default"):
    """net with each REGIONAL_BLOCKS module replaced by torch.compile of it; parameters and buffers
    are shared and net itself is unchanged (its containers are shallow-copied where a block moves).
    """
    if isinstance(net, REGIONAL_BLOCKS):
        return torch.compile(net, mode=mode, dynamic=False)
    children = {
        name: child if child is None else compile_regions(child, mode) for name, child in net._modules.items()
    }
    if all(children[name] is child for name, child in net._modules.items()):
        return net
    clone = copy.copy(net)
    clone._modules = children
    return clone


def _allow_recompiles(count):
    """Let dynamo keep count compiled variants of one code object (one per distinct block shape),
    where its default limit (8) would send the rest of the blocks back to eager."""
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), count))
            break
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), count))
            break


def _is_out_of_memory(err) -> bool:
    """Whether err, or an error it was raised from (compilers wrap them), is a CUDA out-of-memory."""
    while err is not None:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            return True
        err = err.__cause__ or err.__context__
    return False


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
            synchronize(self.input.device)
            torch.cuda.empty_cache()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.output = self.fn(self.input, self.sigma)
            self.graph = graph
        except RuntimeError as exc:
            if _is_out_of_memory(exc):
                raise
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
        slice_batch: slices per network call; None chooses it (see the module docstring: on CUDA
            from a measured probe, the free memory less reserve_bytes, and the knee).
        precision: a name of models.PRECISIONS ("fp32", or "bf16" for bf16 autocast); the result
            is fp32 either way.
        channels_last: run the network in channels_last memory layout (converts the network's
            weights in place). None (default): channels_last where op's Triton kernels for
            it run (CUDA with Triton: fused GroupNorm, FIR resampling and residual sums), which
            makes it the fast eager layout there; NCHW elsewhere.
        compile: run the network through torch.compile: True (DEFAULT_COMPILE_SCOPE), "full" or
            "regional" (COMPILE_SCOPES, in torch.compile's default mode), or a name of
            COMPILE_MODES (the whole network in that mode). The network is compiled once per
            chunk shape, so the chunk size is fixed per stack size (balanced_chunk of the
            slice_batch or memory limit) and the last chunk is zero-padded to it. The first call
            pays the compilation; the caches are kept (configure_compile_cache).
        cuda_graph: capture the fixed-shape network call as a CUDA graph and replay it (CUDA only;
            elsewhere, or if the capture fails, the call runs as is, with one warning). Implies the
            fixed chunk shape of compile; the graph's memory stays reserved while the denoiser lives.
            None (default): on CUDA devices, unless the compile mode replays graphs itself (the
            eager network with its Triton kernels is launch-bound without one: 6.9 against 4.0
            ms per 256^2 slice on an H200).
        reserve_bytes: CUDA memory that automatic chunks leave free for the rest of the run (None:
            RESERVE_STACKS fp32 copies of the stack plus RESERVE_FIXED_BYTES).
    """

    def __init__(
        self,
        net,
        slice_batch=None,
        precision="fp32",
        channels_last=None,
        compile=False,
        cuda_graph=None,
        reserve_bytes=None,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"Denoiser: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if slice_batch is not None and (
            isinstance(slice_batch, bool) or not isinstance(slice_batch, int) or slice_batch < 1
        ):
            raise ValueError(f"Denoiser: slice_batch must be a positive integer or None, got {slice_batch!r}")
        accepted = COMPILE_SCOPES + COMPILE_MODES
        if not (isinstance(compile, bool) or compile in accepted):
            raise ValueError(
                f"Denoiser: compile must be True, False or one of {', '.join(accepted)}, got {compile!r}"
            )
        if cuda_graph and compile in GRAPH_MODES:
            raise ValueError(
                f"Denoiser: compile mode {compile!r} captures CUDA graphs itself; with cuda_graph=True "
                f"use compile=True or one of {', '.join(m for m in accepted if m not in GRAPH_MODES)}"
            )
        if reserve_bytes is not None and not (isinstance(reserve_bytes, int) and reserve_bytes >= 0):
            raise ValueError(
                f"Denoiser: reserve_bytes must be a non-negative integer or None, got {reserve_bytes!r}"
            )
        self.net = net
        self.slice_batch = slice_batch
        self.precision = precision
        self.memory_format = None
        if channels_last is not None:
            self._set_layout(channels_last)
        compile = DEFAULT_COMPILE_SCOPE if compile is True else compile
        self.compile_scope = "regional" if compile == "regional" else ("full" if compile else None)
        self.compile_mode = None if not compile else ("default" if compile in COMPILE_SCOPES else compile)
        self.cuda_graph = None if cuda_graph is None else bool(cuda_graph)
        self.reserve_bytes = reserve_bytes
        self._network = None
        self._calls = {}
        self._limits = {}
        self._per_slice = {}
        self._halved = False
        self._graph_warned = False

    def _set_layout(self, channels_last: bool) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def _resolve_auto(self, device) -> None:
        """Choose the automatic layout (channels_last=None) and CUDA graph (cuda_graph=None) for
        the device of the first call."""
        if self.memory_format is None:
            self._set_layout(triton_supported(device))
        if self.cuda_graph is None:
            self.cuda_graph = torch.device(device).type == "cuda" and self.compile_mode not in GRAPH_MODES

    @property
    def fixed_shape(self) -> bool:
        """Whether every network call sees one chunk shape (compile or cuda_graph)."""
        return self.compile_mode is not None or bool(self.cuda_graph)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Denoised slices x0 [N, C, H, W] (fp32) of noisy slices x at noise std sigma (float, 0-d tensor)."""
        return self._run(x, sigma, denoise=True)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The score net(x, sigma) [N, C, H, W] (fp32) of the noisy slices x."""
        return self._run(x, sigma, denoise=False)

    def chunk_size(self, x: torch.Tensor) -> int:
        """Slices per network call for x: the given slice_batch, else chosen for x's device (on
        CUDA the first call per plane shape runs the memory probe).

        With a fixed chunk shape (compile, cuda_graph) it is balanced over x's slices.
        """
        key = (*x.shape[1:], x.device)
        if key not in self._limits:
            self._limits[key] = self._initial_limit(x)
        limit = min(self._limits[key], x.shape[0])
        return balanced_chunk(x.shape[0], limit) if self.fixed_shape else limit

    def _initial_limit(self, x):
        if self.slice_batch is not None:
            return self.slice_batch
        if x.device.type != "cuda":
            return CPU_SLICE_BATCH
        key = (*x.shape[1:], x.device)
        self._per_slice[key] = self.measure_bytes_per_slice(x)
        return fit_chunk(self._per_slice[key], self._budget_bytes(x), knee_slices(*x.shape[-2:]))

    def _budget_bytes(self, x):
        """Free device memory (the allocator's cached blocks included) less the reserve."""
        free, _ = torch.cuda.mem_get_info(x.device)
        cached = torch.cuda.memory_reserved(x.device) - torch.cuda.memory_allocated(x.device)
        reserve = self.reserve_bytes
        if reserve is None:
            reserve = RESERVE_STACKS * x.numel() * 4 + RESERVE_FIXED_BYTES
        return free + cached - reserve

    def measure_bytes_per_slice(self, x: torch.Tensor) -> float:
        """Peak CUDA memory of one slice of x through the eager network in this denoiser's precision
        and layout, measured on PROBE_SLICES slices (resets the device's peak-memory statistics)."""
        if x.device.type != "cuda":
            raise ValueError(f"Denoiser: memory is measured on CUDA devices only, got a tensor on {x.device}")
        self._resolve_auto(x.device)
        chunk = x[:PROBE_SLICES]
        sigma = torch.ones((), device=x.device)
        synchronize(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        with on_device(x), torch.no_grad(), autocast(x.device.type, self.precision):
            self._eager_call(chunk, sigma)
        synchronize(x.device)
        return (torch.cuda.max_memory_allocated(x.device) - base) / chunk.shape[0]

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
        self._resolve_auto(x.device)
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        # A graph must not replay casts that the autocast cache frees when the region ends.
        cast = autocast(x.device.type, self.precision, cache_enabled=not self.cuda_graph)
        with on_device(x), torch.no_grad(), cast:
            size = self.chunk_size(x)
            start = 0
            while start < x.shape[0]:
                chunk = x[start : start + size]
                try:
                    network = self._fixed_call(x, size) if self.fixed_shape else self._eager_call
                    score = network(chunk, sigma).float()
                except RuntimeError as err:
                    if not _is_out_of_memory(err):
                        raise
                    reason = str(err).splitlines()[0][:120]
                else:
                    out[start : start + chunk.shape[0]] = chunk + sigma**2 * score if denoise else score
                    start += chunk.shape[0]
                    continue
                # Outside the except clause, so the failed call's activations are free again.
                size = self._halve(x, size, reason)
        return out

    def _halve(self, x, size, reason):
        """The chunk size after an out-of-memory at size slices (one warning per denoiser)."""
        key = (*x.shape[1:], x.device)
        for call_key in [k for k in self._calls if k[1:] == key]:
            del self._calls[call_key]
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
        if size == 1:
            raise DenoiserMemoryError(self._memory_message(x, reason))
        self._limits[key] = size // 2
        if not self._halved:
            self._halved = True
            warnings.warn(
                f"Denoiser: {size} slices per call ran out of memory; going on with {size // 2}",
                RuntimeWarning,
                stacklevel=4,
            )
        return self.chunk_size(x)

    def _memory_message(self, x, reason):
        plane = "x".join(str(s) for s in x.shape[1:])
        key = (*x.shape[1:], x.device)
        needed = (
            f"about {self._per_slice[key] * PROBE_MARGIN / 2**30:.2f} GiB"
            if key in self._per_slice
            else "more than is free"
        )
        if x.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(x.device)
            available = f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB on {x.device}"
        else:
            available = f"the memory of {x.device}"
        return (
            f"Denoiser: one slice of {plane} does not fit: the network needs {needed}, and there is "
            f"{available} ({reason}); use smaller planes, precision bf16 or a device with more memory"
        )

    def _eager_call(self, chunk, sigma):
        return self.net(chunk.contiguous(memory_format=self.memory_format), sigma.expand(chunk.shape[0]))

    def _compiled_network(self):
        """The network as the fixed-shape calls run it: compiled (full or regional) or as is."""
        if self.compile_scope is None:
            return self.net
        configure_compile_cache()
        if self.compile_scope == "full":
            return torch.compile(self.net, mode=self.compile_mode, dynamic=False)
        blocks = sum(isinstance(m, REGIONAL_BLOCKS) for m in self.net.modules())
        _allow_recompiles(4 * blocks)
        return compile_regions(self.net, self.compile_mode)

    def _fixed_call(self, x, size):
        """The _FixedShapeCall for chunks of size slices of x (built, and compiled, on first use)."""
        key = (size, *x.shape[1:], x.device)
        if key not in self._calls:
            if self._network is None:
                self._network = self._compiled_network()
            graph = self.cuda_graph and x.device.type == "cuda"
            if self.cuda_graph and not graph and not self._graph_warned:
                self._graph_warned = True
                warnings.warn(
                    f"Denoiser: cuda_graph applies to CUDA tensors only; running on {x.device} without one",
                    RuntimeWarning,
                    stacklevel=4,
                )
            shape = (size, *x.shape[1:])
            self._calls[key] = _FixedShapeCall(self._network, shape, x.device, self.memory_format, graph)
        return self._calls[key]
