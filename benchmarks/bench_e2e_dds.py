"""Time a whole DDS reconstruction (CBCT SVCT-20, ISCS) the reference's way and ours, in one process.

Problem: a procedural CT phantom (held-out seed, clamped HU mapped to [0, 1]) of --slices axial
slices of --size^2, projected noise-free on 20 evenly spaced views of the reference demo's cone-beam
geometry (detector scaled to the volume); DDS with --num-cg CG iterations per step, --nfe levels,
the DDS re-noising preset and ISCS noise; the NCSN++ of the AAPM 256 config with seeded random
weights (every layer at unit variance scaling, as in bench_network.py, so that the network's output
is not trivially zero). Random weights make the images meaningless, but both configurations
compute the same function from the same seed, so their outputs must agree: the check is that the
PSNR of each against the phantom differs by less than --psnr-tolerance dB (also reported: the PSNR
of ours against the reference-like output and their relative L2 difference).

Configurations (--configs, run in this order, same seed):
  reference-like  fp32 network (cuDNN TF32 defaults, eager, batch 15, the CUDA upfirdn2d), ISCS noise
                  materialised as the reference does (all 16 N SLERP path points with the measured
                  angle between the anchors, then N taken), cuDNN without autotuning;
  ours            bf16 autocast, channels_last, torch.compile (--compile) of a fixed chunk shape
                  with an optional CUDA graph (--cuda-graph), chunk size from free memory (or
                  --slice-batch), closed-form ISCS noise, cuDNN autotuning.
Both use the Triton cone-beam operator on CUDA (the reference's ASTRA GPU projector is not used here).

Reported per configuration: seconds per NFE split into network / data consistency / noise / other
(CUDA events around each part, read once at the end, so the loop never waits on the host), total
seconds of the sampling loop, the warm-up call (compilation, graph capture, cuDNN autotuning)
separately, peak allocated and reserved memory, effective network TFLOP/s, the noise's share of a
step, and the PSNR against the phantom. A table comes last; full results go to $OUT/bench_e2e_dds.json
when OUT is set. Exit code 1 if the PSNR check fails.

Usage (H100):   python benchmarks/bench_e2e_dds.py
512 slices:     python benchmarks/bench_e2e_dds.py --slices 512 --configs ours --nfe 3
CPU smoke run:  python benchmarks/bench_e2e_dds.py --device cpu --slices 8 --size 32 --nf 16 --nfe 3 \
                    --compile none --no-cuda-graph
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from algorithms import ConsistencyStep, DDSConsistency, IscsNoise, get_sigmas, make_renoise, sample  # noqa: E402
from benchmarks.bench_network import count_flops, random_network  # noqa: E402
from benchmarks.bench_noise import materialised_iscs  # noqa: E402
from datasets.ct_phantom import EVAL_SEEDS, generate_phantom  # noqa: E402
from models import Denoiser, load_config  # noqa: E402
from models.denoiser import COMPILE_MODES  # noqa: E402
from physics import ConeBeamCT, ConeBeamGeometry, select_views  # noqa: E402
from utils.device import default_device, device_name, synchronize  # noqa: E402
from utils.io import write_text  # noqa: E402
from utils.volume import hu_to_unit  # noqa: E402

REFERENCE_BATCH = 15
"""Slices per network call of the reference implementation."""


class MaterialisedIscsNoise:
    """ISCS noise built the reference's way: two anchors, all 16 N SLERP points, N of them kept.

    Draws its anchors like algorithms.IscsNoise (two one-slice draws, in order), so both
    configurations see the same random numbers; the measured angle between the anchors replaces
    the nominal pi / 2, which moves each slice's noise by about 1 / sqrt(h w) relative.
    """

    def __call__(self, shape, generator, dtype=torch.float32):
        one = (1, *shape[1:])
        z0 = torch.randn(one, generator=generator, device=generator.device, dtype=dtype)
        z1 = torch.randn(one, generator=generator, device=generator.device, dtype=dtype)
        return materialised_iscs(z0, z1, int(shape[0]), measured_angle=True)


class PartTimer:
    """Start/end marks around named parts of the loop: CUDA events on a GPU, wall time elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans = defaultdict(list)
        self.steps = []

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        """Seconds between two marks (CUDA events must have completed)."""
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start

    def wrap(self, name, fn):
        """fn with a span recorded under name around every call."""

        def timed(*args, **kwargs):
            start = self.mark()
            out = fn(*args, **kwargs)
            self.spans[name].append((start, self.mark()))
            return out

        return timed

    def per_step(self, name) -> list:
        """Seconds of each call of the part (after a synchronisation)."""
        return [self.seconds(start, end) for start, end in self.spans[name]]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--configs", default="reference-like,ours", help="comma list of: reference-like, ours"
    )
    parser.add_argument("--slices", type=int, default=256, help="axial slices D of the volume")
    parser.add_argument("--size", type=int, default=256, help="in-plane size H = W (and the network's input)")
    parser.add_argument("--nf", type=int, default=None, help="override model.nf (CPU smoke runs)")
    parser.add_argument("--nfe", type=int, default=30)
    parser.add_argument("--num-cg", type=int, default=10)
    parser.add_argument("--views", type=int, default=20, help="SVCT views kept out of 360")
    parser.add_argument(
        "--slice-batch", type=int, default=None, help="ours: chunk limit (default: free memory)"
    )
    parser.add_argument(
        "--compile",
        default="default",
        choices=[*COMPILE_MODES, "none"],
        help="ours: torch.compile mode of the network ('none': eager)",
    )
    parser.add_argument(
        "--cuda-graph", action=argparse.BooleanOptionalAction, default=True, help="ours: replay a CUDA graph"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (weights use seed + 1)")
    parser.add_argument("--phantom-seed", type=int, default=EVAL_SEEDS[0])
    parser.add_argument("--psnr-tolerance", type=float, default=0.1, help="dB")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ve" / "AAPM_256_ncsnpp_Chung.yaml")
    return parser.parse_args(argv)


def network_config(args):
    raw = load_config(args.config).to_dict()
    raw["data"]["image_size"] = args.size
    if args.nf:
        raw["model"]["nf"] = args.nf
    return load_config(raw)


def reference_like(net, args):
    """(denoiser, noise source, cuDNN autotuning) of the reference-like configuration."""
    denoiser = Denoiser(
        net, slice_batch=REFERENCE_BATCH, precision="fp32", channels_last=False, cuda_graph=False
    )
    return denoiser, MaterialisedIscsNoise(), False


def ours(net, args):
    """(denoiser, noise source, cuDNN autotuning) of our configuration."""
    denoiser = Denoiser(
        net,
        slice_batch=args.slice_batch,
        precision="bf16",
        channels_last=True,
        compile=False if args.compile == "none" else args.compile,
        cuda_graph=args.cuda_graph,
    )
    return denoiser, IscsNoise(), True


CONFIGS = {"reference-like": reference_like, "ours": ours}


def psnr(x: torch.Tensor, reference: torch.Tensor, data_range: float) -> float:
    mse = (x.double() - reference.double()).pow(2).mean().item()
    return 10 * math.log10(data_range**2 / mse) if mse > 0 else math.inf


def write_json(result):
    """Write result to $OUT/bench_e2e_dds.json when OUT is set (after every configuration, and at the end)."""
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(out_dir, "bench_e2e_dds.json"), json.dumps(result, indent=1))


