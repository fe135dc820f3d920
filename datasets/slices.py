"""2D training slices: from NIfTI volumes, from CT volumes made on the fly (the chest phantoms, or the
domain-randomised CT of ``datasets.ct_randomize``), or from the augmented MRI template.

Every source yields single-channel slices ``[1, S, S]`` in [0, 1] at the training size ``S``:
CT intensities are clamped to [-1000, 1600] HU and mapped linearly to [0, 1]; MRI is min-max
normalised per volume. The plane is an option: ``axial`` slices are ``volume[k]`` (y, x) for CT;
``coronal`` slices ``volume[:, j, :]`` (z, x) and ``sagittal`` slices ``volume[:, :, i]`` (z, y) contain
z, as the prior for z-axis super-resolution needs. Slices are resized in-plane with antialiasing.

The on-the-fly pools keep a set of volumes' slices on the training device, replace the oldest volume
every ``refresh_every`` batches with the next seed, and can be saved and restored exactly (the pool
is rebuilt from its seed position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from datasets import ct_phantom, ct_randomize, mri
from utils.volume import hu_to_unit, min_max

PLANES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "axial": lambda v: v.unsqueeze(1),
    "coronal": lambda v: v.permute(1, 0, 2).unsqueeze(1),
    "sagittal": lambda v: v.permute(2, 0, 1).unsqueeze(1),
}
# A constant volume is refused by "minmax" here as at inference (utils.volume.min_max), so both see one mapping.
INTENSITY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"ct": hu_to_unit, "minmax": min_max}


def volume_to_slices(volume: torch.Tensor, plane: str, size: int) -> torch.Tensor:
    """Slice stack ``[N, 1, size, size]`` of a ``[D, H, W]`` volume in the given plane, resized with antialiasing."""
    if plane not in PLANES:
        raise ValueError(f"plane {plane!r}: accepted planes are {sorted(PLANES)}")
    stack = PLANES[plane](volume)
    if tuple(stack.shape[-2:]) != (size, size):
        stack = F.interpolate(stack, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return stack.contiguous()


class NiftiSlices(torch.utils.data.Dataset):
    """All slices of some volume files, held in memory.

    Args:
        paths: volume files (anything ``utils.io.read_volume`` reads).
        plane: ``axial``, ``coronal`` or ``sagittal``.
        size: training size S (slices are resized to S x S).
        intensity: ``ct`` (HU clamp and map) or ``minmax`` (per volume; a constant volume is refused
            with a ValueError naming its file, as at inference).
    """

    def __init__(self, paths: Sequence[str | Path], plane: str = "axial", size: int = 128,
                 intensity: str = "ct"):
        from utils.io import read_volume

        if intensity not in INTENSITY:
            raise ValueError(f"intensity {intensity!r}: accepted values are {sorted(INTENSITY)}")
        if not paths:
            raise ValueError("NiftiSlices: no volume files given; at least one path is accepted")
        stacks = []
        for path in paths:
            try:
                unit = INTENSITY[intensity](torch.from_numpy(read_volume(path)[0]))
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            stacks.append(volume_to_slices(unit, plane, size))
        self.slices = torch.cat(stacks)

    def __len__(self) -> int:
        return self.slices.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.slices[index]

    def to(self, device: str | torch.device) -> NiftiSlices:
        """Move the slices to ``device`` (where :meth:`batch` returns them); returns self."""
        self.slices = self.slices.to(device)
        return self

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``batch_size`` slices ``[B, 1, S, S]`` drawn uniformly (with replacement) with ``generator``."""
        index = torch.randint(len(self), (batch_size,), generator=generator, device=generator.device)
        return self.slices[index.to(self.slices.device)]

    def state_dict(self) -> dict[str, int]:
        """Nothing to save: the slices are fixed and the draws come from the caller's generator."""
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""


