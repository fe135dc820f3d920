"""Network precisions: the one table of names and the autocast region that each name means."""

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Precision name -> compute dtype of the network (fp32 runs as is; the others under autocast)."""


def default_precision(device) -> str:
    """The precision a device runs by default: bf16 on CUDA, fp32 on the CPU, where bf16 is far slower."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def check_precision(name) -> str:
    """name if it is a key of PRECISIONS, else a one-line ValueError naming the accepted names."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def autocast(device_type: str, precision: str, cache_enabled: bool = True):
    """The autocast region of a precision on a device type ("cuda", "cpu"); fp32 disables autocast.

    Args:
        device_type: torch device type of the tensors.
        precision: a key of PRECISIONS.
        cache_enabled: autocast's weight-cast cache (off where a CUDA graph replays the region).
    """
    dtype = PRECISIONS[check_precision(precision)]
    low = dtype != torch.float32
    return torch.autocast(
        device_type, dtype=dtype if low else torch.bfloat16, enabled=low, cache_enabled=cache_enabled
    )
