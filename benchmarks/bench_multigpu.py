"""Slice-parallel DDS sampling on 1, 2, 4 GPUs: seconds per NFE, speed-up and efficiency.

The driver (this script without torchrun's environment) launches itself once per process count
with ``python -m torch.distributed.run --standalone --nproc-per-node N`` and compares the runs.
Every run reconstructs the same problem with the same seed:

- volume: a CT phantom of ``datasets.ct_phantom`` (first EVAL seed), ``--slices`` axial slices of
  ``--size`` x ``--size`` (default 512 x 256 x 256), HU window mapped to [0, 1];
- measurement: ``physics.ConeBeamCT`` with the reference demo's geometry for that volume
  (``ConeBeamGeometry.for_volume``), SVCT with ``--views`` views (default 20), noise-free;
- prior: NCSN++ of ``configs/ve/AAPM_256_ncsnpp_Chung.yaml`` (61.4 M parameters, the published
  CT architecture) with seeded random weights drawn at init_scale 1, so that the network's
  output is not trivial; the timing does not depend on the weights;
- sampler: DDS (``--num-cg`` CG iterations), ISCS noise, DDS re-noising, ``models.Denoiser`` in
  ``--precision`` with ``--slice-batch`` slices per network call, wrapped by
  ``recon.distributed.DistributedDenoiser`` when N > 1;
- data consistency (``--dc``, each mode run for every N > 1): ``views`` splits the projector's views
  over the ranks (``recon.distributed.view_parallel``, the default of the entry scripts; exact on
  the Triton backend only, so on CPU it falls back to ``replicated``), ``replicated`` has every
  rank apply the whole operator.

Each run first samples ``--warmup`` levels (cuDNN and Triton warm-up), then times ``--nfe``
levels: seconds per NFE (median over levels, CUDA-synchronised), and per NFE the network time
(slowest rank), the all-gather time (status check, gather, waiting for the slowest rank), the
data-consistency time, and the rest (noise draw, re-noising). It checks that every rank holds
the same final volume bitwise, and the driver reports the largest difference of each run's
volume from the 1-process volume (0 when every network call sees the same slices, e.g. when
``--slice-batch`` divides every rank's block; GPU kernels may still round differently).

Usage (4 GPUs): python benchmarks/bench_multigpu.py --nprocs 1,2,4
CPU smoke run:  python benchmarks/bench_multigpu.py --device cpu --nprocs 1,2 --slices 8 --size 32 \\
                    --nf 16 --slice-batch 2 --views 8 --nfe 2 --warmup 1 --precision fp32
Full results: $OUT/bench_multigpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import algorithms  # noqa: E402
from datasets.ct_phantom import EVAL_SEEDS, generate_phantom  # noqa: E402
from models import Denoiser, build_model, load_config  # noqa: E402
from models.checkpoint import atomic_save  # noqa: E402
from models.precision import PRECISIONS  # noqa: E402
from physics import ConeBeamCT, ConeBeamGeometry, select_views  # noqa: E402
from recon import distributed  # noqa: E402
from recon.parser import DEVICES  # noqa: E402
from utils.device import default_device, device_name, synchronize  # noqa: E402
from utils.io import write_text  # noqa: E402
from utils.volume import hu_to_unit  # noqa: E402

RESULT_NAME = "bench_multigpu.json"
DC_MODES = ("views", "replicated")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--nprocs", default="1,2,4", help="process counts to run (comma list; 1 first)")
    parser.add_argument("--device", choices=DEVICES, default=default_device())
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ve" / "AAPM_256_ncsnpp_Chung.yaml")
    parser.add_argument("--slices", type=int, default=512, help="axial slices of the volume")
    parser.add_argument("--size", type=int, default=256, help="in-plane size (also the network's image size)")
    parser.add_argument("--nf", type=int, default=None, help="override model.nf (CPU runs)")
    parser.add_argument("--views", type=int, default=20, help="SVCT views")
    parser.add_argument("--num-cg", type=int, default=5, help="CG iterations of each DDS step")
    parser.add_argument("--nfe", type=int, default=6, help="timed levels")
    parser.add_argument("--warmup", type=int, default=2, help="untimed levels run first")
    parser.add_argument("--slice-batch", type=int, default=32, help="slices per network call")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="bf16")
    parser.add_argument("--dc", default="views,replicated", help="data-consistency modes (comma list)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900, help="seconds one torchrun launch may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dc-mode", choices=DC_MODES, default="views", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------- worker side


class Timed:
    """Wraps a callable and adds its synchronised wall time to ``seconds``."""

    def __init__(self, fn, device):
        self.fn, self.device, self.seconds = fn, device, 0.0

    def __call__(self, *args):
        synchronize(self.device)
        start = time.perf_counter()
        out = self.fn(*args)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return out


def make_config(args):
    raw = load_config(args.config).to_dict()
    raw["data"]["image_size"] = args.size
    raw["model"]["init_scale"] = 1.0
    if args.nf:
        raw["model"]["nf"] = args.nf
    return load_config(raw)


def sample_levels(denoiser, op, y, shape, sigmas, num_cg, generator, timers, step_times):
    """The DDS loop of ``algorithms.reconstruct`` with every part timed."""
    consistency = Timed(algorithms.DDSConsistency(op, y, num_cg=num_cg), generator.device)
    timers["dc"] = consistency
    noise = algorithms.make_noise("iscs")
    x = noise(shape, generator).mul_(float(sigmas[0]))
    device = generator.device
    synchronize(device)
    last = [time.perf_counter()]

    def tick(step):
        synchronize(device)
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    renoise = algorithms.make_renoise("DDS")
    step = algorithms.ConsistencyStep(consistency)
    return algorithms.sample(denoiser, x, sigmas, step, renoise, noise, generator, tick, disable=True)


def run_worker(args) -> None:
    launch = distributed.launch_from_env()
    device = torch.device("cuda", launch.local_rank) if args.device == "cuda" else torch.device("cpu")
    with distributed.session(device):
        config = make_config(args)
        net = build_model(config, generator=torch.Generator().manual_seed(args.seed)).to(device).eval()
        hu = generate_phantom(EVAL_SEEDS[0], (args.slices, args.size, args.size), device=device)
        gt = hu_to_unit(hu).unsqueeze(1).contiguous()
        geometry = ConeBeamGeometry.for_volume(tuple(hu.shape))
        op = ConeBeamCT(geometry, views=select_views("SVCT", args.views), device=device)
        y = op.A(gt)
        op_dc, y_dc = distributed.view_parallel(op, y) if args.dc_mode == "views" else (op, y)
        network = Timed(Denoiser(net, slice_batch=args.slice_batch, precision=args.precision), device)
        denoiser = Timed(distributed.slice_parallel(network), device)
        sigma_min, sigma_max = float(config.model.sigma_min), float(config.model.sigma_max)

        # The warm-up pays for cuDNN's and Triton's first calls; its timings are dropped.
        warm = algorithms.get_sigmas(max(args.warmup, 1), sigma_min, sigma_max)
        sample_levels(
            denoiser,
            op_dc,
            y_dc,
            tuple(gt.shape),
            warm,
            args.num_cg,
            torch.Generator(device).manual_seed(1),
            {},
            [],
        )
        network.seconds = denoiser.seconds = 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        distributed.check_peers()

        timers, step_times = {}, []
        generator = torch.Generator(device).manual_seed(args.seed)
        sigmas = algorithms.get_sigmas(args.nfe, sigma_min, sigma_max)
        start = time.perf_counter()
        x = sample_levels(
            denoiser, op_dc, y_dc, tuple(gt.shape), sigmas, args.num_cg, generator, timers, step_times
        )
        synchronize(device)
        total = time.perf_counter() - start

        mine = {
            "network_s": network.seconds,
            "gather_s": denoiser.seconds - network.seconds,
            "dc_s": timers["dc"].seconds,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        ranks, agree = [mine], True
        if distributed.is_active():
            ranks = [None] * launch.world_size
            torch.distributed.all_gather_object(ranks, mine)
            reference = x.clone()
            torch.distributed.broadcast(reference, src=0)
            same = torch.tensor([torch.equal(reference, x)], dtype=torch.int32, device=device)
            torch.distributed.all_reduce(same, op=torch.distributed.ReduceOp.MIN)
            agree = bool(same.item())
        if launch.is_main:
            nfe = args.nfe
            row = {
                "nprocs": launch.world_size,
                "dc": args.dc_mode,
                "dc_views_per_rank": op_dc.views.numel(),
                "s_per_nfe": statistics.median(step_times),
                "s_per_nfe_mean": total / nfe,
                "network_s_per_nfe": max(r["network_s"] for r in ranks) / nfe,
                "gather_s_per_nfe": max(r["gather_s"] for r in ranks) / nfe,
                "dc_s_per_nfe": mine["dc_s"] / nfe,
                "peak_gib": max((r["peak_gib"] or 0.0) for r in ranks) if device.type == "cuda" else None,
                "ranks_agree_bitwise": agree,
                "slices_per_rank": [
                    b - a for a, b in distributed.slice_blocks(args.slices, launch.world_size)
                ],
                "step_s": step_times,
                "ranks": ranks,
            }
            # Rank 0's own parts add up to its wall time; the rest is noise draw and re-noising.
            row["other_s_per_nfe"] = (total - mine["network_s"] - mine["gather_s"] - mine["dc_s"]) / nfe
            atomic_save(x.cpu(), args.result.with_suffix(".pt"))
            write_text(args.result, json.dumps(row))


# ----------------------------------------------------------------------------------- driver side


def launch(args, argv, nprocs: int, mode: str, result: Path) -> subprocess.CompletedProcess:
    """This script under torchrun with ``nprocs`` processes and the driver's ``argv``; NVLink
    multicast stays off."""
    env = dict(os.environ)
    for name, value in distributed.MULTICAST_OFF.items():
        env.setdefault(name, value)
    # torchrun gives each process one CPU thread when it starts several; every row gets the same.
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}"]
    command += [str(Path(__file__).resolve()), *argv, "--worker", "--dc-mode", mode, "--result", str(result)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    counts = [int(n) for n in args.nprocs.split(",") if n.strip()]
    modes = [m.strip() for m in args.dc.split(",") if m.strip()]
    if not modes or any(m not in DC_MODES for m in modes):
        print(f"--dc {args.dc}: a comma list of {', '.join(DC_MODES)} is accepted", file=sys.stderr)
        return 2
    available = torch.cuda.device_count() if args.device == "cuda" else max(counts)
    skipped = [n for n in counts if n > available]
    counts = [n for n in counts if n <= available]
    print(
        f"device: {device_name(args.device)} x {available}  torch {torch.__version__}  "
        f"volume {args.slices}x{args.size}x"
        f"{args.size}  SVCT {args.views} views  DDS nCG {args.num_cg}  {args.precision}  slice batch "
        f"{args.slice_batch}  timed NFE {args.nfe}"
        + (f"  (skipped nprocs {skipped}: too few GPUs)" if skipped else ""),
        flush=True,
    )
    rows, volumes = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        # One process has nothing to split: it runs once, as the baseline of every mode.
        runs = [(n, mode) for n in counts for mode in (modes[:1] if n == 1 else modes)]
        for nprocs, mode in runs:
            result = Path(scratch) / f"n{nprocs}-{mode}.json"
            begin = time.perf_counter()
            try:
                done = launch(args, argv, nprocs, mode, result)
                failed = done.returncode != 0 or not result.exists()
                message = done.stderr[-1500:] if failed else ""
            except subprocess.TimeoutExpired:
                failed, message = True, f"timed out after {args.timeout} s"
            if failed:
                rows.append({"nprocs": nprocs, "dc": mode, "error": message})
                print(f"{nprocs} process(es), DC {mode}, failed:\n{message}", flush=True)
                continue
            row = json.loads(result.read_text())
            row["launch_s"] = time.perf_counter() - begin
            volumes[nprocs, mode] = torch.load(result.with_suffix(".pt"))
            rows.append(row)
            print(
                f"{nprocs} process(es), DC {mode}: {row['s_per_nfe']:.3f} s/NFE, "
                f"launch {row['launch_s']:.0f} s",
                flush=True,
            )

    base = next((r for r in rows if r.get("nprocs") == 1 and "error" not in r), None)
    for row in rows:
        if "error" in row or base is None:
            continue
        row["speedup"] = base["s_per_nfe"] / row["s_per_nfe"]
        row["efficiency"] = row["speedup"] / row["nprocs"]
        volume, single = volumes[row["nprocs"], row["dc"]], volumes[1, base["dc"]]
        row["max_abs_diff_vs_1"] = (volume - single).abs().max().item()
        row["bitwise_equal_to_1"] = bool(torch.equal(volume, single))

    print(
        f"\n{'procs':>5s} {'DC':>10s} {'V/rank':>6s} {'s/NFE':>7s} {'speed-up':>8s} {'effic.':>6s} {'net s':>7s} {'gather s':>8s} "
        f"{'DC s':>6s} {'other s':>7s} {'peak GiB':>8s} {'ranks agree':>11s} {'max|diff| vs 1':>14s}"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['nprocs']:5d} {row['dc']:>10s}  failed (see above)")
            continue
        peak = f"{row['peak_gib']:8.2f}" if row["peak_gib"] is not None else f"{'-':>8s}"
        print(
            f"{row['nprocs']:5d} {row['dc']:>10s} {row['dc_views_per_rank']:6d} {row['s_per_nfe']:7.3f} {row.get('speedup', float('nan')):8.2f} "
            f"{row.get('efficiency', float('nan')):6.2f} {row['network_s_per_nfe']:7.3f} "
            f"{row['gather_s_per_nfe']:8.4f} {row['dc_s_per_nfe']:6.3f} {row['other_s_per_nfe']:7.3f} {peak} "
            f"{str(row['ranks_agree_bitwise']):>11s} {row.get('max_abs_diff_vs_1', float('nan')):14.3g}"
        )
    print(
        "(per NFE: network = slowest rank's share; gather = status check + all-gather + wait; "
        "DC = data consistency)"
    )

    out_dir = os.environ.get("OUT")
    if out_dir:
        summary = {
            "device": device_name(args.device),
            "torch": torch.__version__,
            "options": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in vars(args).items()
                if k not in ("worker", "result")
            },
            "skipped_nprocs": skipped,
            "rows": rows,
        }
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(out_dir, RESULT_NAME), json.dumps(summary, indent=1))
    return 0 if rows and all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
