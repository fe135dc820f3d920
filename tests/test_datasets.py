"""Phantoms, head and pelvis volumes, CT domain randomisation, MRI augmentation, slice datasets, field helpers."""

import math

import pytest
import torch
import yaml

import train_score
from datasets import ct_phantom, ct_randomize, ct_regions, mri
from datasets.fields import blur_axis, bspline_matrix, interpolate_grid, piecewise_linear
from datasets.slices import (
    MRISlices,
    NiftiSlices,
    PhantomSlices,
    RandomizedCTSlices,
    volume_to_slices,
)
from utils.volume import hu_to_unit, min_max_with_range

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


def test_a_constant_volume_is_refused_by_training_as_by_inference(tmp_path):
    from utils.io import write_volume

    flat = write_volume(tmp_path / "flat.nii.gz", torch.full((3, 8, 8), 7.0).numpy(), ct_phantom.phantom_meta((3, 8, 8)))
    with pytest.raises(ValueError, match=r"flat\.nii\.gz: volume is constant \(every voxel is 7\)"):
        NiftiSlices([flat], intensity="minmax", size=8)
    with pytest.raises(ValueError, match=r"^volume is constant \(every voxel is 7\)"):
        min_max_with_range(torch.full((3, 8, 8), 7.0))
    # HU clamping has no such case: a constant CT volume is valid training data.
    assert torch.equal(NiftiSlices([flat], intensity="ct", size=8).slices, torch.full((3, 1, 8, 8), 1007.0 / 2600.0))


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


def test_shipped_demo_volumes_regenerate_from_their_seeds():
    """The held-out demo volumes (and so every evaluation volume) are unchanged by the generators' options."""
    pytest.importorskip("SimpleITK")
    from utils.io import read_volume

    shipped, meta = read_volume("data/demo/ct_phantom_demo.nii.gz")
    hu = ct_phantom.generate_phantom(ct_phantom.DEMO_SEED, ct_phantom.DEMO_SHAPE, z_center=ct_phantom.DEMO_Z_CENTER)
    difference = (torch.from_numpy(shipped) - hu.round()).abs()
    assert float(difference.max()) <= 1.0 and float(difference.mean()) < 1e-3  # rounding ties only
    assert meta == ct_phantom.phantom_meta(ct_phantom.DEMO_SHAPE, z_center=ct_phantom.DEMO_Z_CENTER)
    template, template_meta = _template_or_skip()
    shipped, meta = read_volume("data/demo/mri_demo.nii.gz")
    augmenter = mri.MRIAugmenter(template, template_meta)
    assert torch.allclose(torch.from_numpy(shipped), augmenter(mri.DEMO_SEED), atol=1e-5)


@pytest.mark.parametrize("name", ["head", "pelvis"])
def test_regions_tissue_hu_ranges_and_determinism(name):
    generate = ct_regions.REGIONS[name]
    z_center = {"head": 0.0, "pelvis": 20.0}[name]
    grid = ((48, 64, 64), (4.0, 4.0, 4.0), z_center)
    hu, labels = generate(5, *grid, return_labels=True)
    assert torch.equal(hu, generate(5, *grid))
    assert (hu - generate(6, *grid)).abs().mean() > 10.0
    required = {"head": {"skin", "cortical_bone", "diploe", "csf", "gray_matter", "white_matter", "air", "fluid"},
                "pelvis": {"fat", "muscle", "cortical_bone", "trabecular_bone", "fluid", "marrow"}}[name]
    # Interior voxels (the in-plane neighbours share the label) are free of partial volumes with other tissues.
    core = labels.clone()
    core[:, 1:-1, 1:-1] = torch.where((labels[:, 1:-1, 1:-1] == labels[:, :-2, 1:-1])
                                      & (labels[:, 1:-1, 1:-1] == labels[:, 2:, 1:-1])
                                      & (labels[:, 1:-1, 1:-1] == labels[:, 1:-1, :-2])
                                      & (labels[:, 1:-1, 1:-1] == labels[:, 1:-1, 2:]), labels[:, 1:-1, 1:-1], 255)
    present = {tissue for tissue, (label, _) in ct_phantom.TISSUES.items() if bool((labels == label).any())}
    for tissue, (label, (low, high)) in ct_phantom.TISSUES.items():
        values = hu[core == label]
        if values.numel() >= 10:
            median = float(values.median())
            assert low <= median <= high, f"{name} {tissue}: median {median:.0f} HU outside [{low}, {high}]"
    assert required <= present, f"{name}: missing tissues {required - present}"
    assert float(hu.min()) >= -1030 and float(hu.max()) <= 1700


