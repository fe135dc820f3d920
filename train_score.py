"""Train a 2D NCSN++ score model with score_sde's continuous VE denoising score matching.

For each batch of clean slices x in [0, 1]: t ~ U(eps, 1), sigma = sigma_min (sigma_max /
sigma_min)^t, z ~ N(0, I) and the loss is the per-slice sum over pixels of
(sigma s(x + sigma z, sigma) + z)^2, averaged over the batch (score_sde with reduce_mean false and
no likelihood weighting). The optimiser is AdamW (decoupled weight decay, ``optim.weight_decay``)
with a linear learning-rate warm-up and gradient-norm clipping; an EMA of the weights is kept
(``model.ema_rate``, score_sde's warm-up of the decay). On CUDA the forward runs under bf16
autocast with channels_last tensors, optionally through ``torch.compile``.

Data sources (``--data``): ``phantom`` (axial slices of CT phantoms made on the training device
from training seeds only), ``phantom-dr`` (axial slices of domain-randomised CT: chest, abdomen, head,
pelvis and test objects over the clinical range of fields of view, slice thicknesses, scanner HU
scales, drifts, noise textures and inserts; ``datasets.ct_randomize``), ``mri`` (slices of the
augmented MNI152 template in ``--plane``, coronal by default, training seeds only), ``mri-dr`` (the
same with T1/T2/PD/FLAIR-like contrasts, bias fields, lower resolution and Rician noise;
``datasets.mri.MRIAppearance``), ``nifti`` (slices of the volumes given with ``--volumes``).

A run directory holds everything and makes the run resumable across calls::

    RUN_DIR/config.yaml                 the resolved config (sigma_max etc.)
    RUN_DIR/calls.jsonl                 one line per call: arguments, device, steps, wall time
    RUN_DIR/log.jsonl                   loss log: step, loss, lr, grad norm, samples/s, minutes
    RUN_DIR/checkpoints/checkpoint_<step>.pth   score_sde format (models.load_score_model reads it)
    RUN_DIR/checkpoints/trainer_<step>.pt       generators, data-pool position, elapsed time
    RUN_DIR/samples/step_<step>_pc<N>.png   unconditional samples (N PC steps, EMA weights)

``--resume`` continues from the latest complete checkpoint pair; ``--max-minutes`` stops, saves and
exits cleanly before a wall-clock budget; ``--export`` writes the compact fp16 EMA weights at the end
of the call. ``--estimate-sigma-max N`` prints the largest pairwise Euclidean distance between N
training slices (the rule of Song and Ermon, 2020, for choosing sigma_max) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import models
from datasets.mri import MRIAppearance
from datasets.slices import PLANES, MRISlices, NiftiSlices, PhantomSlices, RandomizedCTSlices
from models.precision import default_precision
from recon.parser import DEVICES
from utils.device import default_device, device_name
from utils.io import write_text

SAMPLING_EPS = 1e-5  # score_sde's lower end of t in training and sampling (continuous VE).


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except where an option is required or its help already names its default."""

    def _get_help_string(self, action):
        if action.required or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (defaults from the config are resolved in :func:`resolve`)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="model config YAML (score_sde layout)")
    p.add_argument("--data", choices=sorted(DATA_SOURCES), required=True, help="where training slices come from")
    p.add_argument("--volumes", type=Path, nargs="+", default=[], help="volume files for --data nifti")
    p.add_argument("--plane", choices=sorted(PLANES), default=None,
                   help="slice plane (default: axial for phantom, phantom-dr and nifti; coronal for mri and mri-dr)")
    p.add_argument("--intensity", choices=("ct", "minmax"), default="ct", help="intensity map for --data nifti")
    p.add_argument("--template", type=Path, default=None,
                   help="MNI152 template file for --data mri / mri-dr (default: the one inside nilearn; a .pt copy needs no SimpleITK)")
    p.add_argument("--run-dir", type=Path, required=True, help="run directory (checkpoints, logs, samples)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the latest checkpoint in --run-dir")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start a new run from these weights (compact export or score_sde checkpoint; fresh optimiser)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle --resume / --init-weights files in full (runs code stored in them): trusted files only")
    p.add_argument("--max-steps", type=int, default=None, help="total steps of the run (default: training.n_iters)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget of this call; saves and exits before it")
    p.add_argument("--reserve-seconds", type=float, default=30.0,
                   help="time kept back from --max-minutes for the final checkpoint, samples and export")
    p.add_argument("--batch-size", type=int, default=None, help="default: training.batch_size")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: optim.lr)")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default: optim.warmup)")
    p.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip, <= 0 disables (default: optim.grad_clip)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: optim.weight_decay)")
    p.add_argument("--ema-rate", type=float, default=None, help="EMA decay (default: model.ema_rate)")
    p.add_argument("--sigma-max", type=float, default=None, help="override model.sigma_max")
    p.add_argument("--device", choices=DEVICES, default=default_device())
    p.add_argument("--precision", choices=tuple(models.PRECISIONS), default=None, help="autocast precision (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for cuda)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the training forward (falls back to eager with a warning if it fails)")
    p.add_argument("--seed", type=int, default=None, help="seed of the training generators (default: config seed)")
    p.add_argument("--first-data-seed", type=int, default=0, help="seed of the first phantom / augmentation (training range only)")
    p.add_argument("--pool-size", type=int, default=32, help="volumes kept in the on-the-fly pool")
    p.add_argument("--refresh-every", type=int, default=8, help="batches between replacing the oldest pool volume")
    p.add_argument("--pool-depth", type=int, default=64, help="axial slices per CT volume in the pool")
    p.add_argument("--log-every", type=int, default=100, help="steps between loss-log lines")
    p.add_argument("--ckpt-minutes", type=float, default=4.0, help="minutes between checkpoints (also saved at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoint pairs kept in the run directory")
    p.add_argument("--sample-every", type=int, default=0, help="steps between sample grids (0: only at the end of the call)")
    p.add_argument("--sample-steps", type=int, default=200, help="reverse-diffusion steps of the sample grid (0: no grid)")
    p.add_argument("--num-samples", type=int, default=16, help="samples in the grid")
    p.add_argument("--export", type=Path, default=None, help="write the compact fp16 EMA weights here at the end of the call")
    p.add_argument("--estimate-sigma-max", type=int, default=0, metavar="N",
                   help="print the max pairwise distance between N training slices and exit")
    return p


