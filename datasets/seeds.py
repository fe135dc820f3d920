"""Disjoint seed ranges for training and held-out evaluation, and the check every training draw passes."""

from __future__ import annotations


def check_seed(seed: int, train: range, held_out: range, what: str) -> int:
    """Return ``seed`` if it lies in ``train``; raise for a held-out seed or one outside both ranges.

    Args:
        seed: the seed to check.
        train, held_out: the disjoint training and evaluation ranges.
        what: what the seed picks (e.g. "phantom seed"), for the error message.

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` is held out or outside the training range.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"{what} {seed!r} is a {type(seed).__name__}; an int is accepted")
    if seed in held_out:
        raise ValueError(f"{what} {seed} is a held-out evaluation seed (EVAL_SEEDS {held_out}); "
                         f"training accepts seeds in {train}")
    if seed not in train:
        raise ValueError(f"{what} {seed} is outside TRAIN_SEEDS {train}")
    return seed