@pytest.mark.parametrize("name", sorted(ct_regions.REGIONS))
def test_region_volumes_do_not_depend_on_the_window(name):
    """An off-centre window rendered on its own equals the same voxels of a larger grid (same anatomy)."""
    spacing = (6.0, 6.0, 6.0)
    whole = ct_regions.REGIONS[name](9, (12, 48, 48), spacing, 10.0)
    window = ct_regions.REGIONS[name](9, (6, 24, 24), spacing, 10.0 + 3 * 6.0, xy_center=(-12 * 6.0, 12 * 6.0))
    # The window's centre (x, y) = (-72, +72) mm lies between voxels 11 and 12 of the whole's columns minus 12.
    assert torch.allclose(window, whole[6:12, 24:48, 0:24], atol=1.0)


def test_randomized_ct_plans_follow_the_settings():
    """Region frequencies follow the weights; zoom, thickness, noise and HU scale stay in their ranges."""
    settings = ct_randomize.CTRandomization()
    plans = [ct_randomize.draw_plan(seed, (64, 128, 128)) for seed in range(600)]
    assert plans[7] == ct_randomize.draw_plan(7, (64, 128, 128))
    plain = [p for p in plans if p["region"] == "plain"]
    assert len(plain) / len(plans) == pytest.approx(settings.plain, abs=0.05)
    others = [p for p in plans if p["region"] != "plain"]
    total = sum(settings.regions.values())
    for name, weight in settings.regions.items():
        share = sum(p["region"] == name for p in others) / len(others)
        assert share == pytest.approx(weight / total, abs=0.06), name
    spacings = [p["spacing"][0] for p in others]
    assert 0.45 <= min(spacings) < 0.7 and 3.0 < max(spacings) <= 3.6
    assert all(settings.z_spacing_mm[0] <= p["spacing"][2] <= settings.z_spacing_mm[1] for p in others)
    assert all(settings.thickness_mm[0] <= p["thickness"] <= settings.thickness_mm[1] for p in others)
    noisy = [p for p in others if p["noise"] is not None]
    assert len(noisy) / len(others) == pytest.approx(settings.noise_chance, abs=0.07)
    assert all(settings.noise_hu[0] <= p["noise_hu"] <= settings.noise_hu[1] for p in noisy)
    assert max(abs(p["hu_knots"][4]) for p in others) <= settings.water_offset_hu  # water stays near 0 HU
    with pytest.raises(ValueError, match="regions"):
        ct_randomize.CTRandomization(regions={"knee": 1.0})


def test_randomized_ct_volumes_render_their_plans():
    plans = {seed: ct_randomize.draw_plan(seed, (4, 32, 32)) for seed in range(50)}
    plain_seed = next(s for s, p in plans.items() if p["region"] == "plain")
    noisy_seed = next(s for s, p in plans.items() if p["region"] in ("head", "objects") and p["noise"] is not None)
    hu, plan = ct_randomize.randomized_volume(plain_seed, (4, 32, 32))
    assert torch.equal(hu, ct_phantom.whole_phantom(plain_seed, (4, 32, 32))[0])
    hu, plan = ct_randomize.randomized_volume(noisy_seed, (4, 32, 32))
    again, _ = ct_randomize.randomized_volume(noisy_seed, (4, 32, 32))
    assert torch.equal(hu, again) and plan == plans[noisy_seed]
    assert hu.shape == (4, 32, 32) and hu.dtype == torch.float32
    assert float(hu.min()) >= -1024 and float(hu.max()) <= 3071
    clean = ct_regions.REGIONS[plan["region"]](noisy_seed, (4, 32, 32), plan["spacing"], plan["z_center"],
                                              xy_center=plan["xy_center"])
    assert float((hu - clean).abs().mean()) > 0.5 * plan["noise_hu"]


def test_ct_noise_is_unit_variance_with_a_ramp_spectrum():
    """Ramp-filtered noise: unit variance, no power at frequency 0 (zero slice means), less at low than at mid frequencies."""
    radius = torch.sqrt(torch.fft.fftfreq(64).view(-1, 1) ** 2 + torch.fft.fftfreq(64).view(1, -1) ** 2)
    for strength in (0.0, 4.0):
        params = {"power": 0.7, "cutoff": 0.3, "angle": 0.4, "strength": strength, "sharpness": 12.0}
        noise = ct_randomize.ct_noise((6, 64, 64), params, torch.Generator().manual_seed(4))
        assert noise.shape == (6, 64, 64) and float(noise.std()) == pytest.approx(1.0, rel=1e-4)
        assert float(noise.mean(dim=(1, 2)).abs().max()) < 1e-5
        power = torch.fft.fft2(noise).abs().square().mean(0)
        low, mid = power[(radius > 0) & (radius < 0.04)].mean(), power[(radius > 0.08) & (radius < 0.15)].mean()
        assert float(low) < 0.5 * float(mid)


def test_piecewise_linear_and_blur():
    knots = torch.tensor([0.0, 1.0, 3.0])
    assert torch.allclose(piecewise_linear(torch.tensor([-1.0, 0.5, 2.0, 4.0]), knots, torch.tensor([0.0, 2.0, 0.0])),
                          torch.tensor([-2.0, 1.0, 1.0, -1.0]))
    impulse = torch.zeros(21, 3, 3)
    impulse[10] = 1.0
    blurred = blur_axis(impulse, 0, 2.0)
    assert torch.allclose(blurred.sum(0), torch.ones(3, 3))
    assert float(blurred[10, 0, 0]) == pytest.approx(1 / (2.0 * math.sqrt(2 * math.pi)), rel=0.02)


