"""Score models: NCSN++ (score_sde layout), configs, checkpoints, EMA, the VE-SDE and the slice denoiser."""

from models.checkpoint import export_weights, load_score_model, save_checkpoint
from models.config import SCHEMA, load_config
from models.denoiser import Denoiser, bytes_per_slice
from models.ema import ExponentialMovingAverage
from models.ncsnpp import MODELS, NCSNpp, build_model
from models.sde import VESDE

__all__ = [
    "MODELS",
    "SCHEMA",
    "VESDE",
    "Denoiser",
    "ExponentialMovingAverage",
    "NCSNpp",
    "build_model",
    "bytes_per_slice",
    "export_weights",
    "load_config",
    "load_score_model",
    "save_checkpoint",
]
