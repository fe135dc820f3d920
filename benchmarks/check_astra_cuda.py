"""Compare our cone-beam projector and FDK with astra's 3D CUDA code, where astra can run.

Steps, each reported as ok / failed with the exact error: import astra, astra.use_cuda(),
FP3D_CUDA projections of a phantom vs ours (in our y orientation and with y flipped, to confirm the
axis convention), FDK_CUDA vs our FDK (and both vs the phantom), SIRT3D_CUDA through
physics.astra_baselines. astra's wheels need the CUDA 12 runtime and cuFFT 11 libraries.

Usage: python benchmarks/check_astra_cuda.py [--size N] [--views V]
Prints a summary; writes it to $OUT/check_astra_cuda.json when OUT is set.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_ct_operator import write_json  # noqa: E402
from physics import ConeBeamCT, ConeBeamGeometry  # noqa: E402
from utils.device import default_device  # noqa: E402


def _phantom(size: int) -> np.ndarray:
    axis = np.linspace(-1, 1, size)
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    body = ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 + (zz / 0.9) ** 2 <= 1).astype(np.float32)
    # Off-centre in y so that a flipped y axis shows up clearly.
    insert = (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.35) / 0.15) ** 2 + (zz / 0.3) ** 2 <= 1).astype(np.float32)
    return 0.5 * body + 0.4 * insert


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--size", type=int, default=128, help="volume edge")
    parser.add_argument("--views", type=int, default=360, help="views over 2 pi")
    args = parser.parse_args()
    report = {"steps": {}}

    def step(name, fn):
        try:
            report["steps"][name] = {"ok": True, **(fn() or {})}
        except Exception as err:  # every failure is reported, whatever its type
            report["steps"][name] = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=3),
            }
        return report["steps"][name]["ok"]

    state = {}

    def import_astra():
        import astra

        state["astra"] = astra
        return {"version": getattr(astra, "__version__", "unknown")}

    def cuda():
        if not state["astra"].use_cuda():
            raise RuntimeError("astra.use_cuda() returned False")

    device = torch.device(default_device())
    geometry = ConeBeamGeometry.for_volume((args.size,) * 3, num_views=args.views)
    volume = _phantom(args.size)
    op = ConeBeamCT(geometry)
    ours = op.A(torch.from_numpy(volume).to(device)[:, None]).cpu().numpy()

    def forward():
        from physics.astra_baselines import astra_geometries

        astra = state["astra"]
        proj_geom, vol_geom = astra_geometries(geometry, None)
        results = {}
        for name, vol in (("same_y", volume), ("flipped_y", volume[:, ::-1, :])):
            sino_id, sino = astra.create_sino3d_gpu(np.ascontiguousarray(vol), proj_geom, vol_geom)
            astra.data3d.delete(sino_id)
            results[f"relative_error_{name}"] = _relative(ours, sino.transpose(1, 0, 2))
        return results

    def fdk_compare():
        from physics.astra_baselines import fdk_astra

        y = torch.from_numpy(ours)
        theirs = fdk_astra(geometry, y)[:, 0].numpy()
        mine = op.fdk(y.to(device))[:, 0].cpu().numpy()
        inside = volume > 0
        return {
            "relative_difference": _relative(mine, theirs),
            "ours_vs_phantom_in_object": _relative(mine[inside], volume[inside]),
            "astra_vs_phantom_in_object": _relative(theirs[inside], volume[inside]),
        }

    def sirt_compare():
        from physics.astra_baselines import sirt_astra

        theirs = sirt_astra(geometry, torch.from_numpy(ours), n_iter=50)[:, 0].numpy()
        inside = volume > 0
        return {"astra_sirt50_vs_phantom_in_object": _relative(theirs[inside], volume[inside])}

    if step("import_astra", import_astra) and step("use_cuda", cuda):
        step("FP3D_CUDA_vs_ours", forward)
        step("FDK_CUDA_vs_ours", fdk_compare)
        step("SIRT3D_CUDA", sirt_compare)

    for name, result in report["steps"].items():
        detail = result.get("error") or ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items() if k != "ok"
        )
        print(f"{name:<20} {'ok' if result['ok'] else 'FAILED':<7} {detail}")
        if not result["ok"]:
            print(result["traceback"])
    write_json("check_astra_cuda.json", report)


if __name__ == "__main__":
    main()
