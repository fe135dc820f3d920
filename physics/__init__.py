"""Measurement operators, noise models and classical baselines for cone-beam CT and MRI ZSR.

Every operator keeps the :class:`LinearOperator` contract: ``A``, ``A_adjoint`` (the exact adjoint),
``A_dagger``, and explicit shapes. Named pseudo-inverses for DDNM live in ``PSEUDO_INVERSES``;
:func:`to_deepinv` shows an operator to deepinv (imported only there).
"""

from physics.cone_beam import LAYOUTS, ConeBeamCT
from physics.deepinv_adapter import to_deepinv
from physics.fdk import WINDOWS as FDK_WINDOWS
from physics.fdk import fdk
from physics.geometry import ConeBeamGeometry, select_views
from physics.iterative import SIRTWeights, cgls, sirt, sirt_weights
from physics.noise import NOISE_MODELS, GaussianNoise, NoiseFree, PoissonNoise, noise_from_sino_noise, snr_db
from physics.operator import CountingOperator, LinearOperator
from physics.pinv import (
    PSEUDO_INVERSES,
    CGPseudoInverse,
    ExactPseudoInverse,
    OperatorPseudoInverse,
    PseudoInverse,
    SIRTPseudoInverse,
    make_pseudo_inverse,
)
from physics.zsr import SlabAverage, ZAxisSuperResolution, slab_weights

__all__ = [
    "CGPseudoInverse",
    "ConeBeamCT",
    "ConeBeamGeometry",
    "CountingOperator",
    "ExactPseudoInverse",
    "FDK_WINDOWS",
    "GaussianNoise",
    "LAYOUTS",
    "LinearOperator",
    "NOISE_MODELS",
    "NoiseFree",
    "OperatorPseudoInverse",
    "PSEUDO_INVERSES",
    "PoissonNoise",
    "PseudoInverse",
    "SIRTPseudoInverse",
    "SIRTWeights",
    "ZAxisSuperResolution",
    "SlabAverage",
    "slab_weights",
    "cgls",
    "fdk",
    "make_pseudo_inverse",
    "noise_from_sino_noise",
    "select_views",
    "sirt",
    "sirt_weights",
    "snr_db",
    "to_deepinv",
]
