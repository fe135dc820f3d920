"""models.load_config: the shipped configs load, every bad key or value fails with a clear message."""

import os

import ml_collections
import pytest
import yaml

from models import load_config
from models.config import SCHEMA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AAPM = os.path.join(ROOT, "configs", "ve", "AAPM_256_ncsnpp_Chung.yaml")
BMR = os.path.join(ROOT, "configs", "ve", "BMR_ZSR_256.yaml")
PARITY = os.path.join(ROOT, "tests", "data", "parity_small_config.yaml")


def write_variant(tmp_path, change):
    """The parity config with change(raw_dict) applied, written to a YAML file; returns its path."""
    with open(PARITY, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    change(raw)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("path", [AAPM, BMR, PARITY])
def test_shipped_configs_load_and_keep_their_values(path):
    config = load_config(path)
    assert isinstance(config, ml_collections.ConfigDict)
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert config[section][key] == value, f"{section}.{key}"
        else:
            assert config[section] == values


@pytest.mark.parametrize("path", [AAPM, BMR])
def test_256_configs_have_the_published_architecture(path):
    m = load_config(path).model
    assert (m.nf, list(m.ch_mult), m.num_res_blocks, list(m.attn_resolutions)) == (128, [1, 2, 2, 2], 4, [16])
    assert (m.fir, list(m.fir_kernel), m.resblock_type, m.progressive, m.progressive_input) == (
        True,
        [1.0, 3.0, 3.0, 1.0],
        "biggan",
        "none",
        "residual",
    )
    assert (m.embedding_type, m.sigma_max, m.sigma_min) == ("fourier", 378.0, 0.01)
    assert load_config(path).data.image_size == 256 and not load_config(path).data.centered


def test_missing_sections_and_keys_take_defaults():
    config = load_config(PARITY)
    assert config.optim.lr == 2e-4 and config.eval.batch_size == 8 and config.data.random_flip is True


def test_dict_and_configdict_inputs_round_trip():
    config = load_config(PARITY)
    assert load_config(config.to_dict()).to_dict() == config.to_dict()
    assert load_config(config).to_dict() == config.to_dict()


def test_enum_values_are_case_insensitive_and_canonicalised(tmp_path):
    path = write_variant(
        tmp_path, lambda raw: raw["model"].update(resblock_type="BigGAN", normalization="groupnorm")
    )
    config = load_config(path)
    assert (config.model.resblock_type, config.model.normalization) == ("biggan", "GroupNorm")


def test_unknown_key_names_key_file_and_accepted_keys(tmp_path):
    path = write_variant(tmp_path, lambda raw: raw["model"].update(nff=3))
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert "'model.nff'" in message and path in message
    assert "accepted keys in section 'model': " + ", ".join(SCHEMA["model"]) in message


def test_unknown_section_is_rejected(tmp_path):
    path = write_variant(tmp_path, lambda raw: raw.update(trainig={"sde": "vesde"}))
    with pytest.raises(
        ValueError, match=r"unknown config key 'trainig' .* accepted keys in the top level: training"
    ):
        load_config(path)


def test_bad_enum_names_key_value_and_accepted_values(tmp_path):
    path = write_variant(tmp_path, lambda raw: raw["model"].update(resblock_type="bigan"))
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(info.value) == (
        f"config key 'model.resblock_type' in {path} has value 'bigan'; accepted values: biggan, ddpm"
    )


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("model", "nf", "128", "must be a positive integer, got '128'"),
        ("model", "ch_mult", [], "must be a non-empty list of positive integers"),
        ("model", "fir", "yes", "must be true or false"),
        ("model", "dropout", 1.5, r"must be a number in \[0, 1\]"),
        ("model", "conv_size", 5, "accepted values: 3"),
        ("data", "image_size", 0, "must be a positive integer"),
    ],
)
def test_bad_values_are_rejected(tmp_path, section, key, value, words):
    path = write_variant(tmp_path, lambda raw: raw[section].update({key: value}))
    with pytest.raises(ValueError, match=f"config key '{section}.{key}' in .*{words}"):
        load_config(path)


def test_missing_required_key(tmp_path):
    path = write_variant(tmp_path, lambda raw: raw["model"].pop("nf"))
    with pytest.raises(ValueError, match=r"missing the required key 'model\.nf'"):
        load_config(path)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda raw: raw["data"].update(image_size=36), r"divisible by 2\*\*\(len\(model.ch_mult\)-1\) = 8"),
        (
            lambda raw: raw["model"].update(sigma_min=400),
            "sigma_min=400.0 must be below model.sigma_max=378.0",
        ),
        (lambda raw: raw["training"].update(continuous=False), "'fourier' needs training.continuous true"),
    ],
)
def test_inconsistent_values_are_rejected(tmp_path, change, words):
    with pytest.raises(ValueError, match=words):
        load_config(write_variant(tmp_path, change))


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(missing)


def test_wrong_input_type():
    with pytest.raises(TypeError, match=r"YAML path, a dict or an ml_collections\.ConfigDict, got int"):
        load_config(3)
