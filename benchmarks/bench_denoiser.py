"""models.Denoiser on the 256 NCSN++ (random weights): s/slice and peak memory per chunk size, compile
cost of regional vs full compilation (empty and warm caches), and the constants they set.

Measured, in this order, until the time budget (--budget-s) is spent; each line of work runs in its
own process, so every "cold" compile starts from an empty cache folder and a fresh process:
  1. eager bf16 (contiguous; channels_last; channels_last + CUDA graph, as the entry scripts run it
     on CUDA with Triton), per chunk size: s/slice, peak memory,
     and the memory probe's estimate (models.denoiser: per-slice bytes x chunk x PROBE_MARGIN);
  2. compiled + CUDA graph at the default knee chunk (what models.Denoiser runs), regional and full:
     first call (compile + capture) with an EMPTY cache folder, then again in a second process on
     the same folder (warm): regional cold and warm, then full cold and warm; s/slice and peak memory;
  3. compiled + CUDA graph at the other chunk sizes (regional, then full), while time remains.
cuDNN picks its algorithms by heuristics, as in the entry scripts, unless --cudnn-benchmark;
--eager-only stops after step 1.
Then it prints the knee (smallest chunk within KNEE_TOLERANCE of the best s/slice), KNEE_PIXELS, the
compile scope to make the default, and should_compile's constants, as Python lines for
models/denoiser.py. Full results: $OUT/bench_denoiser.json.

GPU (one command, about 4 minutes on an H200):
    python benchmarks/bench_denoiser.py
CPU smoke run (a tiny network; dynamo tracing without inductor's C++ compile):
    python benchmarks/bench_denoiser.py --device cpu --image-size 32 --nf 16 --chunks 2,4 \
        --default-chunk 2 --repeats 1 --backend eager
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_network import make_config, random_network  # noqa: E402
from models import Denoiser  # noqa: E402
from models import denoiser as denoiser_module  # noqa: E402
from models.denoiser import COMPILE_SCOPES  # noqa: E402
from utils.device import default_device, device_name, synchronize  # noqa: E402
from utils.io import write_text  # noqa: E402

EAGER_PATHS = {
    "eager": (False, False),
    "eager channels_last": (True, False),
    "eager channels_last+graph": (True, True),
}
"""Eager path -> (channels_last, CUDA graph); the entry scripts run the last one on CUDA with Triton."""

KNEE_TOLERANCE = 0.05
"""A chunk is at the knee when its s/slice is within this fraction of the best chunk's."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ve" / "AAPM_256_ncsnpp_Chung.yaml")
    parser.add_argument(
        "--chunks", default="8,16,32,64,128", help="chunk sizes (slices per call), comma list"
    )
    parser.add_argument("--default-chunk", type=int, default=32, help="chunk of the cold/warm compile runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument(
        "--budget-s", type=float, default=230.0, help="wall-clock budget of the whole command"
    )
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--image-size", type=int, default=None, help="override data.image_size (CPU runs)")
    parser.add_argument("--nf", type=int, default=None, help="override model.nf (CPU runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend",
        default="inductor",
        help="torch.compile backend ('eager': tracing only, for CPU smoke runs)",
    )
    parser.add_argument(
        "--paths",
        default=",".join(EAGER_PATHS),
        help=f"eager paths to measure, comma list of: {', '.join(EAGER_PATHS)}",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="let cuDNN time its algorithms (off: as the entry scripts run)",
    )
    parser.add_argument("--eager-only", action="store_true", help="measure the eager paths only, no compilation")
    parser.add_argument(
        "--worker", choices=("eager", "regional", "full"), default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.paths.split(",")) - set(EAGER_PATHS))
    if unknown:
        parser.error(f"--paths: unknown {', '.join(unknown)}; accepted: {', '.join(EAGER_PATHS)}")
    return args


# ------------------------------------------------------------------------------------------------
# Worker: one process measuring one path over a list of chunk sizes, one JSON line per chunk.
# ------------------------------------------------------------------------------------------------


