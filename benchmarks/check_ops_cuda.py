"""Build the fused CUDA ops and check them against the pure-torch path, forward and backward.

Checks, on one CUDA device:
  * upfirdn2d: CUDA kernel vs torch path over NCSN++'s FIR up/down cases at full size and odd sizes,
    negative pads and up/down 3, in fp32 (relative error <= 1e-5, TF32 off), fp16 and bf16
    (both paths against an fp64 reference), contiguous and channels_last, plus bf16 timings of
    the CUDA kernel, the torch path and the compiled taps path (what torch.compile runs);
  * fused_bias_act: every activation, same dtypes and layouts, gradients of x and bias.

A 16-bit check compares with the fp64 function of the same (rounded) inputs, so that it measures
the op's own rounding only: from unrounded inputs, rounding x + bias can flip the sign of values
near 0, where the relu / lrelu derivative jumps, and that alone gives relative errors of 1e-2 to
5e-2 in both paths, whatever the kernel does;
  * NCSN++: the parity checkpoint on the GPU against the reference scores, with the CUDA ops and
    with ISCS_OPS_FORCE_TORCH=1.
Prints a table; exits 1 if any check fails (2 without CUDA). Full results go to
$OUT/check_ops_cuda.json when OUT is set.

Usage: python benchmarks/check_ops_cuda.py
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from op import ACTIVATIONS, FORCE_TORCH_ENV, fused_bias_act, load_extension, upfirdn2d  # noqa: E402
from op.fused_act import fused_bias_act_torch  # noqa: E402
from op.upfirdn2d import upfirdn2d_torch  # noqa: E402
from utils.device import device_name  # noqa: E402
from utils.io import write_text  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
"""Relative L2 error allowed: fp32 against the fp32 torch path, 16-bit against the fp64 function of
the same rounded inputs (a few units of the dtype's rounding, 2^-11 and 2^-8 relative)."""

FIR = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64

UPFIRDN_CASES = [
    # name, (N, C, H, W), up, down, pads (x0, x1, y0, y1), kernel
    ("ncsnpp down 256", (8, 128, 256, 256), 1, 2, (1, 1, 1, 1), FIR),
    ("ncsnpp up 128", (8, 256, 128, 128), 2, 1, (2, 1, 2, 1), FIR * 4),
    ("ncsnpp conv-down pad", (8, 128, 256, 256), 1, 1, (2, 2, 2, 2), FIR),
    ("odd up2", (3, 5, 17, 13), 2, 1, (1, 2, 0, 3), None),
    ("odd up2 down2", (2, 7, 19, 11), 2, 2, (2, 1, 3, 0), None),
    ("up3 down2", (2, 3, 9, 10), 3, 2, (2, 1, 1, 2), None),
    ("negative pads", (2, 4, 15, 12), 1, 1, (-1, 2, 1, -2), None),
]

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in fp64 (inf for NaN or a zero reference)."""
    value, reference = value.double(), reference.double()
    norm = reference.norm().item()
    error = (value - reference).norm().item()
    return error / norm if norm > 0 and not math.isnan(error) else float("inf")


def time_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of fn() with CUDA events after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def forward_and_grads(fn, inputs, grad_out=None, gen=None):
    """(fn(*inputs), grad_out, gradients of <fn(*inputs), grad_out> w.r.t. the inputs).

    Without grad_out, a standard normal one is drawn from gen (on the CPU, then moved).
    """
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), grad_out, [g.detach() for g in grads]


def check(rows, name, dtype, layout, what, cuda, torch_path, reference):
    """Append one comparison row; fp32 compares with the torch path, 16-bit both paths with fp64."""
    if dtype == torch.float32:
        error, torch_error = rel_error(cuda, torch_path), 0.0
    else:
        error, torch_error = rel_error(cuda, reference), rel_error(torch_path, reference)
    ok = error <= TOLERANCE[dtype] and cuda.dtype == dtype
    rows.append(
        {
            "op": name,
            "dtype": str(dtype).replace("torch.", ""),
            "layout": layout,
            "what": what,
            "rel_error": error,
            "torch_path_rel_error": torch_error,
            "ok": ok,
        }
    )


def compiled(fn):
    """fn through torch.compile (fixed shapes), where upfirdn2d takes its taps path."""
    return torch.compile(fn, dynamic=False, fullgraph=True)


def check_upfirdn2d(rows, timings, gen):
    for name, shape, up, down, pads, kernel in UPFIRDN_CASES:
        kernel = (torch.randn(3, 4, generator=gen) if kernel is None else kernel).cuda()
        cuda_op = functools.partial(upfirdn2d, kernel=kernel, up=up, down=down, pad=pads)
        torch_op = functools.partial(upfirdn2d_torch, kernel=kernel, up=up, down=down, pads=pads)
        exact_op = functools.partial(upfirdn2d_torch, kernel=kernel.double(), up=up, down=down, pads=pads)
        x64 = torch.randn(shape, generator=gen, dtype=torch.float64).cuda()
        _, grad64, _ = forward_and_grads(exact_op, [x64], gen=gen)
        for dtype in TOLERANCE:
            for layout, memory_format in LAYOUTS.items():
                x = x64.to(dtype).contiguous(memory_format=memory_format)
                g = grad64.to(dtype).contiguous(memory_format=memory_format)
                ref_out, _, (ref_grad,) = forward_and_grads(exact_op, [x.double()], g.double())
                cuda_out, _, (cuda_grad,) = forward_and_grads(cuda_op, [x], g)
                torch_out, _, (torch_grad,) = forward_and_grads(torch_op, [x], g)
                check(rows, f"upfirdn2d {name}", dtype, layout, "forward", cuda_out, torch_out, ref_out)
                check(rows, f"upfirdn2d {name}", dtype, layout, "grad x", cuda_grad, torch_grad, ref_grad)
                if name.startswith("ncsnpp") and dtype == torch.bfloat16:
                    with torch.no_grad():
                        cuda_ms = time_ms(functools.partial(cuda_op, x))
                        torch_ms = time_ms(functools.partial(torch_op, x))
                        taps_ms = None
                        # Compiled in channels_last only, the layout the compiled network runs in.
                        if layout == "channels_last":
                            taps_op = compiled(cuda_op)
                            taps_out = taps_op(x)
                            check(
                                rows,
                                f"upfirdn2d {name} (compiled taps)",
                                dtype,
                                layout,
                                "forward",
                                taps_out,
                                torch_out,
                                ref_out,
                            )
                            taps_ms = time_ms(functools.partial(taps_op, x))
                    timings.append(
                        {
                            "op": f"upfirdn2d {name}",
                            "dtype": "bfloat16",
                            "layout": layout,
                            "cuda_ms": cuda_ms,
                            "torch_path_ms": torch_ms,
                            "compiled_taps_ms": taps_ms,
                        }
                    )


def check_fused_bias_act(rows, gen):
    shapes = {"contiguous": (4, 64, 33, 17), "channels_last": (4, 64, 33, 17), "2d": (129, 40)}
    for act, spec in ACTIVATIONS.items():
        alpha, gain = spec.alpha or 0.3, 1.3
        cuda_op = functools.partial(fused_bias_act, act=act, alpha=alpha, gain=gain)
        torch_op = functools.partial(fused_bias_act_torch, spec=spec, alpha=alpha, gain=gain)
        for layout, shape in shapes.items():
            memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x64 = torch.randn(shape, generator=gen, dtype=torch.float64).cuda()
            b64 = torch.randn(shape[1], generator=gen, dtype=torch.float64).cuda()
            _, g64, _ = forward_and_grads(torch_op, [x64, b64], gen=gen)
            for dtype in TOLERANCE:
                x = x64.to(dtype).contiguous(memory_format=memory_format)
                g = g64.to(dtype).contiguous(memory_format=memory_format)
                b = b64.to(dtype)
                ref_out, _, ref_grads = forward_and_grads(torch_op, [x.double(), b.double()], g.double())
                cuda_out, _, cuda_grads = forward_and_grads(cuda_op, [x, b], g)
                torch_out, _, torch_grads = forward_and_grads(torch_op, [x, b], g)
                check(rows, f"fused_bias_act {act}", dtype, layout, "forward", cuda_out, torch_out, ref_out)
                for what, i in (("grad x", 0), ("grad bias", 1)):
                    check(
                        rows,
                        f"fused_bias_act {act}",
                        dtype,
                        layout,
                        what,
                        cuda_grads[i],
                        torch_grads[i],
                        ref_grads[i],
                    )


def check_parity(rows):
    from models import load_score_model

    data = ROOT / "tests" / "data"
    expected = torch.load(data / "parity_small_expected.pt", map_location="cuda", weights_only=True)
    net = load_score_model(
        data / "parity_small_config.yaml", data / "parity_small_checkpoint.pth", device="cuda"
    )
    for path, force in (("cuda ops", "0"), ("torch ops", "1")):
        os.environ[FORCE_TORCH_ENV] = force
        with torch.no_grad():
            score = net(expected["x"], expected["sigma"])
        error = (score - expected["score"]).abs().max().item()
        rows.append(
            {
                "op": f"ncsnpp parity ({path})",
                "dtype": "float32",
                "layout": "contiguous",
                "what": "max abs error",
                "rel_error": error,
                "torch_path_rel_error": 0.0,
                "ok": error <= 1e-5,
            }
        )
    os.environ.pop(FORCE_TORCH_ENV, None)


def main() -> int:
    if not torch.cuda.is_available():
        print("check_ops_cuda: no CUDA device; the torch path is what runs here, nothing to compare")
        return 2
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    os.environ.pop(FORCE_TORCH_ENV, None)
    start = time.perf_counter()
    extension = load_extension()
    build_s = time.perf_counter() - start
    print(f"device: {device_name('cuda')}  torch {torch.__version__}  CUDA {torch.version.cuda}")
    if extension is None:
        print("FAILED: the CUDA extension did not build (see the warning above)")
        return 1
    print(f"extension built/loaded in {build_s:.1f} s")

    gen = torch.Generator().manual_seed(0)
    rows, timings = [], []
    check_upfirdn2d(rows, timings, gen)
    check_fused_bias_act(rows, gen)
    check_parity(rows)

    failures = [r for r in rows if not r["ok"]]
    worst = {}
    for r in rows:
        family = r["op"].split(" ")[0] + (" (compiled taps)" if "compiled" in r["op"] else "")
        key = (family if not r["op"].startswith("ncsnpp") else r["op"], r["dtype"], r["what"])
        if key not in worst or r["rel_error"] > worst[key]["rel_error"]:
            worst[key] = r
    print(f"\n{'check (worst case)':44s} {'dtype':9s} {'what':14s} {'error':>10s} {'torch path':>10s}  ok")
    for (op, dtype, what), r in sorted(worst.items()):
        print(
            f"{op:44s} {dtype:9s} {what:14s} {r['rel_error']:10.2e} {r['torch_path_rel_error']:10.2e}  "
            f"{'yes' if r['ok'] else 'NO'}"
        )
    print(f"\n{'timing (bf16, median)':34s} {'layout':14s} {'cuda ms':>9s} {'torch ms':>9s} {'taps ms':>9s}")
    for t in timings:
        taps = "-" if t["compiled_taps_ms"] is None else f"{t['compiled_taps_ms']:.3f}"
        print(f"{t['op']:34s} {t['layout']:14s} {t['cuda_ms']:9.3f} {t['torch_path_ms']:9.3f} {taps:>9s}")
    for r in failures:
        print(f"FAILED: {r['op']} {r['dtype']} {r['layout']} {r['what']}: {r['rel_error']:.3e}")
    print(f"\n{len(rows) - len(failures)}/{len(rows)} checks passed")

    out_dir = os.environ.get("OUT")
    if out_dir:
        result = {
            "device": device_name("cuda"),
            "torch": torch.__version__,
            "build_s": build_s,
            "checks": rows,
            "timings": timings,
        }
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(out_dir, "check_ops_cuda.json"), json.dumps(result, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
