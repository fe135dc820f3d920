"""Score models: NCSN++ (score_sde layout), configs, checkpoints, EMA, the VE-SDE and the slice denoiser."""

from models.checkpoint import (
    UnsafeCheckpointError,
    atomic_save,
    export_weights,
    load_score_model,
    read_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)
from models.config import SCHEMA, load_config
from models.denoiser import Denoiser, DenoiserMemoryError, check_slice_batch, should_compile
from models.ema import ExponentialMovingAverage
from models.ncsnpp import MODELS, NCSNpp, build_model
from models.precision import PRECISIONS, autocast, check_precision
from models.sde import VESDE, ve_sigma

__all__ = [
    "MODELS",
    "PRECISIONS",
    "SCHEMA",
    "VESDE",
    "Denoiser",
    "DenoiserMemoryError",
    "ExponentialMovingAverage",
    "NCSNpp",
    "UnsafeCheckpointError",
    "atomic_save",
    "autocast",
    "build_model",
    "check_precision",
    "check_slice_batch",
    "export_weights",
    "load_config",
    "load_score_model",
    "read_checkpoint",
    "save_checkpoint",
    "should_compile",
    "strip_module_prefix",
    "ve_sigma",
]
