"""Shared test settings: CPU only, deterministic, few threads (CI has 2 cores)."""

import os

import pytest
import torch

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True, warn_only=True)

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture
def gen():
    """A seeded CPU generator: the only source of randomness in a test."""
    return torch.Generator().manual_seed(1234)