def _phantom_source(args, size, device):
    return PhantomSlices(pool_size=args.pool_size, refresh_every=args.refresh_every, size=size,
                         first_seed=args.first_data_seed, device=device, depth=args.pool_depth)


def _randomized_ct_source(args, size, device):
    return RandomizedCTSlices(pool_size=args.pool_size, refresh_every=args.refresh_every, size=size,
                              first_seed=args.first_data_seed, device=device, depth=args.pool_depth)


def _mri_source(args, size, device, appearance=None):
    return MRISlices(pool_size=args.pool_size, refresh_every=args.refresh_every, size=size,
                     first_seed=args.first_data_seed, device=device, plane=args.plane, template=args.template,
                     appearance=appearance)


def _randomized_mri_source(args, size, device):
    return _mri_source(args, size, device, MRIAppearance())


def _nifti_source(args, size, device):
    if not args.volumes:
        raise ValueError("--data nifti needs --volumes FILE [FILE ...]")
    return NiftiSlices(args.volumes, args.plane, size, args.intensity).to(device)


DATA_SOURCES: dict[str, Callable] = {"phantom": _phantom_source, "phantom-dr": _randomized_ct_source,
                                     "mri": _mri_source, "mri-dr": _randomized_mri_source, "nifti": _nifti_source}
DEFAULT_PLANE = {"phantom": "axial", "phantom-dr": "axial", "mri": "coronal", "mri-dr": "coronal", "nifti": "axial"}


