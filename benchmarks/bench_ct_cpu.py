"""CPU timings of the cone-beam operator, SIRT and FDK at the CPU demo's size, before and after the plan.

For a 32x128x128 volume on its demo detector (``ConeBeamGeometry.for_volume``: 256x256 cells) and the
SVCT-20 and LACT-90 view sets: ``A`` and ``A^T`` sampled on the fly ("before", ``plan_budget=0``) and
through the cached sampling plan ("after"), the plan's one-off build time and memory, the relative
difference between the two paths, SIRT (5 iterations) both ways, FDK on the kept views, and, as the
FBP-FV baseline needs them once, ``A_full`` on all 360 views (on the fly: its plan is over budget)
and FDK on them. Median seconds over repeats (one run for the slow on-the-fly path).

Usage: python benchmarks/bench_ct_cpu.py [--shape D H W] [--repeats R] [--sirt-iter N]
Prints a table; writes the full results to $OUT/bench_ct_cpu.json when OUT is set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ct_operator import write_json  # noqa: E402

from physics import ConeBeamCT, ConeBeamGeometry, select_views, sirt  # noqa: E402

CASES = (("SVCT", 20), ("LACT", 90))


def _seconds(fn, repeats: int):
    """Median wall time of ``fn()`` over ``repeats`` runs, and its last output."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _case(geometry, task: str, degree: int, x: torch.Tensor, args) -> dict:
    views = select_views(task, degree)
    before = ConeBeamCT(geometry, views=views, backend="torch", plan_budget=0)
    after = ConeBeamCT(geometry, views=views, backend="torch")
    build_s, _ = _seconds(lambda: after.A(x), 1)
    run = {"case": f"{task}-{degree}", "views": views.numel(), "plan_MB": after.plan_nbytes / 1e6}
    y = before.A(x)
    for name, repeats, op in (("before", 1, before), ("after", args.repeats, after)):
        run[f"A_{name}_s"], ax = _seconds(lambda op=op: op.A(x), repeats)
        run[f"AT_{name}_s"], aty = _seconds(lambda op=op: op.A_adjoint(y), repeats)
        run[f"sirt_{name}_s"], _ = _seconds(lambda op=op: sirt(op, y, args.sirt_iter), 1)
        run[f"A_{name}"], run[f"AT_{name}"] = ax, aty
    run["plan_build_s"] = build_s - run["A_after_s"]
    run["A_relative_difference"] = _relative(run.pop("A_after"), run.pop("A_before"))
    run["AT_relative_difference"] = _relative(run.pop("AT_after"), run.pop("AT_before"))
    run["fdk_s"], _ = _seconds(lambda: after.fdk(y), args.repeats)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128], metavar=("D", "H", "W"))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the plan path and FDK")
    parser.add_argument("--sirt-iter", type=int, default=5, help="SIRT iterations")
    args = parser.parse_args()

    geometry = ConeBeamGeometry.for_volume(tuple(args.shape))
    x = torch.rand(args.shape[0], 1, *args.shape[1:], generator=torch.Generator().manual_seed(0))
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": args.shape,
        "detector": [geometry.det_rows, geometry.det_cols],
        "runs": [_case(geometry, task, degree, x, args) for task, degree in CASES],
    }
    full = ConeBeamCT(geometry, backend="torch")
    results["A_full_on_the_fly_s"], y_full = _seconds(lambda: full.A(x), 1)
    results["A_full_plan_MB"] = full.plan_nbytes / 1e6
    results["fdk_all_views_s"], _ = _seconds(lambda: full.fdk(y_full), args.repeats)

    print(
        f"torch {results['torch']}, {results['threads']} threads, volume {args.shape}, "
        f"detector {geometry.det_rows}x{geometry.det_cols}; seconds (before: on the fly, after: cached plan)"
    )
    print(
        f"{'case':>8} {'A before':>9} {'A after':>8} {'A^T bef.':>9} {'A^T aft.':>9} "
        f"{f'SIRT{args.sirt_iter} bef.':>10} {f'SIRT{args.sirt_iter} aft.':>10} {'build':>6} {'plan MB':>8} "
        f"{'rel A':>8} {'rel A^T':>8} {'FDK':>6}"
    )
    for run in results["runs"]:
        print(
            f"{run['case']:>8} {run['A_before_s']:>9.3f} {run['A_after_s']:>8.3f} {run['AT_before_s']:>9.3f} "
            f"{run['AT_after_s']:>9.3f} {run['sirt_before_s']:>10.2f} {run['sirt_after_s']:>10.2f} "
            f"{run['plan_build_s']:>6.2f} {run['plan_MB']:>8.1f} {run['A_relative_difference']:>8.1e} "
            f"{run['AT_relative_difference']:>8.1e} {run['fdk_s']:>6.3f}"
        )
    print(
        f"all {geometry.num_views} views: A_full {results['A_full_on_the_fly_s']:.2f} s (plan cached: "
        f"{results['A_full_plan_MB']:.0f} MB), FDK {results['fdk_all_views_s']:.3f} s"
    )
    write_json("bench_ct_cpu.json", results)


if __name__ == "__main__":
    main()