def measure(denoiser, chunk, config, args, device):
    """First call (s), median s/slice and peak memory of denoiser on a stack of chunk slices."""
    size = config.data.image_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.rand(chunk, config.data.num_channels, size, size, generator=gen).to(device)
    sigma = 5.0
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    start = time.perf_counter()
    denoiser(x, sigma)
    synchronize(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        denoiser(x, sigma)
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else float("nan")
    return {"first_call_s": first, "s_per_slice": statistics.median(times) / chunk, "peak_bytes": peak}


def measured_row(path, denoiser, chunk, config, args, device, **extra):
    """One JSON line: the measurement of denoiser at chunk slices, and the chunk it really ran (the
    denoiser halves a chunk that runs out of memory)."""
    row = {"path": path, "chunk": chunk, **extra}
    row.update(measure(denoiser, chunk, config, args, device))
    size = config.data.image_size
    row["ran_chunk"] = denoiser.chunk_size(
        torch.empty(chunk, config.data.num_channels, size, size, device=device)
    )
    print(json.dumps(row), flush=True)


def worker(args):
    device = torch.device(args.device)
    if args.backend != "inductor":
        real_compile = torch.compile
        torch.compile = lambda module, mode=None, dynamic=None: real_compile(
            module, backend=args.backend, dynamic=dynamic
        )
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    config = make_config(args)
    net = random_network(config, args.seed).to(device)
    graph = device.type == "cuda"
    size = config.data.image_size
    chunks = [int(c) for c in args.chunks.split(",")]
    if args.worker == "eager":
        probe = Denoiser(net, precision="bf16", channels_last=True)
        for chunk in chunks:
            x = torch.rand(chunk, config.data.num_channels, size, size, device=device)
            per_slice = probe.measure_bytes_per_slice(x) if graph else float("nan")
            estimate = per_slice * chunk * denoiser_module.PROBE_MARGIN
            for path in args.paths.split(","):
                channels_last, cuda_graph = EAGER_PATHS[path]
                if cuda_graph and not graph:
                    continue
                # The Denoiser converts the weights to channels_last but never back.
                net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                denoiser = Denoiser(
                    net, slice_batch=chunk, precision="bf16", channels_last=channels_last, cuda_graph=cuda_graph
                )
                measured_row(
                    path, denoiser, chunk, config, args, device, probe_bytes=estimate,
                    cudnn_benchmark=args.cudnn_benchmark,
                )
                del denoiser
        return 0
    for chunk in chunks:
        denoiser = Denoiser(
            net,
            slice_batch=chunk,
            precision="bf16",
            channels_last=True,
            compile=args.worker,
            cuda_graph=graph,
        )
        measured_row(f"{args.worker}+graph" if graph else args.worker, denoiser, chunk, config, args, device)
        del denoiser
        torch._dynamo.reset()  # the next chunk compiles from its own cache, not from this process's state
    return 0


# ------------------------------------------------------------------------------------------------
# Driver: runs the workers within the budget and reads the constants off their results.
# ------------------------------------------------------------------------------------------------


def run_worker(args, kind, chunks, cache, deadline, label):
    """Rows of one worker process (those it printed before the deadline, if it ran out of time)."""
    remaining = deadline - time.monotonic()
    if remaining < 10:
        print(f"{label}: skipped, over the time budget", flush=True)
        return [], "skipped"
    env = dict(
        os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton")
    )
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--chunks",
        ",".join(map(str, chunks)),
    ]
    for name in ("config", "device", "image_size", "nf", "seed", "repeats", "backend", "paths"):
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    command.append("--cudnn-benchmark" if args.cudnn_benchmark else "--no-cudnn-benchmark")
    start = time.monotonic()
    # A session of its own, so that a worker stopped at the deadline takes its compile workers along.
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=remaining)
        status = "ok" if process.returncode == 0 else f"exit {process.returncode}: {stderr[-300:]}"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        status = f"stopped at the time budget after {remaining:.0f} s"
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    for row in rows:
        row["label"] = label
    print(f"{label}: {len(rows)} row(s) in {time.monotonic() - start:.0f} s ({status})", flush=True)
    return rows, status


def knee(rows):
    """(knee chunk, {chunk: s/slice}) of one path's rows: the smallest chunk within KNEE_TOLERANCE of
    the best."""
    speed = {row["chunk"]: row["s_per_slice"] for row in rows}
    if not speed:
        return None, speed
    best = min(speed.values())
    return min(c for c, s in speed.items() if s <= best * (1 + KNEE_TOLERANCE)), speed


def gib(value):
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value / 2**30:.2f}"
    )


