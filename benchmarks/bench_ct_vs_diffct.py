"""Time the cone-beam Triton kernels against diffct, check them on the GPU, and sweep their launch settings.

For a 256^3 volume on the reference geometry (``ConeBeamGeometry.for_volume``: 512 x 512 cells) and
360 and 20 evenly spaced views: our forward ``A``, our gather adjoint ``A^T`` and the scatter
adjoint it replaces on circular orbits, and diffct's Siddon ``A`` and ``A^T`` when ``import diffct``
works (diffct is no dependency of the project), each timed with CUDA events, median over
``--repeats`` runs after a warm-up run. Checks, per view count: gather vs scatter (relative
difference), a float32 dot-product test, bitwise repeatability of the gather and its independence
of the launch settings, two view blocks adding to the whole adjoint bitwise, and our forward vs
diffct's (Siddon vs Joseph: a difference of discretisation, about a percent, not an error).

First, on the largest view count, the forward's detector tiles and warps and the gather's slices
per program and warps are swept; the tables use the fastest of each. Takes about 2 minutes on an
H200.

Usage: python benchmarks/bench_ct_vs_diffct.py [--size N] [--views V ...] [--repeats R] [--no-sweep]
CPU smoke test (tiny, interpreted, about a minute):
    TRITON_INTERPRET=1 python benchmarks/bench_ct_vs_diffct.py --size 6 --views 2 --repeats 1 --no-sweep
Prints a table; writes the full results to $OUT/bench_ct_vs_diffct.json when OUT is set.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ct_operator import _phantom, _relative, _timed, write_json  # noqa: E402

from physics import ConeBeamGeometry, _cone_triton, select_views  # noqa: E402
from physics.cone_beam import index_space_vectors  # noqa: E402
from utils.device import default_device, device_name  # noqa: E402

# (detector tile, warps) of the forward and (slices, warps) of the gather tried by the sweep.
FORWARD_SWEEP = [((8, 16), 4), ((16, 16), 4), ((16, 16), 8), ((4, 32), 4), ((8, 32), 4), ((8, 32), 8),
                 ((16, 32), 8), ((32, 32), 8)]
GATHER_SWEEP = [(64, 1), (64, 2), (128, 1), (128, 2), (128, 4), (256, 1), (256, 2), (256, 4), (256, 8)]


def _diffct_operators(geometry: ConeBeamGeometry, views: torch.Tensor, device):
    """diffct's (A, A^T) on our layouts ([D, H, W] <-> [V, rows, cols]), or None without diffct."""
    try:
        import numpy

        # diffct's numba-cuda still registers numpy.row_stack, which numpy 2.4 removed.
        if not hasattr(numpy, "row_stack"):
            numpy.row_stack = numpy.vstack
        import diffct
    except ImportError:
        return None
    vec = geometry.view_vectors(views).to(device=device, dtype=torch.float32)
    spacing = geometry.det_spacing
    args = (vec[:, 0:3].contiguous(), vec[:, 3:6].contiguous(), (vec[:, 6:9] / spacing).contiguous(),
            (vec[:, 9:12] / spacing).contiguous())
    rows, cols = geometry.det_rows, geometry.det_cols

    def forward(x):
        return diffct.ConeProjectorFunction.apply(x, *args, cols, rows, spacing, spacing, geometry.voxel_size)

    def adjoint(y_uv):
        return diffct.ConeBackprojectorFunction.apply(
            y_uv, *args, *geometry.volume_shape, spacing, spacing, geometry.voxel_size
        )

    return forward, adjoint


class _Recorder:
    """``combine`` of one view block run alone: "max" may be set to the whole's, "sum" is recorded."""

    def __init__(self, largest=None):
        self.largest = largest
        self.recorded = {}

    def __call__(self, t, how):
        self.recorded[how] = t.clone()
        if how == "max" and self.largest is not None:
            t.copy_(self.largest)