def resolve(args: argparse.Namespace):
    """Fill defaults from the config and validate the combination; returns the config."""
    config = models.load_config(args.config)
    if args.sigma_max is not None:
        config.model.sigma_max = float(args.sigma_max)
    args.plane = args.plane or DEFAULT_PLANE[args.data]
    if args.data in ("phantom", "phantom-dr") and args.plane != "axial":
        raise ValueError(f"--plane {args.plane}: {args.data} slices are axial; use --plane axial")
    defaults = {"max_steps": config.training.n_iters, "batch_size": config.training.batch_size,
                "lr": config.optim.lr, "warmup": config.optim.warmup, "grad_clip": config.optim.grad_clip,
                "weight_decay": config.optim.weight_decay, "ema_rate": config.model.ema_rate, "seed": config.seed}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    args.precision = args.precision or default_precision(args.device)
    args.channels_last = args.device == "cuda" if args.channels_last is None else args.channels_last
    if args.resume and args.init_weights is not None:
        raise ValueError("--resume and --init-weights exclude each other: resume continues a run, init starts one")
    return config


# ----------------------------------------------------------------------------------------------
# Loss, sampler and sigma_max rule
# ----------------------------------------------------------------------------------------------

def dsm_loss(net: torch.nn.Module, x: torch.Tensor, sigma_min: float, sigma_max: float, generator: torch.Generator,
             autocast: contextlib.AbstractContextManager) -> torch.Tensor:
    """score_sde's continuous VE denoising score-matching loss for clean slices ``x`` [B, 1, S, S].

    Returns the batch mean of sum_pixels (sigma * score(x + sigma z, sigma) + z)^2 (a 0-d fp32 tensor).
    """
    b = x.shape[0]
    t = torch.rand(b, device=x.device, generator=generator) * (1 - SAMPLING_EPS) + SAMPLING_EPS
    sigma = models.ve_sigma(t, sigma_min, sigma_max)
    z = torch.randn(x.shape, device=x.device, generator=generator)
    with autocast:
        score = net(x + sigma.view(b, 1, 1, 1) * z, sigma)
    return (score.float() * sigma.view(b, 1, 1, 1) + z).square().sum(dim=(1, 2, 3)).mean()


@torch.no_grad()
def pc_sample(net: torch.nn.Module, shape: Sequence[int], sigma_min: float, sigma_max: float, steps: int,
              generator: torch.Generator, snr: float = 0.16, device=None) -> torch.Tensor:
    """Unconditional samples by predictor-corrector sampling of the VE SDE (Song et al., ICLR 2021, Algorithm 2).

    At each of ``steps`` times t from 1 to eps: one Langevin corrector step whose size follows the
    signal-to-noise ratio ``snr``, then one reverse-diffusion predictor step
    (``models.VESDE.reverse_diffusion_step``); the last predictor mean is returned (noise removal).

    Returns:
        float32 samples of ``shape`` [N, 1, S, S], clipped to [0, 1] for display.
    """
    sde = models.VESDE(sigma_min, sigma_max, steps)
    x = sde.prior_sampling(tuple(shape), generator, device, torch.float32)
    mean = x
    for t in torch.linspace(1.0, SAMPLING_EPS, steps, device=device):
        score = net(x, sde.sigma(t))
        noise = torch.randn(x.shape, generator=generator, device=device)
        step = 2 * (snr * noise.flatten(1).norm(dim=-1).mean() / score.flatten(1).norm(dim=-1).mean()) ** 2
        x = x + step * score + (2 * step).sqrt() * noise
        x, mean = sde.reverse_diffusion_step(net, x, t, torch.randn(x.shape, generator=generator, device=device))
    return mean.float().clamp(0, 1)


def save_grid(samples: torch.Tensor, path: Path, pad: int = 2) -> None:
    """Write samples ``[N, 1, S, S]`` in [0, 1] as one square 8-bit grayscale PNG grid (no imaging library needed)."""
    n, _, h, w = samples.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros(rows * (h + pad) + pad, cols * (w + pad) + pad, dtype=torch.uint8)
    pixels = (samples[:, 0].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    for i, image in enumerate(pixels):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_gray(grid))


