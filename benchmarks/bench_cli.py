"""Time the entry scripts as a user runs them: ``recon_CBCT.py`` in a subprocess, cold and warm.

Everything a run needs is made here, in ``--work-dir``: CT phantoms in Hounsfield units (held-out
seed, written as tensor files so no SimpleITK is needed) of ``D x 256 x 256`` for each ``--cases``
entry ``D``, and a checkpoint of the 256 NCSN++ (``configs/ve/AAPM_256_ncsnpp_Chung.yaml``) with
seeded random weights, written by ``models.export_weights``. Random weights make the images
meaningless; the point is the time and memory of the command a user types.

Each case runs ``python recon_CBCT.py --data <volume> --checkpoint-path <random 256> --task SVCT
--degree 20 --NFE 30 --num-cg 10 --device cuda --results-dir <dir> <--extra>`` once per ``--runs``
entry: ``cold`` starts with a fresh HOME and TMPDIR (so every cache a program keeps there, the
compile caches included, starts empty, as on a fresh machine), ``warm`` reuses the HOME and TMPDIR of
the case's cold run (a repeat run on the same machine). Reported per run: wall time of the process,
the stage times of its ``run.log`` (``<stage> done in <s> s``), its own peak-memory line when it
writes one, the GPU's peak used memory sampled by ``nvidia-smi`` every 0.25 s (minus the idle
reading), the exit code, and the last error line on failure. A table comes last; with ``OUT`` set
the full results go to ``$OUT/bench_cli.json``.

Usage (one GPU):   python benchmarks/bench_cli.py
Fast-path flags:   python benchmarks/bench_cli.py --extra "--precision bf16 --compile"
CPU smoke run:     python benchmarks/bench_cli.py --device cpu --cases 8 --size 32 --nfe 2 --nf 16 \
                       --runs cold
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGE_LINE = re.compile(r"^\S+ \S+ [A-Z]+ (?P<stage>.+?) done in (?P<seconds>[0-9.]+) s$")
PEAK_LINE = re.compile(r"peak (?:GPU )?memory[^0-9]*(?P<gib>[0-9.]+) GiB", re.IGNORECASE)
FOLDER_LINE = re.compile(r"results folder: (?P<path>\S+)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="256,512", help="comma-separated slice counts D of D x size x size")
    parser.add_argument("--size", type=int, default=256, help="in-plane size of the phantoms")
    parser.add_argument("--runs", default="cold,warm", help="comma-separated: cold, warm")
    parser.add_argument("--nfe", type=int, default=30)
    parser.add_argument("--num-cg", type=int, default=10)
    parser.add_argument("--views", type=int, default=20, help="SVCT views")
    parser.add_argument("--nf", type=int, default=None, help="override model.nf (CPU smoke runs)")
    parser.add_argument("--extra", default="", help="more recon_CBCT.py options, one shell-quoted string")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--timeout", type=float, default=560.0, help="seconds one run may take")
    return parser.parse_args(argv)


def make_inputs(args: argparse.Namespace, work: Path) -> Dict[str, Path]:
    """The phantoms (``vol<D>.pt``) and the random-weight checkpoint (``rand256.pt``) in ``work``."""
    from benchmarks.bench_network import random_network
    from datasets.ct_phantom import EVAL_SEEDS, default_spacing, generate_phantom, phantom_meta
    from models import export_weights, load_config
    from utils.device import default_device
    from utils.io import write_volume

    paths: Dict[str, Path] = {}
    config = load_config(ROOT / "configs" / "ve" / "AAPM_256_ncsnpp_Chung.yaml")
    config.data.image_size = args.size
    if args.nf is not None:
        config.model.nf = args.nf
    checkpoint = work / "rand256.pt"
    if not checkpoint.is_file():
        export_weights(checkpoint, random_network(config, seed=1), config, meta={"weights": "random"})
    paths["checkpoint"] = checkpoint
    for depth in _ints(args.cases):
        volume = work / f"vol{depth}.pt"
        if not volume.is_file():
            shape = (depth, args.size, args.size)
            hu = generate_phantom(EVAL_SEEDS[0], shape=shape, device=default_device())
            meta = phantom_meta(shape, default_spacing(shape))
            write_volume(volume, hu.float().cpu(), meta)
        paths[f"vol{depth}"] = volume
    return paths


def _ints(text: str) -> List[int]:
    return [int(part) for part in text.split(",") if part.strip()]


class GpuMemorySampler:
    """The largest ``memory.used`` of GPU 0 (MiB) seen by ``nvidia-smi`` while it runs."""

    def __init__(self, period: float = 0.25):
        self.period = period
        self.peak_mib: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def read() -> Optional[float]:
        try:
            text = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True, text=True, timeout=5,
            ).stdout
            return float(text.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self.read()
            if value is not None:
                self.peak_mib = value if self.peak_mib is None else max(self.peak_mib, value)
            self._stop.wait(self.period)

    def __enter__(self) -> "GpuMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def fresh_environment(root: Path) -> Dict[str, str]:
    """The environment of a run whose HOME and TMPDIR are ``root``'s (created if missing)."""
    home, tmp = root / "home", root / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    # Caches placed explicitly elsewhere would survive the fresh HOME: the run uses its defaults.
    for name in ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR"):
        env.pop(name, None)
    return env


