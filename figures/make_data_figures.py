"""Figures of the training data: CT phantoms from held-out seeds, augmented MRI template volumes, and
samples of the domain-randomised training distributions (CT and MRI).

Run from the repository root: ``python figures/make_data_figures.py`` writes
``figures/ct_phantoms.png``, ``figures/mri_augmentations.png``, ``figures/ct_training_distribution.png``
and ``figures/mri_training_distribution.png`` (the MRI figures need the MNI152 template that nilearn
ships); ``--only NAME`` writes one of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import ct_phantom, ct_randomize, mri
from utils.volume import hu_to_unit

SEEDS = (ct_phantom.EVAL_SEEDS[0], ct_phantom.EVAL_SEEDS[1], ct_phantom.EVAL_SEEDS[2])


def _panel(ax, image, title, fontsize=8, **kw):
    ax.imshow(image, cmap="gray", **kw)
    ax.set_title(title, fontsize=fontsize)
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


def ct_training_figure(path: Path, seeds=range(24)) -> None:
    """One axial slice of each of 24 domain-randomised training volumes (``--data phantom-dr``), as the prior sees it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 6, figsize=(9.0, 6.9))
    for ax, seed in zip(axes.flat, seeds):
        hu, plan = ct_randomize.randomized_volume(seed, (16, 128, 128))
        noise = f" n{plan['noise_hu']:.0f}" if plan.get("noise") else ""
        _panel(ax, hu_to_unit(hu[8]).numpy(), f"{plan['region']} {plan['spacing'][0]:.1f}mm{noise}", 7, vmin=0, vmax=1)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=60)
    plt.close(fig)


def mri_training_figure(path: Path, seeds=range(12)) -> None:
    """Coronal planes (the ZSR prior's) of 12 training volumes with the appearance changes (``--data mri-dr``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    template, meta = mri.load_template()
    augment = mri.MRIAugmenter(template, meta, appearance=mri.MRIAppearance())
    fig, axes = plt.subplots(2, 6, figsize=(9.0, 3.5))
    for ax, seed in zip(axes.flat, seeds):
        _panel(ax, augment(seed)[:, 68, :].numpy(), f"training seed {seed}", 7, vmin=0, vmax=1)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=60)
    plt.close(fig)


FIGURES = {"ct_phantoms": ct_figure, "mri_augmentations": mri_figure,
           "ct_training_distribution": ct_training_figure, "mri_training_distribution": mri_training_figure}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the data figures into figures/.")
    parser.add_argument("--only", choices=sorted(FIGURES), default=None, help="write only this figure")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in [args.only] if args.only else FIGURES:
        FIGURES[name](ROOT / "figures" / f"{name}.png")
        print(f"wrote figures/{name}.png")
