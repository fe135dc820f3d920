"""Figures of the training data: CT phantoms from held-out seeds and augmented MRI template volumes.

Run from the repository root: ``python figures/make_data_figures.py`` writes
``figures/ct_phantoms.png`` and ``figures/mri_augmentations.png`` (the MRI figure needs the
MNI152 template that nilearn ships).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import ct_phantom, mri

SEEDS = (ct_phantom.EVAL_SEEDS[0], ct_phantom.EVAL_SEEDS[1], ct_phantom.EVAL_SEEDS[2])


def _panel(ax, image, title, **kw):
    ax.imshow(image, cmap="gray", **kw)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def ct_figure(path: Path) -> None:
    """Axial (soft-tissue and lung window), coronal and sagittal mid-slices of three held-out phantoms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SEEDS), 4, figsize=(10, 2.6 * len(SEEDS)))
    soft, lung = {"vmin": -160, "vmax": 240}, {"vmin": -1000, "vmax": 200}
    for row, seed in zip(axes, SEEDS):
        hu = ct_phantom.generate_phantom(seed, (128, 128, 128)).numpy()
        _panel(row[0], hu[80], f"seed {seed}: axial z=+50 mm", **soft)
        _panel(row[1], hu[95], "axial z=+95 mm (lung window)", **lung)
        _panel(row[2], hu[:, 64, :][::-1], "coronal", **soft)
        _panel(row[3], hu[:, :, 64][::-1], "sagittal", **soft)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def mri_figure(path: Path) -> None:
    """Coronal slices (the prior's plane) of the template and of augmented volumes (training and held-out seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    template, meta = mri.load_template()
    augment = mri.MRIAugmenter(template, meta)
    seeds = (0, 1, 2, mri.DEMO_SEED)
    fig, axes = plt.subplots(2, len(seeds), figsize=(2.6 * len(seeds), 5.4))
    for col, seed in enumerate(seeds):
        volume = augment(seed)
        label = "held-out demo" if seed == mri.DEMO_SEED else "training"
        _panel(axes[0, col], volume[:, 68, :], f"seed {seed} ({label}): coronal", vmin=0, vmax=1)
        _panel(axes[1, col], volume[:, :, 64], "sagittal", vmin=0, vmax=1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    torch.set_num_threads(2)
    ct_figure(ROOT / "figures" / "ct_phantoms.png")
    mri_figure(ROOT / "figures" / "mri_augmentations.png")
    print("wrote figures/ct_phantoms.png and figures/mri_augmentations.png")