def test_randomized_pool_uses_training_seeds_only(gen):
    last = ct_phantom.TRAIN_SEEDS[-1]
    pool = RandomizedCTSlices(pool_size=2, refresh_every=1, size=16, first_seed=last - 1, depth=3)
    batch = pool.batch(4, gen)
    assert batch.shape == (4, 1, 16, 16) and batch.min() >= 0 and batch.max() <= 1
    with pytest.raises(ValueError, match="held-out"):
        pool.batch(2, gen)


def test_mri_contrast_remap_orders_the_tissue_classes():
    """T1 keeps CSF < gray < white matter; T2 makes CSF the brightest and gray brighter than white; FLAIR darkens CSF."""
    levels = torch.tensor([0.0, 0.26, 0.63, 0.84])  # background, CSF, gray, white matter of the T1 template
    for seed in range(4):
        t1, t2, flair = (mri.remap_contrast(levels, torch.Generator().manual_seed(seed), {name: 1.0})
                         for name in ("t1", "t2", "flair"))
        assert t1[0] == t2[0] == flair[0] == 0.0
        assert t1[1] < t1[2] < t1[3]
        assert t2[1] > t2[2] > t2[3]
        assert flair[1] < flair[3] < flair[2]
    with pytest.raises(ValueError, match="contrasts"):
        mri.MRIAppearance(contrasts={"dwi": 1.0})


def test_mri_rician_noise_and_resolution():
    """Rician noise on a zero background is Rayleigh: mean sigma sqrt(pi / 2); blur keeps what is constant along its axis."""
    volume = torch.zeros(24, 24, 24)
    volume[0, 0, 0] = 1.0
    noisy = mri.MRIAppearance(bias_std=0.0, resolution_chance=0.0, noise_chance=1.0, noise=(0.02, 0.02)).degrade(
        volume, torch.Generator().manual_seed(0), 1.5)
    assert float(noisy[1:].mean()) == pytest.approx(0.02 * math.sqrt(math.pi / 2), rel=0.03)
    ramp = torch.arange(24.0).view(24, 1, 1).expand(24, 24, 24).contiguous()
    for axis in (1, 2):
        assert torch.allclose(blur_axis(ramp, axis, 2.0), ramp)
        assert torch.allclose(mri._down_up(ramp, axis, 2.5), ramp)
    assert not torch.allclose(blur_axis(ramp, 0, 2.0), ramp)


def test_mri_appearance_keeps_the_geometry_and_range(augmenter):
    looks = mri.MRIAugmenter(augmenter.template[0, 0], augmenter.template_meta, shape=(32, 32, 32), spacing=6.0,
                             appearance=mri.MRIAppearance(noise_chance=1.0, resolution_chance=1.0))
    assert torch.equal(looks.warp(3), augmenter.warp(3))
    a, b = looks(3), looks(3)
    assert torch.equal(a, b) and a.shape == (32, 32, 32)
    assert float(a.min()) == 0.0 and float(a.max()) == 1.0
    assert (a - augmenter(3)).abs().mean() > 0.02


def test_train_score_runs_steps_on_randomized_ct(tmp_path):
    with open("configs/ve/CT_phantom_128.yaml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["data"]["image_size"] = 16
    config["model"].update(nf=8, ch_mult=[1, 2], attn_resolutions=[8])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["--config", str(path), "--run-dir", str(tmp_path / "run"), "--data", "phantom-dr", "--pool-size", "2",
            "--pool-depth", "4", "--refresh-every", "1", "--batch-size", "2", "--max-steps", "2",
            "--sample-steps", "0", "--device", "cpu", "--log-every", "1"]
    assert train_score.main(argv) == 0
    log = (tmp_path / "run/log.jsonl").read_text().splitlines()
    assert len(log) == 2 and all(math.isfinite(yaml.safe_load(line)["loss"]) for line in log)
    with pytest.raises(ValueError, match="axial"):
        train_score.resolve(train_score.build_parser().parse_args(argv + ["--plane", "coronal"]))


def test_train_score_mri_dr_source_has_the_appearance_changes(gen):
    _template_or_skip()
    args = train_score.build_parser().parse_args(
        ["--config", "configs/ve/MRI_ZSR_128.yaml", "--run-dir", "unused", "--data", "mri-dr", "--pool-size", "1",
         "--refresh-every", "0", "--device", "cpu"])
    train_score.resolve(args)
    source = train_score.DATA_SOURCES[args.data](args, 16, torch.device("cpu"))
    assert isinstance(source.augmenter.appearance, mri.MRIAppearance) and source.plane == "coronal"
    batch = source.batch(3, gen)
    assert batch.shape == (3, 1, 16, 16) and batch.min() >= 0 and batch.max() <= 1
