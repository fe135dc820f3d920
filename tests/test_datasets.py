"""Phantoms, MRI augmentation, slice datasets and the smooth-field helper."""

import pytest
import torch

from datasets import ct_phantom, mri
from datasets.fields import bspline_matrix, interpolate_grid
from datasets.slices import (
    MRISlices,
    NiftiSlices,
    PhantomSlices,
    hu_to_unit,
    minmax_to_unit,
    volume_to_slices,
)

SMALL = (24, 64, 64)


@pytest.fixture(scope="module")
def labelled():
    """One phantom over the whole anatomy (z = -192 .. +192 mm) with its label map."""
    return ct_phantom.generate_phantom(7, (64, 128, 128), (3.0, 3.0, 6.0), return_labels=True)


def test_phantom_same_seed_same_volume_and_seeds_differ():
    a = ct_phantom.generate_phantom(5, SMALL)
    b = ct_phantom.generate_phantom(5, SMALL)
    c = ct_phantom.generate_phantom(6, SMALL)
    assert a.shape == SMALL and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 20.0


def test_phantom_anatomy_does_not_depend_on_the_window():
    """A window of slices rendered on its own equals the same slices of a larger volume."""
    spacing = (6.0, 6.0, 6.0)
    whole = ct_phantom.generate_phantom(11, (16, 64, 64), spacing, z_center=0.0)  # z = -45 .. +45 mm
    window = ct_phantom.generate_phantom(11, (8, 64, 64), spacing, z_center=-12.0)  # z = -33 .. +9 mm
    assert torch.allclose(window, whole[2:10], atol=1.0)


def test_phantom_tissue_hu_ranges(labelled):
    hu, labels = labelled
    assert labels.shape == hu.shape and labels.dtype == torch.uint8
    required = {"fat", "muscle", "lung", "lung_vessel", "myocardium", "contrast_blood", "liver", "kidney",
                "cortical_bone", "trabecular_bone", "disc", "rib", "canal", "air"}
    present = set()
    for name, (label, (low, high)) in ct_phantom.TISSUES.items():
        values = hu[labels == label]
        if values.numel() < 20:
            continue
        present.add(name)
        median = float(values.median())
        assert low <= median <= high, f"{name}: median {median:.0f} HU outside [{low}, {high}]"
    assert required <= present, f"missing tissues: {required - present}"
    assert float(hu.min()) >= -1030 and float(hu.max()) <= 1500


def test_phantom_z_variation(labelled):
    """Neighbouring slices differ yet correlate strongly; far-apart slices correlate less."""
    hu = ct_phantom.generate_phantom(3, (48, 64, 64), (6.0, 6.0, 3.0), z_center=20.0)
    flat = hu.flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    corr = (flat[:-1] * flat[1:]).sum(1) / (flat[:-1].norm(dim=1) * flat[1:].norm(dim=1))
    far = (flat[:-30] * flat[30:]).sum(1) / (flat[:-30].norm(dim=1) * flat[30:].norm(dim=1))
    step = (hu[1:] - hu[:-1]).abs().mean(dim=(1, 2))
    assert float(corr.mean()) > 0.9
    assert float(far.mean()) < float(corr.mean()) - 0.1
    assert float(step.min()) > 1.0 and float(step.mean()) > 5.0


