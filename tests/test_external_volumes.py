"""External evaluation families: determinism, HU ranges, geometry, seed ranges and independence from the training generators."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datasets import ct_phantom, mri
from experiments import external_volumes as ext

ROOT = Path(__file__).resolve().parents[1]
SEED = ext.DESIGN_SEEDS[0]
# The training-data code the external families must neither import nor reuse.
TRAINING_MODULES = ("datasets.ct_phantom", "datasets.ct_regions", "datasets.ct_randomize", "datasets.fields")


def _brain_or_skip(seed, shape):
    try:
        return ext.external_volume("brain-mr", seed, shape)
    except FileNotFoundError as err:
        pytest.skip(f"MNI152 template unavailable ({err})")


@pytest.mark.parametrize("family, shape", [("shepp-logan", (6, 128, 128)), ("torso", (4, 160, 160))])
def test_ct_families_are_deterministic_in_hu(family, shape):
    if family == "shepp-logan":
        pytest.importorskip("phantominator")
    volume, meta = ext.external_volume(family, SEED, shape)
    small = (3, 32, 32)
    again, other = (ext.external_volume(family, seed, small)[0] for seed in (SEED, SEED + 1))
    assert volume.shape == shape and volume.dtype == torch.float32
    assert torch.equal(again, ext.external_volume(family, SEED, small)[0]) and (again - other).abs().mean() > 5.0
    assert float(volume.min()) >= -1024 and float(volume.max()) <= 2000
    assert float((volume < -950).float().mean()) > 0.05  # air around the body
    assert float((volume > 300).float().mean()) > 0.002  # bone
    soft = volume[(volume > -200) & (volume < 200)]
    assert soft.numel() > 0.1 * volume.numel() and -120 < float(soft.median()) < 80
    sx, sy, sz = meta["spacing"]
    assert sx == sy and 1.3 <= sx <= 2.5 and 1.0 <= sz <= 2.5  # not the training default of 3 mm
    assert meta["direction"] == ext.IDENTITY
    assert meta["origin"] == pytest.approx((-(shape[2] - 1) / 2 * sx, -(shape[1] - 1) / 2 * sy, -(shape[0] - 1) / 2 * sz))


def test_shepp_logan_hu_map():
    """Air outside the skull; the modified phantom's CSF (0), brain (0.2) and skull (1.0) land on the drawn HU."""
    value = torch.tensor([0.0, 0.0, 0.2, 1.0, 0.3, 0.5, -0.5])
    inside = torch.tensor([False, True, True, True, True, True, True])
    hu = ext.shepp_logan_hu(value, inside, csf=10.0, brain=40.0, bone=1000.0)
    assert hu.tolist() == pytest.approx([-1000.0, 10.0, 40.0, 1000.0, 40.0 + 80.0 / 3, 120.0, -400.0])


def test_shepp_logan_volume_is_a_head_with_bone_brain_and_csf():
    pytest.importorskip("phantominator")
    volume, _ = ext.external_volume("shepp-logan", SEED, (24, 64, 64))
    inside = volume > -900
    assert 0.2 < float(inside.float().mean()) < 0.8
    brain = volume[inside & (volume > 20) & (volume < 60)]
    assert brain.numel() > 0.5 * inside.sum()  # most of the head is brain
    assert float((volume > 700).float().sum()) > 50  # the skull


def test_brain_mr_family():
    volume, meta = _brain_or_skip(SEED, (24, 24, 24))
    again, _ = _brain_or_skip(SEED, (24, 24, 24))
    assert volume.shape == (24, 24, 24) and torch.equal(volume, again)
    assert float(volume.max()) == pytest.approx(1000.0) and float(volume.min()) >= 0
    assert meta["direction"] == mri.LPI and meta["spacing"] == pytest.approx((8.0, 8.0, 8.0))
    with pytest.raises(ValueError, match="cube"):
        ext.external_volume("brain-mr", SEED, (24, 24, 16))


def test_seed_ranges_are_held_out_from_training():
    for seeds in (ext.EVAL_SEEDS, ext.DESIGN_SEEDS):
        for module in (ct_phantom, mri):
            assert not set(seeds) & set(module.TRAIN_SEEDS) and not set(seeds) & set(module.EVAL_SEEDS)
            for seed in (seeds[0], seeds[-1]):
                with pytest.raises(ValueError, match="outside"):
                    module.check_train_seed(seed)
    assert not set(ext.EVAL_SEEDS) & set(ext.DESIGN_SEEDS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="family"):
        ext.external_volume("knee", SEED)
    with pytest.raises(ValueError, match="seed"):
        ext.external_volume("torso", -1)
    with pytest.raises(ValueError, match="shape"):
        ext.external_volume("torso", SEED, (8, 8))


def test_independent_of_the_training_generators():
    """No import of the training-data code, by the source text (ast) nor at run time (sys.modules)."""
    tree = ast.parse((ROOT / "experiments" / "external_volumes.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert not imported & set(TRAINING_MODULES), imported & set(TRAINING_MODULES)
    families = [name for name, spec in ext.FAMILIES.items() if spec.modality == "ct"]
    if importlib.util.find_spec("phantominator") is None:
        families.remove("shepp-logan")
    code = ("import sys, json; from experiments.external_volumes import external_volume; "
            f"[external_volume(name, {SEED}, (4, 16, 16)) for name in {families}]; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('datasets'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_cli_writes_a_volume_that_reads_back(tmp_path, capsys):
    from utils.io import read_volume

    path = ext.main(["--family", "torso", "--seed", str(SEED), "--shape", "6", "24", "24", "--out",
                     str(tmp_path / "t.pt")])
    array, meta = read_volume(path)
    volume, expected = ext.external_volume("torso", SEED, (6, 24, 24))
    assert torch.equal(torch.from_numpy(array), volume)
    assert all(meta[key] == pytest.approx(expected[key]) for key in expected)
    assert "torso" in capsys.readouterr().out
    ext.main(["--list"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in ext.FAMILIES)
