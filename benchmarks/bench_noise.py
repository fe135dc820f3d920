"""Time and check every noise source against one sampler step.

For a slice stack [N, 1, H, W] (default 256 x 256 x 256 on CUDA, 32 x 64 x 64 on CPU) it draws
each source of ``algorithms.NOISE_SOURCES`` and the reference-style ISCS path (all 16 N SLERP
points built, then N taken), and reports milliseconds per call, peak extra device memory, and the
share of a sampler step (``--step-time``; about 2 s for 256 slices of the 256 x 256 NCSN++ on an
H100 is the assumed default). Checks: the closed-form ISCS equals the materialised path taken
with the nominal angle, and every source keeps each slice's variance near 1.

Usage: python benchmarks/bench_noise.py [--device cuda] [--slices 256] [--size 256]
Full results go to $OUT/bench_noise.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algorithms.noise import ISCS_PATH_STRIDE, NOISE_SOURCES, iscs_angles  # noqa: E402
from utils.device import default_device, device_name, synchronize  # noqa: E402
from utils.io import write_text  # noqa: E402


def materialised_iscs(
    z0: torch.Tensor, z1: torch.Tensor, num_slices: int, measured_angle: bool
) -> torch.Tensor:
    """The reference's construction: all 16 N interior SLERP points one by one, then N of them."""
    if measured_angle:
        cos_theta = torch.dot(z0.flatten(), z1.flatten()) / (z0.norm() * z1.norm())
        theta = torch.acos(cos_theta.clamp(-1 + 1e-7, 1 - 1e-7))
    else:
        theta = torch.tensor(math.pi / 2, device=z0.device)
    n_path = ISCS_PATH_STRIDE * num_slices
    alphas = torch.linspace(0, 1, n_path + 2, device=z0.device)[1:-1]
    points = [
        (torch.sin((1 - a) * theta) * z0 + torch.sin(a * theta) * z1) / torch.sin(theta) for a in alphas
    ]
    path = torch.cat(points)
    centre = n_path // 2
    kept = centre + ISCS_PATH_STRIDE * (torch.arange(num_slices, device=z0.device) - num_slices // 2)
    return path.index_select(0, kept)


def measure(fn, device: torch.device, repeats: int, warmup: int) -> dict:
    """Mean wall time per call (ms) and the peak device memory above the start (MiB, CUDA only)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    peak_mib = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    elapsed_ms = (time.perf_counter() - start) * 1e3 / repeats
    if device.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated(device) - start_bytes) / 2**20
    return {"ms": elapsed_ms, "peak_mib": peak_mib}


def variance_error(z: torch.Tensor) -> float:
    """The largest |variance - 1| over slices."""
    return (z.reshape(z.shape[0], -1).double().var(dim=1) - 1).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--slices", type=int, default=None, help="N (default 256 on CUDA, 32 on CPU)")
    parser.add_argument("--size", type=int, default=None, help="H = W (default 256 on CUDA, 64 on CPU)")
    parser.add_argument(
        "--step-time", type=float, default=2.0, help="seconds of one sampler step, for the share column"
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    num_slices = args.slices or (256 if on_cuda else 32)
    size = args.size or (256 if on_cuda else 64)
    shape = (num_slices, 1, size, size)
    generator = torch.Generator(device).manual_seed(args.seed)

    # Time every registered source with its default parameters, then the reference's path.
    sources = {name: cls() for name, cls in NOISE_SOURCES.items()}
    rows = {
        name: measure(lambda s=src: s(shape, generator), device, args.repeats, args.warmup)
        for name, src in sources.items()
    }

    def reference_call():
        z0 = torch.randn((1,) + shape[1:], generator=generator, device=device)
        z1 = torch.randn((1,) + shape[1:], generator=generator, device=device)
        return materialised_iscs(z0, z1, num_slices, measured_angle=True)

    rows["iscs, materialised (reference)"] = measure(reference_call, device, max(args.repeats // 4, 1), 1)

    # Check the closed form against the materialised path on the same anchors, and every variance.
    check_gen = torch.Generator(device).manual_seed(args.seed)
    closed_form = sources["iscs"](shape, check_gen)
    replay = torch.Generator(device).manual_seed(args.seed)
    z0 = torch.randn((1,) + shape[1:], generator=replay, device=device)
    z1 = torch.randn((1,) + shape[1:], generator=replay, device=device)
    parity = (closed_form - materialised_iscs(z0, z1, num_slices, measured_angle=False)).abs().max().item()
    variances = {name: variance_error(src(shape, check_gen)) for name, src in sources.items()}
    variances["iscs, materialised (reference)"] = variance_error(
        materialised_iscs(z0, z1, num_slices, measured_angle=True)
    )
    neighbour_corr = (
        math.cos(float(iscs_angles(num_slices)[1] - iscs_angles(num_slices)[0])) if num_slices > 1 else 1.0
    )

    for name, row in rows.items():
        row["step_share"] = row["ms"] / (args.step_time * 1e3)
        row["max_abs_var_minus_1"] = variances[name]
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "shape": list(shape),
        "step_time_s": args.step_time,
        "iscs_closed_form_vs_materialised_max_abs": parity,
        "iscs_neighbour_correlation": neighbour_corr,
        "sources": rows,
    }
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(out_dir, "bench_noise.json"), json.dumps(result, indent=2))

    print(f"noise sources on {result['device']}, shape {list(shape)}, step time {args.step_time} s")
    print(f"{'source':34s} {'ms/call':>9s} {'peak MiB':>9s} {'% step':>8s} {'max|var-1|':>11s}")
    for name, row in rows.items():
        peak = f"{row['peak_mib']:9.1f}" if row["peak_mib"] is not None else f"{'-':>9s}"
        share = 100 * row["step_share"]
        print(f"{name:34s} {row['ms']:9.3f} {peak} {share:8.4f} {row['max_abs_var_minus_1']:11.2e}")
    print(f"iscs closed form vs materialised path (nominal angle): max |diff| = {parity:.2e}")
    print(f"iscs neighbour correlation cos(delta phi) = {neighbour_corr:.6f}")


if __name__ == "__main__":
    main()