def read_log(folder: Optional[Path]) -> dict:
    """Stage times, the peak-memory line and the lines of a run's ``run.log`` (the gaps between
    stages are the writes)."""
    result: dict = {"stages": {}, "peak_gib_logged": None, "log": []}
    if folder is None or not (folder / "run.log").is_file():
        return result
    result["log"] = (folder / "run.log").read_text(errors="replace").splitlines()
    for line in result["log"]:
        stage = STAGE_LINE.search(line)
        if stage:
            result["stages"][stage["stage"]] = float(stage["seconds"])
        peak = PEAK_LINE.search(line)
        if peak:
            result["peak_gib_logged"] = float(peak["gib"])
    return result


def run_once(args: argparse.Namespace, volume: Path, checkpoint: Path, env: Dict[str, str], results: Path) -> dict:
    command = [
        sys.executable, str(ROOT / "recon_CBCT.py"),
        "--data", str(volume), "--checkpoint-path", str(checkpoint),
        "--task", "SVCT", "--degree", str(args.views), "--NFE", str(args.nfe), "--num-cg", str(args.num_cg),
        "--device", args.device, "--results-dir", str(results), *shlex.split(args.extra),
    ]
    idle = GpuMemorySampler.read() if args.device == "cuda" else None
    start = time.perf_counter()
    with GpuMemorySampler() as sampler:
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as err:
            code, stdout, stderr = None, str(err.stdout or ""), str(err.stderr or "") + "\ntimed out"
    wall = time.perf_counter() - start
    found = FOLDER_LINE.search(stdout + stderr)
    folder = Path(found["path"]) if found else None
    record = {
        "command": shlex.join(command),
        "exit_code": code,
        "wall_s": round(wall, 2),
        "folder": str(folder) if folder else None,
        "gpu_peak_gib": None
        if sampler.peak_mib is None or idle is None
        else round((sampler.peak_mib - idle) / 1024, 2),
        **read_log(folder),
    }
    if code != 0:
        lines = [line for line in (stderr or stdout).splitlines() if line.strip()]
        record["error"] = lines[-1] if lines else "no output"
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="iscs_bench_cli_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    inputs = make_inputs(args, work)
    print(f"inputs ready in {time.perf_counter() - start:.1f} s: {work}", flush=True)
    records = []
    for depth in _ints(args.cases):
        cache_root = Path(tempfile.mkdtemp(prefix=f"fresh{depth}_", dir=work))
        for kind in [part.strip() for part in args.runs.split(",") if part.strip()]:
            if kind not in ("cold", "warm"):
                raise SystemExit(f"--runs {kind!r}: accepted: cold, warm")
            record = run_once(
                args, inputs[f"vol{depth}"], inputs["checkpoint"], fresh_environment(cache_root), work / "results"
            )
            record.update(case=f"{depth}x{args.size}x{args.size}", run=kind)
            records.append(record)
            print(json.dumps(record), flush=True)
    print_table(records)
    if os.environ.get("OUT"):
        from utils.io import write_text

        write_text(Path(os.environ["OUT"], "bench_cli.json"), json.dumps(records, indent=1))
    return 0 if all(r["exit_code"] == 0 for r in records) else 1


def print_table(records: List[dict]) -> None:
    stages = ["simulating the measurement", "baselines"]
    print("\n| case | run | exit | wall s | " + " | ".join(stages) + " | reconstruction | metrics | GPU peak GiB | logged peak GiB |")
    print("| --- " * (8 + len(stages)) + "|")
    for r in records:
        recon = next((v for k, v in r["stages"].items() if k.startswith("reconstruction")), None)
        cells = [r["case"], r["run"], r["exit_code"], r["wall_s"]]
        cells += [r["stages"].get(name) for name in stages]
        cells += [recon, r["stages"].get("metrics"), r["gpu_peak_gib"], r["peak_gib_logged"]]
        print("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
        if r.get("error"):
            print(f"|   error: {r['error']} |")


if __name__ == "__main__":
    sys.exit(main())