def _blocks_add_up(y, vecs, shape) -> bool:
    """Whether two view blocks' int64 sums add to the whole adjoint's, bitwise."""
    whole = _Recorder()
    _cone_triton.adjoint(y, vecs, shape, 1.0, combine=whole)
    half = y.shape[0] // 2
    total = torch.zeros_like(whole.recorded["sum"])
    for part in (slice(0, half), slice(half, None)):
        block = _Recorder(whole.recorded["max"])
        _cone_triton.adjoint(y[part], vecs[part], shape, 1.0, ray_bound=y.numel(), combine=block)
        total += block.recorded["sum"]
    return bool(torch.equal(total, whole.recorded["sum"]))


def _sweep(x, y, vecs, det, shape, repeats, device):
    """Median seconds of each forward and gather setting; the fastest of each."""
    forward, gather = [], []
    for tile, warps in FORWARD_SWEEP:
        run = functools.partial(_cone_triton.forward, x, vecs, det, 1.0, tile=tile, num_warps=warps)
        run()
        forward.append({"tile": list(tile), "num_warps": warps, "seconds": _timed(run, repeats, device)[0]})
    for slices, warps in GATHER_SWEEP:
        run = functools.partial(
            _cone_triton.adjoint_gather, y, vecs, shape, 1.0, slices=slices, num_warps=warps
        )
        run()
        gather.append({"slices": slices, "num_warps": warps, "seconds": _timed(run, repeats, device)[0]})
    best_forward = min(forward, key=lambda r: r["seconds"])
    best_gather = min(gather, key=lambda r: r["seconds"])
    return forward, gather, best_forward, best_gather


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    device = torch.device(default_device())
    parser.add_argument("--size", type=int, default=256, help="volume edge")
    parser.add_argument("--views", type=int, nargs="+", default=[360, 20], help="view counts (SVCT)")
    parser.add_argument("--repeats", type=int, default=10 if device.type == "cuda" else 1, help="timed runs")
    parser.add_argument(
        "--sweep", action=argparse.BooleanOptionalAction, default=True, help="sweep launch settings"
    )
    args = parser.parse_args()

    size = args.size
    shape = (size, size, size)
    geometry = ConeBeamGeometry.for_volume(shape)
    det = (geometry.det_rows, geometry.det_cols)
    x = _phantom(size, device)[:, 0].contiguous()
    results = {
        "device": device_name(device),
        "torch": torch.__version__,
        "size": size,
        "detector": list(det),
        "defaults": {"forward": [list(_cone_triton.FORWARD_TILE), _cone_triton.FORWARD_WARPS],
                     "gather": [_cone_triton.GATHER_SLICES, _cone_triton.GATHER_WARPS]},
        "runs": [],
    }
    forward_setting = {"tile": _cone_triton.FORWARD_TILE, "num_warps": _cone_triton.FORWARD_WARPS}
    gather_setting = {"slices": _cone_triton.GATHER_SLICES, "num_warps": _cone_triton.GATHER_WARPS}
    generator = torch.Generator(device=device).manual_seed(0)

    for n_views in sorted(args.views, reverse=True):
        views = select_views("SVCT", n_views)
        vecs = index_space_vectors(geometry, views).to(device=device, dtype=torch.float32)
        y = _cone_triton.forward(x, vecs, det, 1.0)
        if args.sweep and "sweep" not in results:
            forward_sweep, gather_sweep, best_forward, best_gather = _sweep(
                x, y, vecs, det, shape, args.repeats, device
            )
            results["sweep"] = {"views": n_views, "forward": forward_sweep, "gather": gather_sweep}
            forward_setting = {"tile": tuple(best_forward["tile"]), "num_warps": best_forward["num_warps"]}
            gather_setting = {"slices": best_gather["slices"], "num_warps": best_gather["num_warps"]}
        forward = functools.partial(_cone_triton.forward, x, vecs, det, 1.0, **forward_setting)
        gather = functools.partial(_cone_triton.adjoint_gather, y, vecs, shape, 1.0, **gather_setting)
        scatter = functools.partial(_cone_triton.adjoint_scatter, y, vecs, shape, 1.0)
        run = {"views": n_views, "forward_setting": forward_setting, "gather_setting": gather_setting}
        for name, fn in (("A", forward), ("AT_gather", gather), ("AT_scatter", scatter)):
            fn()
            run[name + "_s"], peak, _ = _timed(fn, args.repeats, device)
            run[name + "_peak_extra_MiB"] = None if peak is None else peak / 2**20
        back = gather()
        run["gather_vs_scatter"] = _relative(back, scatter())
        run["gather_bitwise_repeatable"] = bool(torch.equal(back, gather()))
        run["gather_setting_independent"] = bool(
            torch.equal(back, _cone_triton.adjoint_gather(y, vecs, shape, 1.0, slices=64, num_warps=1))
        )
        run["view_blocks_add_bitwise"] = _blocks_add_up(y, vecs, shape)
        u = torch.rand(x.shape, generator=generator, device=device)
        v = torch.rand(y.shape, generator=generator, device=device)
        au = _cone_triton.forward(u, vecs, det, 1.0, **forward_setting)
        atv = _cone_triton.adjoint_gather(v, vecs, shape, 1.0, **gather_setting)
        run["dot_test_fp32"] = abs(
            float(torch.sum(au.double() * v.double()) - torch.sum(u.double() * atv.double()))
        ) / float(au.double().norm() * v.double().norm())
        diffct = _diffct_operators(geometry, views, device) if device.type == "cuda" else None
        if diffct is not None:
            diffct_forward, diffct_adjoint = diffct
            y_uv = y.transpose(1, 2).contiguous()
            run["diffct_A_s"] = _timed(functools.partial(diffct_forward, x), args.repeats, device)[0]
            run["diffct_AT_s"] = _timed(functools.partial(diffct_adjoint, y_uv), args.repeats, device)[0]
            run["ours_vs_diffct_A"] = _relative(y, diffct_forward(x).transpose(1, 2))
        results["runs"].append(run)

    _print(results)
    write_json("bench_ct_vs_diffct.json", results)


