"""Time the cone-beam projector (forward, adjoint) and FDK, and check the Triton kernels on the GPU.

For 256^3 volumes and 20, 90 and 360 views of 512 x 512 (the demo geometry): median time over
repeats (CUDA events) and peak GPU memory beyond input and output, for the Triton path (CUDA) or the
torch path (CPU, at 32^3 so that it finishes). Also: Triton vs torch agreement (relative error),
a float32 dot-product adjointness check of the Triton path, and FDK time on all views.

Usage: python benchmarks/bench_ct_operator.py [--size N] [--repeats R]
Prints a table; writes the full results to $OUT/bench_ct_operator.json when OUT is set.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from physics import ConeBeamCT, ConeBeamGeometry, select_views  # noqa: E402
from utils.device import default_device, device_name, synchronize  # noqa: E402
from utils.io import write_text  # noqa: E402


def _timed(fn, repeats: int, device: torch.device):
    """Median seconds and peak extra memory (bytes, CUDA only) of ``fn()``; returns its last output."""
    times, out = [], None
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            stop.record()
            synchronize(device)
            times.append(start.elapsed_time(stop) / 1000.0)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        if device.type == "cuda" and len(times) == 1:
            peak = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    return statistics.median(times), (peak if device.type == "cuda" else None), out


def _format_optional(run: dict, key: str, spec: str) -> str:
    value = run.get(key)
    return format(value, spec) if value is not None else "-"


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _phantom(size: int, device) -> torch.Tensor:
    axis = torch.linspace(-1, 1, size, device=device)
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    body = ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 + (zz / 0.9) ** 2 <= 1).float()
    insert = (((xx - 0.3) / 0.15) ** 2 + ((yy + 0.1) / 0.2) ** 2 + (zz / 0.3) ** 2 <= 1).float()
    return (0.5 * body + 0.4 * insert)[:, None].contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    device = torch.device(default_device())
    parser.add_argument("--size", type=int, default=256 if device.type == "cuda" else 32, help="volume edge")
    parser.add_argument("--repeats", type=int, default=5 if device.type == "cuda" else 1, help="timed runs")
    parser.add_argument("--views", type=int, nargs="+", default=[20, 90, 360], help="view counts (SVCT)")
    args = parser.parse_args()

    size = args.size
    geometry = ConeBeamGeometry.for_volume((size, size, size))
    x = _phantom(size, device)
    results = {
        "device": device_name(device),
        "torch": torch.__version__,
        "size": size,
        "detector": [geometry.det_rows, geometry.det_cols],
        "runs": [],
    }
    backend = "auto" if device.type == "cuda" else "torch"
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None

    for n_views in args.views:
        op = ConeBeamCT(geometry, views=select_views("SVCT", n_views), backend=backend)
        # A first call compiles the kernels; it is not timed.
        y = op.A(x)
        op.A_adjoint(y)
        t_fwd, m_fwd, y = _timed(functools.partial(op.A, x), args.repeats, device)
        t_adj, m_adj, back = _timed(functools.partial(op.A_adjoint, y), args.repeats, device)
        run = {
            "views": n_views,
            "forward_s": t_fwd,
            "adjoint_s": t_adj,
            "forward_peak_extra_MiB": None if m_fwd is None else m_fwd / 2**20,
            "adjoint_peak_extra_MiB": None if m_adj is None else m_adj / 2**20,
        }
        generator = torch.Generator(device=device).manual_seed(0)
        u = torch.rand(x.shape, generator=generator, device=device)
        v = torch.rand(y.shape, generator=generator, device=device)
        au, atv = op.A(u), op.A_adjoint(v)
        run["dot_test_fp32"] = abs(
            float(torch.sum(au.double() * v.double()) - torch.sum(u.double() * atv.double()))
        ) / float(au.double().norm() * v.double().norm())
        if device.type == "cuda" and n_views == min(args.views):
            reference = ConeBeamCT(geometry, views=op.views, backend="torch")
            run["triton_vs_torch_forward"] = _relative(y, reference.A(x))
            run["triton_vs_torch_adjoint"] = _relative(back, reference.A_adjoint(y))
        results["runs"].append(run)

    full = ConeBeamCT(geometry, backend=backend)
    y_full = full.A(x)
    full.fdk(y_full)
    t_fdk, m_fdk, recon = _timed(functools.partial(full.fdk, y_full), max(1, args.repeats // 2), device)
    mask = x > 0
    results["fdk"] = {
        "views": geometry.num_views,
        "seconds": t_fdk,
        "peak_extra_MiB": None if m_fdk is None else m_fdk / 2**20,
        "relative_error_in_object": _relative(recon[mask], x[mask]),
    }

    print(
        f"device {results['device']}  torch {results['torch']}  triton {results['triton']}  volume {size}^3  "
        f"detector {geometry.det_rows}x{geometry.det_cols}"
    )
    print(
        f"{'views':>6} {'A [s]':>9} {'A^T [s]':>9} {'A MiB':>8} {'A^T MiB':>8} {'dot fp32':>9} "
        f"{'tri/torch A':>11} {'tri/torch A^T':>13}"
    )
    for run in results["runs"]:
        fmt = functools.partial(_format_optional, run)
        print(
            f"{run['views']:>6} {run['forward_s']:>9.4f} {run['adjoint_s']:>9.4f} "
            f"{fmt('forward_peak_extra_MiB', '8.1f'):>8} {fmt('adjoint_peak_extra_MiB', '8.1f'):>8} "
            f"{run['dot_test_fp32']:>9.1e} {fmt('triton_vs_torch_forward', '11.1e'):>11} "
            f"{fmt('triton_vs_torch_adjoint', '13.1e'):>13}"
        )
    fdk_row = results["fdk"]
    print(
        f"FDK {fdk_row['views']} views: {fdk_row['seconds']:.3f} s, relative error inside the object "
        f"{fdk_row['relative_error_in_object']:.3f}"
    )
    write_json("bench_ct_operator.json", results)


def write_json(name: str, data: dict) -> None:
    """Write ``data`` to ``$OUT/name`` when the environment variable OUT is set."""
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / name
        write_text(path, json.dumps(data, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
