"""Lazy build of the fused CUDA kernels, with one warning and the torch path when the build fails;
and when the Triton kernels for channels_last tensors run (imported on first use, never required)."""

import functools
import importlib
import os
import threading
import warnings
from pathlib import Path

import torch

FORCE_TORCH_ENV = "ISCS_OPS_FORCE_TORCH"
"""Environment variable: set to 1 to use the pure-torch path everywhere, even on CUDA tensors."""

_SOURCES = ("bindings.cpp", "upfirdn2d_kernel.cu", "fused_bias_act_kernel.cu")
_lock = threading.Lock()
_built = {}


def torch_path_forced() -> bool:
    """True when ISCS_OPS_FORCE_TORCH is set to anything but '' or '0'."""
    return os.environ.get(FORCE_TORCH_ENV, "") not in ("", "0")


def is_compiling() -> bool:
    """True while torch.compile traces, where the traceable torch path must be used."""
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_compiling", None)
    if check is None:
        from torch import _dynamo

        check = _dynamo.is_compiling
    return bool(check())


def load_extension():
    """The compiled kernel module, built with ninja on first use and cached; None if it cannot be built.

    The build runs only when a CUDA tensor first reaches a fused op, never at import. A failed build
    is reported by a single RuntimeWarning and not retried in this process.
    """
    with _lock:
        if "module" not in _built:
            _built["module"] = _build()
        return _built["module"]


def _build():
    try:
        from torch.utils.cpp_extension import load

        here = Path(__file__).resolve().parent
        return load(
            name="iscs_fused_ops",
            sources=[str(here / name) for name in _SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"],
            verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 -- any build failure means: use the torch path
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        warnings.warn(
            f"op: the CUDA kernels could not be built ({type(exc).__name__}: {reason}); "
            "upfirdn2d and fused_bias_act use the pure-torch path",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def use_cuda_kernels(x: torch.Tensor) -> bool:
    """True when a fused op on x runs its CUDA kernel (CUDA tensor, kernel dtype, no tracing, not forced)."""
    return (
        not is_compiling()
        and x.is_cuda
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and not torch_path_forced()
        and load_extension() is not None
    )


def no_autocast(x: torch.Tensor):
    """A context in which ops on x run in x's own dtype, whatever autocast region surrounds it."""
    return torch.autocast(device_type=x.device.type, enabled=False)


TRITON_MIN_CAPABILITY = (7, 0)
"""Oldest CUDA compute capability Triton generates code for."""

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""Dtypes of the Triton kernels for channels_last tensors."""


@functools.lru_cache(maxsize=None)
def triton_kernels(name: str):
    """The module op.<name> of Triton kernels, or None where Triton cannot be imported."""
    try:
        return importlib.import_module(f"op.{name}")
    except ImportError:
        return None


def triton_supported(device) -> bool:
    """Whether the Triton kernels for channels_last tensors run on the device: CUDA of compute
    capability TRITON_MIN_CAPABILITY or newer, Triton importable, ISCS_OPS_FORCE_TORCH not set."""
    device = torch.device(device)
    return (
        device.type == "cuda"
        and not torch_path_forced()
        and triton_kernels("channels_last_triton") is not None
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device) >= TRITON_MIN_CAPABILITY
    )


def use_channels_last_kernels(x: torch.Tensor) -> bool:
    """True when an op on x runs its Triton kernel: a 4-D channels_last tensor of TRITON_DTYPES
    on a device of triton_supported, not while torch.compile traces."""
    return (
        x.is_cuda
        and x.dim() == 4
        and x.dtype in TRITON_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and not is_compiling()
        and triton_supported(x.device)
    )


def use_inference_kernels(x: torch.Tensor) -> bool:
    """use_channels_last_kernels(x) where autograd records nothing: the Triton GroupNorm and
    residual-sum kernels have no backward."""
    return not torch.is_grad_enabled() and use_channels_last_kernels(x)
