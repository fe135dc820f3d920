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
    with pytest.raises(
        TypeError, match=r"YAML or .py path, a dict or an ml_collections\.ConfigDict, got int"
    ):
        load_config(3)


DEFAULT_CONFIGS = """import ml_collections
import torch


def get_default_configs():
  config = ml_collections.ConfigDict()
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 1
  training.epochs = 1000
  training.snapshot_freq = 50000
  training.log_freq = 25
  training.eval_freq = 100
  training.snapshot_freq_for_preemption = 5000
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  training.reduce_mean = False
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 50
  evaluate.end_ckpt = 96
  evaluate.batch_size = 8
  evaluate.enable_sampling = True
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = 'test'
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'LSUN'
  data.image_size = 256
  data.random_flip = True
  data.uniform_dequantization = False
  data.centered = False
  data.num_channels = 1
  config.model = model = ml_collections.ConfigDict()
  model.sigma_max = 378
  model.sigma_min = 0.01
  model.num_scales = 2000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.
  model.embedding_type = 'fourier'
  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.
  config.seed = 42
  config.device = torch.device('cuda:0') if torch.cuda.is_available() else torch.device('cpu')
  return config
"""

SMALL_CONFIG = """from configs.default_small_configs import get_default_configs


def get_config():
  config = get_default_configs()
  training = config.training
  training.sde = 'vesde'
  training.continuous = True
  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  data = config.data
  data.dataset = 'AAPM'
  data.root = '/data/AAPM/256'
  data.tfrecords_path = '/data/AAPM/train.tfrecords'
  data.is_complex = False
  data.is_multi = False
  data.image_size = 32
  model = config.model
  model.name = 'ncsnpp'
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = NF
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (8,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = 'residual'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.fourier_scale = 16
  model.conv_size = 3
  return config
"""


def score_sde_tree(tmp_path, nf="16", extra=""):
    """A score_sde / DiffusionMBIR style config tree (configs/default_*.py + configs/ve/*.py) for the
    parity network; returns the path of its configs/ve/*.py file."""
    (tmp_path / "configs" / "ve").mkdir(parents=True)
    (tmp_path / "configs" / "default_small_configs.py").write_text(DEFAULT_CONFIGS)
    path = tmp_path / "configs" / "ve" / "small_ncsnpp_continuous.py"
    path.write_text(SMALL_CONFIG.replace("NF", nf).replace("  return config\n", extra + "  return config\n"))
    return path


def _network_part(config):
    return {section: config[section].to_dict() for section in ("model", "data")}


def test_score_sde_py_file_and_config_object_load_with_one_warning(tmp_path, recwarn):
    import sys

    path = score_sde_tree(tmp_path)
    path_before, modules_before = list(sys.path), set(sys.modules)
    config = load_config(path)
    assert sys.path == path_before and not {
        m for m in set(sys.modules) - modules_before if m.startswith("configs")
    }
    messages = [str(w.message) for w in recwarn.list]
    assert len(messages) == 1
    assert "ignored 2 setting(s) the network does not use: device, data.tfrecords_path" in messages[0]
    assert config.model.to_dict() == load_config(PARITY).model.to_dict()
    assert config.data.image_size == 32 and config.data.root == "/data/AAPM/256" and config.device is None

    sys.path.insert(0, str(tmp_path))
    try:
        from configs.ve import small_ncsnpp_continuous

        from_object = load_config(small_ncsnpp_continuous.get_config())
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "configs"]:
            del sys.modules[name]
    assert _network_part(from_object) == _network_part(config)
    assert len(recwarn.list) == 2


def test_score_sde_py_config_loads_the_parity_checkpoint(tmp_path, recwarn):
    import torch

    from models import load_score_model

    net = load_score_model(
        score_sde_tree(tmp_path), os.path.join(ROOT, "tests", "data", "parity_small_checkpoint.pth")
    )
    expected = torch.load(os.path.join(ROOT, "tests", "data", "parity_small_expected.pt"), weights_only=True)
    with torch.no_grad():
        assert (net(expected["x"], expected["sigma"]) - expected["score"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "nf, extra, words",
    [
        (
            "'16'",
            "",
            r"config key 'model.nf' in .*small_ncsnpp_continuous.py must be a positive integer, got '16'",
        ),
        ("16", "  model.fourier_scal = 16\n", r"unknown config key 'model.fourier_scal' in .*small_ncsnpp"),
        ("16", "  config.extra = 1\n", r"unknown config key 'extra' in .*accepted keys in the top level"),
        (
            "16",
            "  import tensorflow_not_here\n",
            r"small_ncsnpp_continuous.py could not be run \(ModuleNotFoundError",
        ),
    ],
    ids=["wrong-network-value", "unknown-model-key", "unknown-section", "failing-file"],
)
def test_score_sde_py_errors_that_matter_stay_errors(tmp_path, nf, extra, words):
    with pytest.raises(ValueError, match=words) as info:
        load_config(score_sde_tree(tmp_path, nf=nf, extra=extra))
    assert "\n" not in str(info.value)


def test_yaml_stays_strict_outside_the_model_section(tmp_path):
    path = write_variant(tmp_path, lambda raw: raw["data"].update(tfrecords_path="/x"))
    with pytest.raises(ValueError, match=r"unknown config key 'data.tfrecords_path'"):
        load_config(path)


def test_py_file_without_get_config(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"plain\.py defines no get_config\(\)"):
        load_config(path)