def test_phantom_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        ct_phantom.generate_phantom(1, (0, 8, 8))
    with pytest.raises(ValueError, match="spacing"):
        ct_phantom.generate_phantom(1, (2, 8, 8), (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="seed"):
        ct_phantom.generate_phantom(-1, (2, 8, 8))


@pytest.mark.parametrize("module", [ct_phantom, mri])
def test_seed_ranges_are_disjoint_and_enforced(module):
    train, held_out = set(module.TRAIN_SEEDS), set(module.EVAL_SEEDS)
    assert not train & held_out and module.DEMO_SEED in held_out
    assert module.check_train_seed(module.TRAIN_SEEDS[-1]) == module.TRAIN_SEEDS[-1]
    for seed in (module.EVAL_SEEDS[0], module.EVAL_SEEDS[-1], module.DEMO_SEED):
        with pytest.raises(ValueError, match="held-out"):
            module.check_train_seed(seed)
    with pytest.raises(ValueError, match="outside"):
        module.check_train_seed(-1)


def test_phantom_pool_never_draws_an_eval_seed(gen):
    """A pool that would run into EVAL_SEEDS stops with an error instead of using one."""
    last = ct_phantom.TRAIN_SEEDS[-1]
    pool = PhantomSlices(pool_size=2, refresh_every=1, size=16, first_seed=last - 1, depth=4)
    assert pool.seeds == [last - 1, last]
    pool.batch(2, gen)
    with pytest.raises(ValueError, match="held-out"):
        pool.batch(2, gen)
    with pytest.raises(ValueError, match="held-out"):
        PhantomSlices(pool_size=1, size=16, first_seed=ct_phantom.DEMO_SEED, depth=4)


def test_slice_pool_state_round_trip(gen):
    pool = PhantomSlices(pool_size=2, refresh_every=2, size=16, first_seed=40, depth=4)
    for _ in range(5):
        pool.batch(3, gen)
    state = pool.state_dict()
    restored = PhantomSlices(pool_size=2, refresh_every=2, size=16, first_seed=0, depth=4)
    restored.load_state_dict(state)
    assert restored.seeds == pool.seeds and torch.equal(restored.pool, pool.pool)
    gen_state = gen.get_state()
    expected = [pool.batch(3, gen) for _ in range(3)]
    gen.set_state(gen_state)
    assert all(torch.equal(restored.batch(3, gen), e) for e in expected)
    assert pool.pool.min() >= 0 and pool.pool.max() <= 1


def test_planes_and_resizing():
    volume = torch.arange(4 * 4 * 4, dtype=torch.float32).reshape(4, 4, 4)
    axial, coronal, sagittal = (volume_to_slices(volume, plane, 4) for plane in ("axial", "coronal", "sagittal"))
    assert axial.shape == coronal.shape == sagittal.shape == (4, 1, 4, 4)
    assert torch.equal(axial[1, 0], volume[1])
    assert torch.equal(coronal[2, 0], volume[:, 2, :])
    assert torch.equal(sagittal[3, 0], volume[:, :, 3])
    assert volume_to_slices(torch.zeros(3, 32, 32), "axial", 8).shape == (3, 1, 8, 8)
    constant = volume_to_slices(torch.full((2, 32, 32), 0.25), "axial", 8)
    assert torch.allclose(constant, torch.full_like(constant, 0.25))
    with pytest.raises(ValueError, match="plane"):
        volume_to_slices(volume, "oblique", 4)


def test_intensity_maps():
    hu = torch.tensor([-2000.0, -1000.0, 300.0, 1600.0, 3000.0])
    assert torch.allclose(hu_to_unit(hu), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.allclose(minmax_to_unit(torch.tensor([2.0, 4.0, 6.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_nifti_slices_from_a_written_phantom(tmp_path, gen):
    from utils.io import write_volume

    hu = ct_phantom.generate_phantom(2, (6, 32, 32))
    path = write_volume(tmp_path / "p.nii.gz", hu.round().to(torch.int16).numpy(),
                        ct_phantom.phantom_meta((6, 32, 32)))
    data = NiftiSlices([path, path], plane="axial", size=16, intensity="ct")
    assert len(data) == 12 and data[0].shape == (1, 16, 16)
    assert data.batch(5, gen).shape == (5, 1, 16, 16)
    full = NiftiSlices([path], plane="axial", size=32)
    assert torch.allclose(full.slices[:, 0], hu_to_unit(hu.round()), atol=1e-6)


def test_bspline_matrix_reproduces_linear_functions():
    coords = torch.linspace(10.0, 30.0, 41, dtype=torch.float64)
    matrix = bspline_matrix(coords, 0.0, 4.0, 11)
    assert torch.allclose(matrix.sum(1), torch.ones(41, dtype=torch.float64))
    control = 3.0 + 0.5 * (4.0 * torch.arange(11, dtype=torch.float64))
    assert torch.allclose(matrix @ control, 3.0 + 0.5 * coords)
    grid = torch.full((3, 4, 5), 2.0)
    out = interpolate_grid(grid, [bspline_matrix(torch.linspace(0, 1, n), 0.0, 0.5, k)
                                  for n, k in ((6, 3), (7, 4), (8, 5))])
    assert out.shape == (6, 7, 8) and torch.allclose(out, torch.full_like(out, 2.0))


def _template_or_skip():
    try:
        return mri.load_template()
    except FileNotFoundError as err:
        pytest.skip(f"MNI152 template unavailable ({err}); `pip install --no-deps nilearn` provides it")


@pytest.fixture(scope="module")
def augmenter():
    template, meta = _template_or_skip()
    return mri.MRIAugmenter(template, meta, shape=(32, 32, 32), spacing=6.0)


def test_mri_augmentation_deterministic_and_normalised(augmenter):
    a, b, c = augmenter(3), augmenter(3), augmenter(4)
    assert a.shape == (32, 32, 32)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.01
    for v in (a, c):
        assert float(v.min()) == 0.0 and float(v.max()) == 1.0
    meta = augmenter.output_meta()
    assert meta["spacing"] == (6.0, 6.0, 6.0) and len(meta["direction"]) == 9


def test_mri_pool_uses_training_seeds_only(gen):
    _template_or_skip()
    pool = MRISlices(pool_size=1, refresh_every=0, size=16, first_seed=5, plane="sagittal")
    assert pool.seeds == [5] and pool.batch(4, gen).shape == (4, 1, 16, 16)
    with pytest.raises(ValueError, match="held-out"):
        MRISlices(pool_size=1, size=16, first_seed=mri.DEMO_SEED)


def test_mri_volumes_are_lpi_and_geometrically_placed():
    """Without geometric jitter, each output voxel shows the template at the same physical point (LPI axes)."""
    template, meta = _template_or_skip()
    still = mri.MRIAugmenter(template, meta, shape=(24, 24, 24), spacing=8.0, deform_mm=0.0, rotate_deg=0.0,
                             scale=0.0, shift_mm=0.0)
    out, out_meta = still(9), still.output_meta()
    assert out_meta["direction"] == mri.LPI
    k, j, i = torch.meshgrid(*(torch.arange(24.0) for _ in range(3)), indexing="ij")
    index = torch.stack([i, j, k], -1).double() * 8.0
    def as64(values):
        return torch.tensor(values, dtype=torch.float64)

    physical = as64(out_meta["origin"]) + index @ as64(out_meta["direction"]).view(3, 3).T
    t_index = (physical - as64(meta["origin"])) @ as64(meta["direction"]).view(3, 3)
    t_index = t_index.round().long()
    inside = ((t_index >= 0) & (t_index < torch.tensor(template.shape[::-1]))).all(-1)
    expected = torch.zeros(24, 24, 24, dtype=torch.bool)
    ti = t_index[inside]
    expected[inside] = template[ti[:, 2], ti[:, 1], ti[:, 0]] > 0.05
    agree = ((out > 0.02) == expected).float().mean()
    assert expected.float().mean() > 0.2 and agree > 0.98  # a flip along z or y agrees on about 92 %