def _print(results: dict) -> None:
    print(f"device {results['device']}  torch {results['torch']}  volume {results['size']}^3  "
          f"detector {results['detector'][0]}x{results['detector'][1]}")
    if "sweep" in results:
        sweep = results["sweep"]
        forward = [f"{r['tile'][0]}x{r['tile'][1]}/{r['num_warps']}w {1e3 * r['seconds']:.1f}"
                   for r in sweep["forward"]]
        gather = [f"{r['slices']}/{r['num_warps']}w {1e3 * r['seconds']:.1f}" for r in sweep["gather"]]
        print(f"sweep on {sweep['views']} views, ms: forward (tile/warps) " + ", ".join(forward))
        print("  gather (slices/warps) " + ", ".join(gather))
    print(f"{'views':>5} {'A ms':>7} {'AT gath':>8} {'AT scat':>8} {'diffct A':>9} {'diffct AT':>9} "
          f"{'gath/scat':>9} {'dot fp32':>8} {'repeat':>6} {'blocks':>6} {'vs diffct':>9}")
    for run in results["runs"]:
        def ms(key):
            return f"{1e3 * run[key]:.1f}" if key in run else "-"

        repeat = run["gather_bitwise_repeatable"] and run["gather_setting_independent"]
        diffct = format(run["ours_vs_diffct_A"], ".1e") if "ours_vs_diffct_A" in run else "-"
        print(f"{run['views']:>5} {ms('A_s'):>7} {ms('AT_gather_s'):>8} {ms('AT_scatter_s'):>8} "
              f"{ms('diffct_A_s'):>9} {ms('diffct_AT_s'):>9} {run['gather_vs_scatter']:>9.1e} "
              f"{run['dot_test_fp32']:>8.1e} {str(repeat):>6} {str(run['view_blocks_add_bitwise']):>6} "
              f"{diffct:>9}")
    last = results["runs"][0]
    print(f"best settings: forward tile {tuple(last['forward_setting']['tile'])} warps "
          f"{last['forward_setting']['num_warps']}; gather slices {last['gather_setting']['slices']} "
          f"warps {last['gather_setting']['num_warps']}")


if __name__ == "__main__":
    main()
