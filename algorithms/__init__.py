"""Reconstruction algorithms: the sampler, data consistency, re-noising, noise sources, solvers.

Public entry points: :func:`reconstruct` (what the entry scripts call) with its
:class:`SamplerConfig`, :func:`sample` (the one sampler loop) and its :class:`Step` interface,
:func:`get_sigmas`, the data-consistency steps :class:`DDSConsistency` and :class:`DDNMConsistency`
(run by :class:`ConsistencyStep`), the registries ``RENOISE`` and ``NOISE_SOURCES``, the one
conjugate-gradient solver :func:`conjugate_gradient` and the ADMM-TV baseline :func:`admm_tv`.
"""

from .admm_tv import admm_tv
from .cg import conjugate_gradient
from .consistency import DDNMConsistency, DDSConsistency
from .noise import (
    NOISE_ALIASES,
    NOISE_SOURCES,
    Ar1Noise,
    IidNoise,
    IscsNoise,
    SharedNoise,
    iscs_angles,
    make_noise,
)
from .renoise import RENOISE, EtaRenoise, make_renoise
from .sampler import ConsistencyStep, SamplerConfig, Step, get_sigmas, reconstruct, sample

__all__ = [
    "admm_tv",
    "conjugate_gradient",
    "DDSConsistency",
    "DDNMConsistency",
    "NOISE_SOURCES",
    "NOISE_ALIASES",
    "IidNoise",
    "IscsNoise",
    "SharedNoise",
    "Ar1Noise",
    "iscs_angles",
    "make_noise",
    "RENOISE",
    "EtaRenoise",
    "make_renoise",
    "ConsistencyStep",
    "SamplerConfig",
    "Step",
    "get_sigmas",
    "reconstruct",
    "sample",
]