class SlicePool:
    """Slices of ``pool_size`` generated volumes kept on ``device``; subclasses say how a volume is made.

    Args:
        pool_size: number of volumes in the pool.
        refresh_every: batches between replacing the oldest volume with the next seed (0: never).
        size: training size S.
        first_seed: seed of the first volume; the i-th volume ever made uses ``first_seed + i``,
            and every seed is checked against the source's training range.
        device: where volumes are made and kept.
    """

    check_seed: Callable[[int], int]  # each subclass names its source's training-seed check

    def __init__(self, pool_size: int = 32, refresh_every: int = 8, size: int = 128, first_seed: int = 0,
                 device: str | torch.device | None = None):
        if pool_size < 1 or refresh_every < 0:
            raise ValueError(f"pool_size={pool_size}, refresh_every={refresh_every}: "
                             "pool_size >= 1 and refresh_every >= 0 are accepted")
        self.pool_size, self.refresh_every, self.size = pool_size, refresh_every, size
        self.first_seed, self.device = first_seed, torch.device(device or "cpu")
        self.batches = 0
        self._fill(0)

    def make_volume_slices(self, seed: int) -> torch.Tensor:
        """Slices ``[N, 1, S, S]`` in [0, 1] of the volume of ``seed`` (N the same for every seed)."""
        raise NotImplementedError

    def _add_volume(self) -> None:
        """Make the next volume and put it in the slot of the oldest one (ring order)."""
        stack = self.make_volume_slices(self.check_seed(self.first_seed + self.made))
        self.pool[self.made % self.pool_size] = stack
        self.made += 1

    def _fill(self, made_before: int) -> None:
        self.made = made_before
        first = self.make_volume_slices(self.check_seed(self.first_seed + self.made))
        self.pool = first.new_empty((self.pool_size,) + tuple(first.shape))
        self.pool[self.made % self.pool_size] = first
        self.made += 1
        for _ in range(self.pool_size - 1):
            self._add_volume()

    @property
    def seeds(self) -> list[int]:
        """Seeds of the volumes now in the pool, oldest first."""
        return list(range(self.first_seed + self.made - self.pool_size, self.first_seed + self.made))

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``batch_size`` slices ``[B, 1, S, S]`` drawn uniformly from the pool with ``generator``.

        A generator on the pool's device keeps the draw free of host-device synchronisation.
        """
        if self.refresh_every and self.batches and self.batches % self.refresh_every == 0:
            self._add_volume()
        self.batches += 1
        volume = torch.randint(self.pool_size, (batch_size,), generator=generator, device=generator.device)
        index = torch.randint(self.pool.shape[1], (batch_size,), generator=generator, device=generator.device)
        return self.pool[volume.to(self.device), index.to(self.device)]

    def state_dict(self) -> dict[str, int]:
        """Seed position and batch count: enough to rebuild the same pool."""
        return {"first_seed": self.first_seed, "made": self.made, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Rebuild the pool exactly as it was when ``state`` was saved."""
        self.first_seed, self.batches = int(state["first_seed"]), int(state["batches"])
        self._fill(int(state["made"]) - self.pool_size)


class PhantomSlices(SlicePool):
    """Axial slices of CT phantoms made on the fly (``datasets.ct_phantom``, training seeds only).

    Each volume is ``depth`` axial slices of ``FOV_MM`` x ``FOV_MM`` covering z = -192 .. +192 mm
    (the whole phantom anatomy), rendered directly at the training size.
    """

    check_seed = staticmethod(ct_phantom.check_train_seed)

    def __init__(self, *args, depth: int = 64, **kwargs):
        self.depth = depth
        super().__init__(*args, **kwargs)

    def make_volume_slices(self, seed: int) -> torch.Tensor:
        hu, _ = ct_phantom.whole_phantom(seed, (self.depth, self.size, self.size), self.device)
        return volume_to_slices(hu_to_unit(hu), "axial", self.size)


class RandomizedCTSlices(SlicePool):
    """Axial slices of domain-randomised CT volumes (``datasets.ct_randomize``, training seeds only).

    Each volume is ``depth`` axial slices at the training size; ``settings`` are the randomisation's ranges.
    """

    check_seed = staticmethod(ct_phantom.check_train_seed)

    def __init__(self, *args, depth: int = 64,
                 settings: ct_randomize.CTRandomization = ct_randomize.CTRandomization(), **kwargs):
        self.depth, self.settings = depth, settings
        super().__init__(*args, **kwargs)

    def make_volume_slices(self, seed: int) -> torch.Tensor:
        hu, _ = ct_randomize.randomized_volume(seed, (self.depth, self.size, self.size), self.device, self.settings)
        return volume_to_slices(hu_to_unit(hu), "axial", self.size)


class MRISlices(SlicePool):
    """Slices (a plane containing z by default) of augmented MRI template volumes (training seeds only).

    ``template`` is the template file (default: the one inside nilearn; see ``mri.load_template``);
    ``appearance`` adds contrast, bias, resolution and noise changes (``mri.MRIAppearance``).
    """

    check_seed = staticmethod(mri.check_train_seed)

    def __init__(self, *args, plane: str = "coronal", template: str | Path | None = None,
                 appearance: mri.MRIAppearance | None = None, **kwargs):
        if plane not in PLANES:
            raise ValueError(f"plane {plane!r}: accepted planes are {sorted(PLANES)}")
        self.plane = plane
        device = torch.device(kwargs.get("device") or "cpu")
        template, meta = mri.load_template(template, device)
        self.augmenter = mri.MRIAugmenter(template, meta, appearance=appearance)
        super().__init__(*args, **kwargs)

    def make_volume_slices(self, seed: int) -> torch.Tensor:
        return volume_to_slices(self.augmenter(seed), self.plane, self.size)
