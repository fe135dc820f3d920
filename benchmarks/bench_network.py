"""Time the NCSN++ score network (AAPM 256 config, random weights) the reference's way and ours.

Each variant runs the same network on the same inputs and reports milliseconds per slice (median
of CUDA-event timings after warm-up), effective TFLOP/s (counted FLOPs of one slice / time),
peak memory, and the max abs and relative L2 difference of its outputs from the reference
variant's (fp32, cuDNN TF32 defaults, batch 15) on the first 15 slices.

Variants (--variants, comma separated):
  ref                 fp32, NCHW, eager, batch 15 (how the published code runs)
  bf16                bf16 autocast, NCHW, eager (the issue's "plain bf16 autocast")
  bf16-bench          as bf16 with cudnn.benchmark (cuDNN times its algorithms)
  bf16-torchops       as bf16 with ISCS_OPS_FORCE_TORCH=1 (depthwise-conv FIR)
  fp32-cl             fp32, channels_last, eager (fused GroupNorm + SiLU: the fp32 twin of bf16-cl)
  bf16-cl             bf16 autocast, channels_last, eager: the entry scripts' eager path on CUDA
                      (GroupNorm fused with the embedding bias and SiLU, op.group_norm)
  bf16-cl-torchops    as bf16-cl with ISCS_OPS_FORCE_TORCH=1 (depthwise-conv FIR)
  bf16w-cl            bf16 weights (Fourier embedding kept fp32) under autocast, channels_last, eager
  bf16w-cl-graph      bf16w-cl replayed as one CUDA graph
  bf16-compile        bf16 through torch.compile (default mode; inductor picks conv layouts itself)
  bf16-cl-compile     bf16-cl through torch.compile (default mode); FIR resampling takes upfirdn2d's
                      taps path there (pointwise, fused by inductor), not a depthwise convolution
  bf16-cl-compile-graph     ... replayed as one CUDA graph (what models.Denoiser(cuda_graph=True) does)
  bf16w-cl-compile    bf16w-cl through torch.compile (default mode)
  bf16w-cl-compile-ro       ... mode reduce-overhead (CUDA graphs)
  bf16w-cl-compile-mat      ... mode max-autotune-no-cudagraphs
Every variant but ref uses --batch (a comma list runs each batch size); all but ref and bf16 let
cuDNN time its algorithms (cudnn.benchmark).

Usage (H100): python benchmarks/bench_network.py --variants ref,bf16,bf16-cl,bf16w-cl-compile --batch 32
CPU smoke run: python benchmarks/bench_network.py --device cpu --image-size 32 --nf 32 --batch 4 --repeats 2
--profile NAMES (comma list) prints the top CUDA kernels of those variants and their device time by category
(convolution, GEMM, attention, FIR, GroupNorm, fused Triton, layout copies, other elementwise).
Full results: $OUT/bench_network.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import build_model, load_config  # noqa: E402
from models.layers import GaussianFourierProjection, variance_scaling  # noqa: E402
from op import FORCE_TORCH_ENV  # noqa: E402
from utils.device import default_device, device_name, synchronize  # noqa: E402
from utils.io import write_text  # noqa: E402

REFERENCE_BATCH = 15


class Variant(NamedTuple):
    """How one variant runs the network."""

    precision: str  # "fp32", "autocast" (bf16) or "bf16-weights" (bf16 parameters under bf16 autocast)
    channels_last: bool
    torch_ops: bool = False  # ISCS_OPS_FORCE_TORCH=1: depthwise-convolution FIR instead of the CUDA kernel
    compile: str | None = None  # torch.compile mode
    graph: bool = False  # replay as one captured CUDA graph
    cudnn_benchmark: bool = True  # let cuDNN time its algorithms


VARIANTS = {
    "ref": Variant("fp32", False, cudnn_benchmark=False),
    "bf16": Variant("autocast", False, cudnn_benchmark=False),
    "bf16-bench": Variant("autocast", False),
    "bf16-torchops": Variant("autocast", False, torch_ops=True, cudnn_benchmark=False),
    "fp32-cl": Variant("fp32", True, cudnn_benchmark=False),
    "bf16-cl": Variant("autocast", True),
    "bf16-cl-torchops": Variant("autocast", True, torch_ops=True),
    "bf16w-cl": Variant("bf16-weights", True),
    "bf16w-cl-graph": Variant("bf16-weights", True, graph=True),
    "bf16-compile": Variant("autocast", False, compile="default"),
    "bf16-cl-compile": Variant("autocast", True, compile="default"),
    "bf16-cl-compile-graph": Variant("autocast", True, compile="default", graph=True),
    "bf16w-cl-compile": Variant("bf16-weights", True, compile="default"),
    "bf16w-cl-compile-ro": Variant("bf16-weights", True, compile="reduce-overhead"),
    "bf16w-cl-compile-mat": Variant("bf16-weights", True, compile="max-autotune-no-cudagraphs"),
}


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ve" / "AAPM_256_ncsnpp_Chung.yaml")
    parser.add_argument(
        "--variants",
        default="ref,bf16,bf16-cl,bf16w-cl-compile",
        help=f"comma list of: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--batch", default="32", help="slices per forward for every variant but ref (comma list)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed forwards per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards first (compilation included)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--image-size", type=int, default=None, help="override data.image_size (CPU runs)")
    parser.add_argument("--nf", type=int, default=None, help="override model.nf (CPU runs)")
    parser.add_argument(
        "--profile", default="", help="profile these variants (comma list) and print their top kernels"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--freezing",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="inductor freezing (weights folded as constants) for the compiled variants",
    )
    return parser.parse_args()


def make_config(args):
    raw = load_config(args.config).to_dict()
    if args.image_size:
        raw["data"]["image_size"] = args.image_size
    if args.nf:
        raw["model"]["nf"] = args.nf
    return load_config(raw)


def random_network(config, seed):
    """The network with non-degenerate random weights: every layer at unit variance scaling (the
    config's init_scale 0 would zero each residual branch and make output comparisons trivial)."""
    gen = torch.Generator().manual_seed(seed)
    net = build_model(config, generator=gen)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if not param.requires_grad:
                continue
            if param.dim() >= 2:
                param.copy_(variance_scaling(param.shape, 1.0, gen))
            elif "GroupNorm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))
    return net.eval()


def prepare(net, spec, device):
    """A copy of the network on the device in the variant's dtype and memory format."""
    net = copy.deepcopy(net).to(device)
    if spec.precision == "bf16-weights":
        for module in net.modules():
            if not isinstance(module, GaussianFourierProjection):
                for param in module.parameters(recurse=False):
                    param.data = param.data.to(torch.bfloat16)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def count_flops(net, x, sigma):
    """FLOPs of one forward on x (convolutions, matmuls, attention) by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x, sigma)
    return counter.get_total_flops()


def capture_graph(fn):
    """fn replayed as one CUDA graph (static inputs and outputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


def run_variant(name, spec, base, inputs, sigmas, batch, args, device):
    """Time one variant; returns its result row and the outputs of the first reference slices."""
    net = prepare(base, spec, device)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    x = inputs[:batch].to(device).contiguous(memory_format=memory_format)
    sigma = sigmas[:batch].to(device)
    autocast = spec.precision != "fp32"
    model = torch.compile(net, mode=spec.compile, dynamic=False) if spec.compile else net

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
            return model(x, sigma)

    previous_env = os.environ.get(FORCE_TORCH_ENV)
    os.environ[FORCE_TORCH_ENV] = "1" if spec.torch_ops else "0"
    torch.backends.cudnn.benchmark = spec.cudnn_benchmark
    try:
        # no_grad, as models.Denoiser runs the network (so compiled graphs are the same, and cached).
        with torch.no_grad():
            start = time.perf_counter()
            fn = capture_graph(forward) if spec.graph else forward
            out = fn()
            synchronize(device)
            first_s = time.perf_counter() - start
            for _ in range(args.warmup - 1):
                fn()
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    out = fn()
                    end.record()
                    end.synchronize()
                    times.append(begin.elapsed_time(end))
                else:
                    begin = time.perf_counter()
                    out = fn()
                    times.append((time.perf_counter() - begin) * 1e3)
            outputs = out[:REFERENCE_BATCH].float().clone()
            profiled = profile(fn, device) if name in args.profile.split(",") else None
    finally:
        if previous_env is None:
            os.environ.pop(FORCE_TORCH_ENV, None)
        else:
            os.environ[FORCE_TORCH_ENV] = previous_env
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    row = dict(
        variant=name,
        batch=batch,
        ms_per_forward=statistics.median(times),
        ms_per_slice=statistics.median(times) / batch,
        first_call_s=first_s,
        peak_gib=peak,
        times_ms=times,
        profile_ms_by_category=profiled,
        **spec._asdict(),
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if spec.compile:
        torch._dynamo.reset()
    return row, outputs


KERNEL_CATEGORIES = {
    "fused Triton (inductor)": ("triton_",),
    "convolution (cuDNN)": ("conv", "xmma", "implicit", "dgrad", "wgrad", "fprop", "winograd"),
    "GEMM": ("gemm", "cutlass", "matmul", "sm90_"),
    "attention": ("flash", "fmha", "attention", "softmax"),
    "FIR (upfirdn2d)": ("upfirdn2d",),
    "GroupNorm (eager)": ("group_norm", "groupnorm", "rowwisemoments", "compute_stats"),
    "layout copies": ("nchwtonhwc", "nhwctonchw", "copy", "transpose", "permute"),
}
"""Category -> lower-case substrings of the CUDA kernel names it collects (first match wins)."""


def kernel_category(name: str) -> str:
    lowered = name.lower()
    return next(
        (c for c, keys in KERNEL_CATEGORIES.items() if any(k in lowered for k in keys)), "other elementwise"
    )


def profile(fn, device, repeats=3):
    """Print the top kernels of repeats calls of fn and their device time per call by category.

    Returns {category: ms per call}."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(repeats):
            fn()
        synchronize(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=30, max_name_column_width=70))
    categories = {}
    for event in events:
        self_us = getattr(event, key, 0.0) if device.type == "cuda" else 0.0
        if self_us > 0:
            category = kernel_category(event.key)
            categories[category] = categories.get(category, 0.0) + self_us / 1e3 / repeats
    total = sum(categories.values()) or 1.0
    print(f"{'device time per call by category':34s} {'ms':>9s} {'share':>7s}")
    for category, ms in sorted(categories.items(), key=lambda item: -item[1]):
        print(f"{category:34s} {ms:9.2f} {100 * ms / total:6.1f}%")
    return categories


def main():
    args = parse_args()
    device = torch.device(args.device)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; accepted: {', '.join(VARIANTS)}")
    batches = [int(b) for b in str(args.batch).split(",")]
    if args.freezing:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True

    config = make_config(args)
    size = config.data.image_size
    base = random_network(config, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    total = max([*batches, REFERENCE_BATCH])
    inputs = torch.rand(total, config.data.num_channels, size, size, generator=gen)
    sigmas = torch.exp(torch.empty(total).uniform_(math.log(0.01), math.log(378.0), generator=gen))
    flops = count_flops(base.to(device), inputs[:1].to(device), sigmas[:1].to(device))
    base = base.cpu()
    print(
        f"device: {device_name(device)}  "
        f"torch {torch.__version__}  cudnn {torch.backends.cudnn.version()}  "
        f"TF32 conv {torch.backends.cudnn.allow_tf32} matmul {torch.backends.cuda.matmul.allow_tf32}"
    )
    print(
        f"network: {args.config.name} image {size} nf {config.model.nf}, "
        f"{sum(p.numel() for p in base.parameters()):,} parameters, "
        f"{flops / 1e12:.3f} TFLOP per slice (counted)"
    )

    plan = [("ref", REFERENCE_BATCH)] + [(n, b) for n in names if n != "ref" for b in batches]
    rows, reference = [], None
    for name, batch in plan:
        try:
            row, outputs = run_variant(name, VARIANTS[name], base, inputs, sigmas, batch, args, device)
        except Exception as exc:  # noqa: BLE001 -- one failing variant must not hide the others
            rows.append({"variant": name, "batch": batch, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(f"{name} (batch {batch}) failed: {rows[-1]['error']}", flush=True)
            continue
        if reference is None:
            reference = outputs
        shared = min(len(outputs), len(reference))
        diff = (outputs[:shared] - reference[:shared]).abs()
        row.update(
            max_abs_diff=diff.max().item(),
            rel_l2_diff=(diff.norm() / reference[:shared].norm()).item(),
            reference_max_abs=reference.abs().max().item(),
            tflops=flops / (row["ms_per_slice"] * 1e-3) / 1e12,
        )
        rows.append(row)
        print(
            f"{name} (batch {batch}): {row['ms_per_slice']:.3f} ms/slice, {row['tflops']:.1f} TFLOP/s, "
            f"first call {row['first_call_s']:.1f} s",
            flush=True,
        )

    print(
        f"\n{'variant':22s} {'batch':>5s} {'ms/slice':>9s} {'TFLOP/s':>8s} {'peak GiB':>9s} "
        f"{'max|diff|':>10s} {'rel L2':>9s} {'1st call s':>10s}"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:22s} {row['batch']:5d}  failed: {row['error'][:80]}")
            continue
        print(
            f"{row['variant']:22s} {row['batch']:5d} {row['ms_per_slice']:9.3f} {row['tflops']:8.1f} "
            f"{row['peak_gib']:9.2f} {row['max_abs_diff']:10.2e} {row['rel_l2_diff']:9.2e} "
            f"{row['first_call_s']:10.1f}"
        )
    if reference is not None:
        print(
            f"(differences against the first row on its first slices, max |reference| = "
            f"{reference.abs().max().item():.3g})"
        )

    out_dir = os.environ.get("OUT")
    if out_dir:
        result = {
            "device": str(device),
            "torch": torch.__version__,
            "config": str(args.config),
            "image_size": size,
            "flops_per_slice": flops,
            "rows": rows,
        }
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(out_dir, "bench_network.json"), json.dumps(result, indent=1, default=str))
    return 0 if rows and all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
