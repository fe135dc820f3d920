"""Cost of one DDNM data-consistency step per pseudo-inverse on the cone-beam operator, against DDS.

For the reference geometry of a ``size``^3 volume (``ConeBeamGeometry.for_volume``) and one view set:
the one-off cost of each DDNM variant (SIRT's normalisations and ``pinv(y)``), the median time of
one step, and the projector calls (``A`` or ``A^T``) both make, for ``sirt`` (torch, 100 iterations,
bound 0: the reference code's CBCT DDNM), ``sirt`` on astra's SIRT3D_CUDA when astra has CUDA,
``cg`` (5 iterations) and DDS with 5 CG iterations.

Usage: python benchmarks/bench_ddnm_pinv.py [--size N] [--task SVCT|LACT] [--degree K] [--repeats R]
    [--sirt-iter N]
Prints a table; writes the full results to $OUT/bench_ddnm_pinv.json when OUT is set.
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

from algorithms import DDNMConsistency, DDSConsistency  # noqa: E402
from physics import (  # noqa: E402
    ConeBeamCT,
    ConeBeamGeometry,
    CountingOperator,
    make_pseudo_inverse,
    select_views,
)
from utils.device import default_device, device_name, synchronize  # noqa: E402


def _timed(fn, device, repeats: int = 1):
    """Median seconds of ``fn()`` over ``repeats`` runs, and its last output."""
    times, out = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _variant(name: str, build, counting: CountingOperator, x0: torch.Tensor, device, repeats: int) -> dict:
    counting.calls = 0
    setup_s, step = _timed(build, device)
    setup_calls = counting.calls
    step(x0, 1.0)  # warm-up: kernels compiled, caches filled
    counting.calls = 0
    step_s, _ = _timed(lambda: step(x0, 1.0), device, repeats)
    run = {"name": name, "setup_s": setup_s, "setup_calls": setup_calls}
    run.update(step_s=step_s, step_calls=counting.calls // repeats)
    if hasattr(step, "describe"):
        run["describe"] = step.describe()
    return run


def main() -> None:
    device = torch.device(default_device())
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256 if device.type == "cuda" else 16, help="volume edge")
    parser.add_argument("--task", choices=("SVCT", "LACT"), default="LACT", help="view selection")
    parser.add_argument("--degree", type=int, default=90, help="LACT arc in degrees or SVCT view count")
    parser.add_argument("--repeats", type=int, default=3, help="timed DDNM steps")
    parser.add_argument("--sirt-iter", type=int, default=100, help="SIRT iterations of the pseudo-inverse")
    args = parser.parse_args()

    geometry = ConeBeamGeometry.for_volume((args.size,) * 3)
    op = ConeBeamCT(geometry, views=select_views(args.task, args.degree), device=device)
    generator = torch.Generator(device).manual_seed(0)
    truth = torch.rand(op.input_shape, generator=generator, device=device)
    y = op.A(truth)
    x0 = truth + 0.1 * torch.randn(op.input_shape, generator=generator, device=device)
    counting = CountingOperator(op)
    variants = {
        f"DDNM sirt {args.sirt_iter}": lambda: DDNMConsistency(
            counting, y, make_pseudo_inverse("sirt", counting, n_iter=args.sirt_iter, min_value=0.0)
        ),
        "DDNM cg 5": lambda: DDNMConsistency(counting, y, make_pseudo_inverse("cg", counting, n_iter=5)),
        "DDS cg 5": lambda: DDSConsistency(counting, y, num_cg=5),
    }
    if device.type == "cuda":
        from physics.astra_baselines import astra_cuda_available

        if astra_cuda_available():
            # astra projects with its own code: only our A x0 per step is counted.
            variants[f"DDNM sirt {args.sirt_iter} astra"] = lambda: DDNMConsistency(
                counting, y, make_pseudo_inverse("sirt", counting, n_iter=args.sirt_iter, backend="astra")
            )
    results = {
        "device": device_name(device),
        "torch": torch.__version__,
        "size": args.size,
        "views": f"{args.task}-{args.degree}: {op.views.numel()}",
        "runs": [
            _variant(name, build, counting, x0, device, args.repeats) for name, build in variants.items()
        ],
    }
    print(f"{results['device']}, {args.size}^3, {results['views']} views")
    print(f"{'variant':<26} {'setup s':>9} {'setup calls':>12} {'step s':>9} {'step calls':>11}")
    for run in results["runs"]:
        print(
            f"{run['name']:<26} {run['setup_s']:>9.3f} {run['setup_calls']:>12} "
            f"{run['step_s']:>9.3f} {run['step_calls']:>11}"
        )
    write_json("bench_ddnm_pinv.json", results)


if __name__ == "__main__":
    main()