def _png_gray(image: torch.Tensor) -> bytes:
    """PNG bytes of a uint8 image ``[H, W]`` (colour type 0, filter 0 on every row)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = image.shape
    rows = torch.cat([torch.zeros(h, 1, dtype=torch.uint8), image], dim=1).numpy().tobytes()
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b"")


@torch.no_grad()
def max_pairwise_distance(slices: torch.Tensor, chunk: int = 512) -> float:
    """Largest Euclidean distance between any two of ``slices`` [N, ...] (computed in float64 chunks)."""
    flat = slices.flatten(1).double()
    best = 0.0
    for start in range(0, flat.shape[0], chunk):
        best = max(best, float(torch.cdist(flat[start:start + chunk], flat).max()))
    return best


# ----------------------------------------------------------------------------------------------
# Checkpoints of the run directory
# ----------------------------------------------------------------------------------------------

def _checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps that have both the score_sde checkpoint and the trainer state, ascending."""
    folder = run_dir / "checkpoints"
    steps = []
    for path in folder.glob("checkpoint_*.pth"):
        step = path.stem.split("_")[-1]
        if step.isdigit() and (folder / f"trainer_{step}.pt").is_file():
            steps.append(int(step))
    return sorted(steps)


class Trainer:
    """Model, EMA, optimiser, data and generators of one run; ``run()`` trains until a stop condition."""

    def __init__(self, args: argparse.Namespace, config):
        self.args, self.config = args, config
        self.device = torch.device(args.device)
        if self.device.type == "cuda":
            # cuDNN picks the fastest convolution algorithms for the fixed batch shape; fp32 matmuls may use TF32.
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        self.model = models.build_model(config, generator=torch.Generator().manual_seed(args.seed)).to(self.device)
        if args.channels_last:
            # One-channel inputs are laid out alike in both formats, so converting the weights is enough.
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = models.ExponentialMovingAverage(self.model.parameters(), decay=args.ema_rate)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, betas=(config.optim.beta1, 0.999),
                                           eps=config.optim.eps, weight_decay=args.weight_decay,
                                           fused=self.device.type == "cuda")
        self.data = DATA_SOURCES[args.data](args, config.data.image_size, self.device)
        self.data_gen = torch.Generator(self.device).manual_seed(args.seed)
        self.noise_gen = torch.Generator(self.device).manual_seed(args.seed + 1)
        self.step, self.elapsed = 0, 0.0
        self.warmup_from = 0  # the step at which the optimiser started fresh (warm-up counts from here)
        self.forward = self.model
        if args.compile:
            self.forward = torch.compile(self.model)
        self.autocast = models.autocast(self.device.type, args.precision)
        self.sigma_min, self.sigma_max = float(config.model.sigma_min), float(config.model.sigma_max)

    # -- state ----------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint pair of the current step and drop all but the newest ``--keep-checkpoints`` pairs."""
        folder = self.args.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        trainer_state = {"step": self.step, "elapsed": self.elapsed, "warmup_from": self.warmup_from,
                         "data": self.data.state_dict(),
                         "data_gen": self.data_gen.get_state(), "noise_gen": self.noise_gen.get_state()}
        models.atomic_save(trainer_state, folder / f"trainer_{self.step}.pt")
        models.save_checkpoint(folder / f"checkpoint_{self.step}.pth", self.model, self.ema, self.optimizer, self.step)
        for old in _checkpoint_steps(self.args.run_dir)[:-self.args.keep_checkpoints]:
            (folder / f"checkpoint_{old}.pth").unlink(missing_ok=True)
            (folder / f"trainer_{old}.pt").unlink(missing_ok=True)

    def resume(self) -> None:
        """Load the newest checkpoint pair of the run directory (exact for dropout 0, as the shipped configs have)."""
        steps = _checkpoint_steps(self.args.run_dir)
        if not steps:
            raise FileNotFoundError(f"--resume: no checkpoint pair (checkpoint_<step>.pth + trainer_<step>.pt) "
                                    f"in {self.args.run_dir / 'checkpoints'}")
        folder = self.args.run_dir / "checkpoints"
        trust = self.args.trust_checkpoint
        state = models.read_checkpoint(folder / f"checkpoint_{steps[-1]}.pth", trust, map_location=self.device)
        self.model.load_state_dict(models.strip_module_prefix(state["model"]))
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        trainer = models.read_checkpoint(folder / f"trainer_{steps[-1]}.pt", trust)
        self.step, self.elapsed = int(trainer["step"]), float(trainer["elapsed"])
        self.warmup_from = int(trainer["warmup_from"])
        self.data.load_state_dict(trainer["data"])
        self.data_gen.set_state(trainer["data_gen"])
        self.noise_gen.set_state(trainer["noise_gen"])

    def init_weights(self, path: Path) -> None:
        """Start from trained weights (model and EMA both take them) with a fresh optimiser and a new warm-up.

        The step count and training minutes recorded in the file carry on, so that exports keep the totals.
        """
        net = models.load_score_model(self.config, path, device=self.device, trust=self.args.trust_checkpoint)
        self.model.load_state_dict(net.state_dict())
        self.ema = models.ExponentialMovingAverage(self.model.parameters(), decay=self.args.ema_rate)
        info = net.checkpoint_info
        self.step = self.warmup_from = int(info.get("step") or 0)
        self.elapsed = 60.0 * float((info.get("meta") or {}).get("train_minutes", 0.0))

    # -- training -------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: linear warm-up over ``--warmup`` steps from the last fresh optimiser start."""
        return self.args.lr * min(1.0, (step - self.warmup_from + 1) / max(1, self.args.warmup))

    def train_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on the clean batch ``x``; returns (loss, grad norm) as device tensors."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        loss = dsm_loss(self.forward, x, self.sigma_min, self.sigma_max, self.noise_gen, self.autocast)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.args.grad_clip if self.args.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.ema.update(self.model.parameters())
        self.step += 1
        return loss.detach(), grad_norm.detach()

    def _first_step(self, x: torch.Tensor):
        """The first step, where torch.compile does its work; on failure fall back to eager once."""
        if self.forward is self.model:
            return self.train_step(x)
        try:
            return self.train_step(x)
        except Exception as err:  # noqa: BLE001 -- compile failures surface as many exception types
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                          "training continues in eager mode", stacklevel=2)
            self.forward = self.model
            self.optimizer.zero_grad(set_to_none=True)
            return self.train_step(x)

    def samples(self) -> Path | None:
        """Sample grid with the EMA weights; returns its path (None when disabled)."""
        if self.args.sample_steps <= 0 or self.args.num_samples <= 0:
            return None
        params = list(self.model.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        self.model.eval()
        gen = torch.Generator(self.device).manual_seed(self.args.seed + 2)
        size = self.config.data.image_size
        with self.autocast:
            images = pc_sample(self.model, (self.args.num_samples, 1, size, size), self.sigma_min, self.sigma_max,
                               self.args.sample_steps, gen, self.config.sampling.snr, self.device)
        self.model.train()
        self.ema.restore(params)
        path = self.args.run_dir / "samples" / f"step_{self.step:07d}_pc{self.args.sample_steps}.png"
        save_grid(images, path)
        return path

    def export(self, path: Path) -> None:
        """Write the EMA weights as a compact fp16 file (``models.export_weights``) with the run's facts as meta."""
        params = list(self.model.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        meta = {"step": self.step, "data": self.args.data, "plane": self.args.plane,
                "first_data_seed": self.args.first_data_seed, "train_minutes": round(self.elapsed / 60, 2),
                "device": device_name(self.device), "batch_size": self.args.batch_size,
                "sigma_max": self.sigma_max, "sigma_min": self.sigma_min}
        models.export_weights(path, self.model, self.config, meta=meta)
        self.ema.restore(params)

    def run(self, deadline: float, log: Callable[[dict], None]) -> str:
        """Train until ``max_steps`` or ``deadline`` (time.time()); returns why it stopped."""
        self.model.train()
        last_ckpt = time.time()
        interval_loss = torch.zeros((), device=self.device)
        interval_start, interval_steps = time.time(), 0
        bar = _progress(self.args.max_steps, self.step)
        reason = "max_steps"
        step_fn = self._first_step
        while self.step < self.args.max_steps:
            if time.time() > deadline:
                reason = "time budget"
                break
            start = time.time()
            x = self.data.batch(self.args.batch_size, self.data_gen)
            loss, grad_norm = step_fn(x)
            step_fn = self.train_step
            interval_loss += loss
            interval_steps += 1
            self.elapsed += time.time() - start
            bar.update(1)
            if self.step % self.args.log_every == 0 or self.step == self.args.max_steps:
                mean_loss = float(interval_loss) / interval_steps  # waits for the device, so the time below is real
                seconds = time.time() - interval_start
                record = {"step": self.step, "loss": mean_loss,
                          "lr": self.lr_at(self.step - 1), "grad_norm": float(grad_norm),
                          "samples_per_s": round(interval_steps * self.args.batch_size / max(seconds, 1e-9), 1),
                          "minutes": round(self.elapsed / 60, 3)}
                log(record)
                bar.set_postfix(loss=f"{record['loss']:.1f}", sps=record["samples_per_s"])
                interval_loss.zero_()
                interval_start, interval_steps = time.time(), 0
            if self.args.sample_every and self.step % self.args.sample_every == 0:
                self.samples()
            if time.time() - last_ckpt > 60 * self.args.ckpt_minutes:
                self.save()
                last_ckpt = time.time()
        bar.close()
        return reason


def _progress(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, mininterval=1.0 if sys.stderr.isatty() else 30.0,
                dynamic_ncols=True, desc="train")


def _sigma_max_report(args, config) -> float:
    source = DATA_SOURCES[args.data](args, config.data.image_size, torch.device(args.device))
    slices = source.batch(args.estimate_sigma_max, torch.Generator(args.device).manual_seed(args.seed))
    distance = max_pairwise_distance(slices)
    print(json.dumps({"data": args.data, "plane": args.plane, "slices": args.estimate_sigma_max,
                      "image_size": config.data.image_size, "max_pairwise_distance": round(distance, 2)}))
    return distance


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success."""
    args = build_parser().parse_args(argv)
    config = resolve(args)
    if args.estimate_sigma_max:
        _sigma_max_report(args, config)
        return 0
    call_start = time.time()
    deadline = math.inf if args.max_minutes is None else call_start + 60 * args.max_minutes - args.reserve_seconds
    if not args.resume and _checkpoint_steps(args.run_dir):
        raise ValueError(f"{args.run_dir} already holds checkpoints; pass --resume to continue it or use a new --run-dir")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args, config)
    if args.resume:
        trainer.resume()
    elif args.init_weights is not None:
        trainer.init_weights(args.init_weights)
    write_text(args.run_dir / "config.yaml", _yaml(config.to_dict()))
    first_step = trainer.step

    with open(args.run_dir / "log.jsonl", "a", encoding="utf-8") as handle:
        def log(record: dict) -> None:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(json.dumps(record), flush=True)

        reason = trainer.run(deadline, log)
    trainer.save()
    if args.export is not None:
        trainer.export(args.export)
    grid = trainer.samples()
    summary = {"argv": list(argv) if argv is not None else sys.argv[1:], "device": device_name(trainer.device),
               "torch": torch.__version__, "first_step": first_step, "last_step": trainer.step, "stopped": reason,
               "wall_minutes": round((time.time() - call_start) / 60, 2), "sample_grid": str(grid) if grid else None,
               "export": str(args.export) if args.export else None}
    with open(args.run_dir / "calls.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(summary) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