def run_config(name, base_net, gt, op, y, sigmas, args, device):
    """One timed reconstruction; returns (result row, reconstruction)."""
    torch.backends.cudnn.benchmark = False
    net = copy.deepcopy(base_net).to(device)
    denoiser, noise, autotune = CONFIGS[name](net, args)
    torch.backends.cudnn.benchmark = autotune
    shape = tuple(gt.shape)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    chunk = denoiser.chunk_size(gt)
    # Warm-up on the stack's shape: compilation, graph capture and cuDNN's choices happen here.
    start = time.perf_counter()
    with torch.no_grad():
        denoiser(torch.zeros(shape, device=device), float(sigmas[0]))
    synchronize(device)
    warmup_s = time.perf_counter() - start

    timer = PartTimer(device)
    generator = torch.Generator(device).manual_seed(args.seed)
    consistency = DDSConsistency(op, y, num_cg=args.num_cg)
    timed_noise = timer.wrap("noise", noise)
    marks = []
    start = time.perf_counter()
    x = timed_noise(shape, generator, dtype=torch.float32).mul_(float(sigmas[0]))
    marks.append(timer.mark())
    recon = sample(
        timer.wrap("network", denoiser),
        x,
        sigmas,
        ConsistencyStep(timer.wrap("data consistency", consistency)),
        make_renoise("DDS"),
        timed_noise,
        generator,
        callback=lambda info: marks.append(timer.mark()),
        disable=True,
    )
    synchronize(device)
    loop_s = time.perf_counter() - start

    steps = [timer.seconds(a, b) for a, b in itertools.pairwise(marks)]
    parts = {part: timer.per_step(part) for part in ("network", "data consistency", "noise")}
    # The first noise call draws x_T before the loop; the others belong to steps 0 .. nfe - 2.
    parts["noise"] = parts["noise"][1:] + [0.0]
    parts["other"] = [
        step - sum(parts[part][i] for part in ("network", "data consistency", "noise"))
        for i, step in enumerate(steps)
    ]
    nfe = len(steps)
    row = {
        "config": name,
        "chunk": chunk,
        "warmup_s": warmup_s,
        "loop_s": loop_s,
        "steps_s": steps,
        "per_nfe_s": {part: sum(values) / nfe for part, values in parts.items()},
        "step_s": sum(steps) / nfe,
        "noise_share": sum(parts["noise"]) / sum(steps),
        "parts_s": parts,
    }
    if device.type == "cuda":
        row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    del denoiser, net
    return row, recon


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration {unknown[0]!r}; accepted: {', '.join(CONFIGS)}")

    # The problem: phantom, geometry with 20 views, noise-free projections.
    shape = (args.slices, args.size, args.size)
    start = time.perf_counter()
    gt = hu_to_unit(generate_phantom(args.phantom_seed, shape, device=device)).unsqueeze(1).contiguous()
    geometry = ConeBeamGeometry.for_volume(shape)
    op = ConeBeamCT(geometry, views=select_views("SVCT", args.views), device=device)
    y = op.A(gt)
    synchronize(device)
    setup_s = time.perf_counter() - start

    config = network_config(args)
    base_net = random_network(config, args.seed + 1)
    flops = count_flops(base_net.to(device), gt[:1], torch.ones(1, device=device))
    base_net.cpu()
    sigmas = get_sigmas(args.nfe, float(config.model.sigma_min), float(config.model.sigma_max))
    name = device_name(device)
    print(
        f"device: {name}  torch {torch.__version__}  volume {list(gt.shape)}  views {args.views}  "
        f"NFE {args.nfe}  CG {args.num_cg}  network {flops / 1e12:.3f} TFLOP/slice  setup {setup_s:.1f} s",
        flush=True,
    )

    rows, recons = [], {}
    data_range = float(gt.max() - gt.min())
    for config_name in names:
        try:
            row, recon = run_config(config_name, base_net, gt, op, y, sigmas, args, device)
        except Exception as exc:  # noqa: BLE001 -- one failing configuration must not hide the other
            rows.append({"config": config_name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(f"{config_name} failed: {rows[-1]['error']}", flush=True)
            continue
        row["psnr_db"] = psnr(recon, gt, data_range)
        row["network_tflops"] = args.slices * flops / row["per_nfe_s"]["network"] / 1e12
        rows.append(row)
        recons[config_name] = recon
        write_json({"device": name, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
        print(
            f"{config_name}: {row['step_s']:.3f} s/NFE, loop {row['loop_s']:.1f} s, "
            f"warm-up {row['warmup_s']:.1f} s, PSNR {row['psnr_db']:.2f} dB",
            flush=True,
        )

    result = {
        "device": name,
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "flops_per_slice": flops,
        "setup_s": setup_s,
        "rows": rows,
    }
    ok = len(recons) == len(names)
    if len(recons) == 2:
        first, second = (recons[n] for n in names)
        gap = abs(rows[1]["psnr_db"] - rows[0]["psnr_db"])
        result["comparison"] = {
            "psnr_gap_db": gap,
            "psnr_between_db": psnr(second, first, data_range),
            "rel_l2": ((second - first).norm() / first.norm()).item(),
            "speedup": rows[0]["step_s"] / rows[1]["step_s"],
            "psnr_ok": gap <= args.psnr_tolerance,
        }
        ok = result["comparison"]["psnr_ok"]
    write_json(result)

    print(
        f"\n{'config':15s} {'chunk':>5s} {'s/NFE':>7s} {'network':>8s} {'DC':>7s} {'noise':>7s} "
        f"{'other':>7s} "
        f"{'loop s':>7s} {'warm s':>7s} {'TFLOP/s':>8s} {'noise%':>7s} {'peak GiB':>9s} {'PSNR dB':>8s}"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['config']:15s} failed: {row['error'][:100]}")
            continue
        parts = row["per_nfe_s"]
        peak = row.get("peak_allocated_gib", math.nan)
        print(
            f"{row['config']:15s} {row['chunk']:5d} {row['step_s']:7.3f} {parts['network']:8.3f} "
            f"{parts['data consistency']:7.3f} {parts['noise']:7.4f} {parts['other']:7.3f} "
            f"{row['loop_s']:7.1f} "
            f"{row['warmup_s']:7.1f} {row['network_tflops']:8.1f} {100 * row['noise_share']:7.3f} "
            f"{peak:9.2f} {row['psnr_db']:8.3f}"
        )
    if "comparison" in result:
        c = result["comparison"]
        print(
            f"speed-up {c['speedup']:.2f}x; PSNR gap {c['psnr_gap_db']:.4f} dB "
            f"({'within' if c['psnr_ok'] else 'OUTSIDE'} {args.psnr_tolerance} dB); "
            f"PSNR of {names[1]} vs {names[0]} {c['psnr_between_db']:.2f} dB; rel L2 {c['rel_l2']:.2e}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
