"""Entry-point support: volume I/O with geometry, metrics, figures, results folders, the shared CLI."""

from utils.io import read_volume, write_volume

__all__ = ["read_volume", "write_volume"]
