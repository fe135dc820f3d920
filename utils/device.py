"""The compute device: the default choice, its readable name, and waiting for its queued work."""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path
from typing import Union

import torch

DeviceLike = Union[str, torch.device]


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from ``cpuinfo`` (Linux), else what :mod:`platform` knows, else ``cpu``."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: DeviceLike) -> str:
    """A readable name of the compute device: the GPU model for CUDA, else the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def synchronize(device: DeviceLike) -> None:
    """Wait until the device's queued work has finished, so that a host clock measures it (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def on_device(tensor: torch.Tensor):
    """A context in which CUDA work that names no device (Triton launches, CUDA graph capture,
    new streams) goes to ``tensor``'s GPU rather than the current one (no-op for CPU tensors)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def on_input_device(fn):
    """fn, run under on_device(its first argument): for launchers, such as Triton's, that launch
    on the current device."""

    @functools.wraps(fn)
    def run(tensor, *args, **kwargs):
        with on_device(tensor):
            return fn(tensor, *args, **kwargs)

    return run