def report(args, rows, config):
    size = config.data.image_size
    print(
        f"\n{'path':14s} {'chunk':>5s} {'ms/slice':>9s} {'1st call s':>10s} {'peak GiB':>9s} "
        f"{'probe GiB':>9s}  run"
    )
    for row in rows:
        print(
            f"{row['path']:14s} {row['chunk']:5d} {1e3 * row['s_per_slice']:9.3f} "
            f"{row['first_call_s']:10.1f} "
            f"{gib(row['peak_bytes']):>9s} {gib(row.get('probe_bytes')):>9s}  {row['label']}"
        )

    halved = [r for r in rows if r["ran_chunk"] != r["chunk"]]
    for row in halved:
        print(f"{row['path']} chunk {row['chunk']} ran out of memory and ran {row['ran_chunk']}: left out")
    rows = [r for r in rows if r not in halved]

    def of(path, label_part=""):
        """Rows of a path ("eager", "eager channels_last+graph") or a compile scope ("regional", "full"), from the
        runs whose label holds label_part."""
        name = (lambda r: r["path"]) if path.startswith("eager") else (lambda r: r["path"].split("+")[0])
        return [r for r in rows if name(r) == path and label_part in r["label"]]

    # The knee from the first sweep with 3 chunk sizes or more: compiled if measured, else eager.
    sweeps = {
        "regional compiled": of("regional"),
        "full compiled": of("full"),
        "eager channels_last+graph": of("eager channels_last+graph"),
    }
    sweeps["eager"] = of("eager")
    source = next((name for name, found in sweeps.items() if len({r["chunk"] for r in found}) >= 3), "eager")
    knee_chunk, _ = knee(sweeps[source])
    default = args.default_chunk
    cold = {
        scope: next((r for r in of(scope, "cold") if r["chunk"] == default), None) for scope in COMPILE_SCOPES
    }
    warm = {
        scope: next((r for r in of(scope, "warm") if r["chunk"] == default), None) for scope in COMPILE_SCOPES
    }
    summary = {"knee_chunk": knee_chunk, "knee_source": source, "cold": cold, "warm": warm}
    print()
    for scope in COMPILE_SCOPES:
        if cold[scope]:
            warm_s = f"{warm[scope]['first_call_s']:.1f} s" if warm[scope] else "-"
            print(
                f"{scope:8s} chunk {default}: first call {cold[scope]['first_call_s']:.1f} s cold, "
                f"{warm_s} warm; "
                f"{1e3 * cold[scope]['s_per_slice']:.3f} ms/slice"
            )
    if knee_chunk is not None:
        print(f"knee: {knee_chunk} slices of {size} x {size} (from {source})")
        print(f"KNEE_PIXELS = {knee_chunk} * {size} * {size}")
    if cold["regional"] and cold["full"]:
        close = cold["regional"]["s_per_slice"] <= cold["full"]["s_per_slice"] * (1 + KNEE_TOLERANCE)
        scope = "regional" if close else "full"
        ratio = cold["regional"]["s_per_slice"] / cold["full"]["s_per_slice"]
        print(f'DEFAULT_COMPILE_SCOPE = "{scope}"  # regional / full s/slice = {ratio:.3f}')
    elif cold["regional"]:
        # Full compilation did not finish within the budget: the scope measured is the one to use.
        scope = "regional"
        print(f'DEFAULT_COMPILE_SCOPE = "{scope}"  # full compilation not measured within the budget')
    else:
        scope = denoiser_module.DEFAULT_COMPILE_SCOPE
    # The entry scripts' eager path on CUDA: channels_last in a CUDA graph (Triton kernels inside).
    eager_rows = of("eager channels_last+graph") or of("eager")
    eager_at_knee = next((r for r in eager_rows if r["chunk"] == (knee_chunk or default)), None)
    if eager_at_knee and cold.get(scope):
        scale = 256**2 / size**2
        print(f"EAGER_S_PER_SLICE_256 = {eager_at_knee['s_per_slice'] * scale:.3e}")
        print(f"COMPILED_S_PER_SLICE_256 = {cold[scope]['s_per_slice'] * scale:.3e}")
        print(f"COMPILE_SECONDS = {cold[scope]['first_call_s']:.1f}")
        summary.update(
            default_compile_scope=scope,
            eager_s_per_slice_256=eager_at_knee["s_per_slice"] * scale,
            compiled_s_per_slice_256=cold[scope]["s_per_slice"] * scale,
            compile_seconds=cold[scope]["first_call_s"],
        )
    return summary


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    start = time.monotonic()
    deadline = start + args.budget_s
    config = make_config(args)
    chunks = [int(c) for c in args.chunks.split(",")]
    others = [c for c in chunks if c != args.default_chunk]
    print(
        f"device {device_name(args.device)}, "
        f"torch {torch.__version__}, "
        f"{args.config.name} at {config.data.image_size}, nf {config.model.nf}, bf16, channels_last; "
        f"budget {args.budget_s:.0f} s",
        flush=True,
    )
    rows, statuses = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_denoiser_") as folder:
        caches = {scope: Path(folder) / scope for scope in ("eager", "regional", "full")}
        plan = [
            ("eager", chunks, "eager", "eager sweep"),
            ("regional", [args.default_chunk], "regional", "regional cold"),
            ("regional", [args.default_chunk], "regional", "regional warm"),
            ("full", [args.default_chunk], "full", "full cold"),
            ("full", [args.default_chunk], "full", "full warm"),
            ("regional", others, "regional", "regional sweep"),
            ("full", others, "full", "full sweep"),
        ]
        if args.eager_only:
            plan = plan[:1]
        for kind, worker_chunks, cache, label in plan:
            if worker_chunks:
                new_rows, statuses[label] = run_worker(
                    args, kind, worker_chunks, caches[cache], deadline, label
                )
                rows += new_rows
    summary = report(args, rows, config)
    print(f"\ntotal {time.monotonic() - start:.0f} s")
    out_dir = os.environ.get("OUT")
    if out_dir:
        result = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "torch": torch.__version__,
            "rows": rows,
            "statuses": statuses,
            "summary": summary,
        }
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(out_dir, "bench_denoiser.json"), json.dumps(result, indent=1, default=str))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
