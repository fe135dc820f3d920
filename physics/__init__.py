"""Measurement operators, noise models and classical baselines for cone-beam CT and MRI ZSR.

Every operator offers ``A``, ``A_adjoint`` (the exact adjoint) and ``A_dagger``.
"""

from physics.cone_beam import ConeBeamCT
from physics.fdk import WINDOWS as FDK_WINDOWS
from physics.fdk import fdk
from physics.geometry import ConeBeamGeometry, select_views
from physics.iterative import cgls, sirt
from physics.noise import NOISE_MODELS, GaussianNoise, NoiseFree, PoissonNoise, noise_from_sino_noise, snr_db
from physics.zsr import ZAxisSuperResolution

__all__ = [
    "ConeBeamCT",
    "ConeBeamGeometry",
    "FDK_WINDOWS",
    "GaussianNoise",
    "NOISE_MODELS",
    "NoiseFree",
    "PoissonNoise",
    "ZAxisSuperResolution",
    "cgls",
    "fdk",
    "noise_from_sino_noise",
    "select_views",
    "sirt",
    "snr_db",
]
