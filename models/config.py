"""Model configs in the score_sde layout (training, sampling, eval, data, model, optim, seed), validated.

A config is read from YAML, a dict, an ml_collections.ConfigDict or a score_sde / DiffusionMBIR
``.py`` config file (one that defines ``get_config()``); every key is checked against SCHEMA (type,
accepted values), missing optional keys take score_sde's defaults, and an ml_collections.ConfigDict
is returned.

YAML files and dicts are ours and are checked strictly: an unknown key is an error. ConfigDicts
and ``.py`` files come from score_sde's code, which keeps settings the network does not use beside
the network's (a ``torch.device`` as ``device``, ``data.tfrecords_path``, ``optim.amsgrad``, ...):
those (unknown keys outside the ``model`` section, and a non-string ``device``) are dropped with
one warning naming them. Unknown ``model`` keys and top-level sections, and wrong values of known
keys, are errors from every source.
"""

import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections


class Field(NamedTuple):
    """One config key: its kind (see _CHECKS), default (REQUIRED if none) and accepted values."""

    kind: str
    default: Any
    choices: tuple = ()


REQUIRED = object()
"""Default of the keys a config must set (those that fix the network's shape)."""

SCHEMA = {
    "training": {
        "sde": Field("choice", "vesde", ("vesde",)),
        "continuous": Field("bool", True),
        "reduce_mean": Field("bool", False),
        "likelihood_weighting": Field("bool", False),
        "batch_size": Field("pos_int", 64),
        "n_iters": Field("pos_int", 2400001),
        "epochs": Field("pos_int", 100),
        "snapshot_freq": Field("pos_int", 50000),
        "snapshot_freq_for_preemption": Field("pos_int", 5000),
        "snapshot_sampling": Field("bool", True),
        "log_freq": Field("pos_int", 50),
        "eval_freq": Field("pos_int", 100),
    },
    "sampling": {
        "method": Field("choice", "pc", ("pc", "ode")),
        "predictor": Field("choice", "reverse_diffusion", ("reverse_diffusion", "euler_maruyama", "none")),
        "corrector": Field("choice", "langevin", ("langevin", "ald", "none")),
        "n_steps_each": Field("pos_int", 1),
        "noise_removal": Field("bool", True),
        "probability_flow": Field("bool", False),
        "snr": Field("pos_float", 0.16),
    },
    "eval": {
        "begin_ckpt": Field("pos_int", 1),
        "end_ckpt": Field("pos_int", 1),
        "batch_size": Field("pos_int", 8),
        "enable_sampling": Field("bool", True),
        "num_samples": Field("pos_int", 50000),
        "enable_loss": Field("bool", True),
        "enable_bpd": Field("bool", False),
        "bpd_dataset": Field("choice", "test", ("train", "test")),
    },
    "data": {
        "dataset": Field("str", "AAPM"),
        "root": Field("str", ""),
        "save_path": Field("str", ""),
        "image_size": Field("pos_int", REQUIRED),
        "num_channels": Field("pos_int", 1),
        "centered": Field("bool", False),
        "random_flip": Field("bool", True),
        "uniform_dequantization": Field("bool", False),
        "is_complex": Field("bool", False),
        "is_multi": Field("bool", False),
    },
    "model": {
        "name": Field("choice", "ncsnpp", ("ncsnpp",)),
        "sigma_min": Field("pos_float", 0.01),
        "sigma_max": Field("pos_float", 378.0),
        "num_scales": Field("pos_int", 2000),
        "beta_min": Field("pos_float", 0.1),
        "beta_max": Field("pos_float", 20.0),
        "scale_by_sigma": Field("bool", True),
        "ema_rate": Field("unit_float", 0.999),
        "normalization": Field("choice", "GroupNorm", ("GroupNorm",)),
        "nonlinearity": Field("choice", "swish", ("swish", "elu", "relu", "lrelu")),
        "nf": Field("pos_int", REQUIRED),
        "ch_mult": Field("pos_int_list", REQUIRED),
        "num_res_blocks": Field("pos_int", REQUIRED),
        "attn_resolutions": Field("int_list", REQUIRED),
        "resamp_with_conv": Field("bool", True),
        "conditional": Field("bool", True),
        "fir": Field("bool", True),
        "fir_kernel": Field("float_list", [1, 3, 3, 1]),
        "skip_rescale": Field("bool", True),
        "resblock_type": Field("choice", "biggan", ("biggan", "ddpm")),
        "progressive": Field("choice", "none", ("none", "output_skip", "residual")),
        "progressive_input": Field("choice", "residual", ("none", "input_skip", "residual")),
        "progressive_combine": Field("choice", "sum", ("sum", "cat")),
        "attention_type": Field("choice", "ddpm", ("ddpm",)),
        "init_scale": Field("float", 0.0),
        "fourier_scale": Field("pos_float", 16.0),
        "conv_size": Field("choice", 3, (3,)),
        "dropout": Field("unit_float", 0.0),
        "embedding_type": Field("choice", "fourier", ("fourier", "positional")),
    },
    "optim": {
        "optimizer": Field("choice", "Adam", ("Adam",)),
        "lr": Field("pos_float", 2e-4),
        "beta1": Field("unit_float", 0.9),
        "eps": Field("pos_float", 1e-8),
        "weight_decay": Field("float", 0.0),
        "warmup": Field("int", 5000),
        "grad_clip": Field("float", 1.0),
    },
    "seed": Field("int", 42),
    "device": Field("optional_str", None),
}
"""Every accepted key. Sections are dicts of Fields; top-level scalars are Fields."""


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# kind -> (predicate, description, normaliser)
_CHECKS = {
    "bool": (lambda v: isinstance(v, bool), "true or false", bool),
    "int": (_is_int, "an integer", int),
    "pos_int": (lambda v: _is_int(v) and v > 0, "a positive integer", int),
    "float": (_is_number, "a number", float),
    "pos_float": (lambda v: _is_number(v) and v > 0, "a positive number", float),
    "unit_float": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]", float),
    "str": (lambda v: isinstance(v, str), "a string", str),
    "optional_str": (lambda v: v is None or isinstance(v, str), "a string or null", lambda v: v),
    "int_list": (
        lambda v: isinstance(v, (list, tuple)) and all(_is_int(e) for e in v),
        "a list of integers",
        list,
    ),
    "pos_int_list": (
        lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(e) and e > 0 for e in v),
        "a non-empty list of positive integers",
        list,
    ),
    "float_list": (
        lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(e) for e in v),
        "a non-empty list of numbers",
        lambda v: [float(e) for e in v],
    ),
}


STRICT_SECTIONS = ("model",)
"""Sections whose unknown keys are errors from every source: they may define the network."""


def load_config(path_or_config) -> ml_collections.ConfigDict:
    """Read and validate a model config.

    Args:
        path_or_config: path to a YAML file or to a score_sde ``.py`` config file (str or Path), a
            nested dict, or a ConfigDict (e.g. score_sde's ``get_config()``).

    Returns:
        A new ConfigDict with every section of SCHEMA, defaults filled in.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: an unknown key (see the module docstring for the keys score_sde configs may
            carry), a missing required key, a value of the wrong type or outside the accepted
            values, or inconsistent values; the message names the key and the source.
    """
    raw, source, foreign = _read(path_or_config)
    if not isinstance(raw, dict):
        raise ValueError(f"config {source} must be a mapping of sections, got {type(raw).__name__}")
    ignored = [] if foreign else None
    if foreign and raw.get("device") is not None and not isinstance(raw["device"], str):
        raw = {**raw, "device": None}
        ignored.append("device")
    config = _validate_level(raw, SCHEMA, "", source, ignored)
    _check_consistency(config, source)
    if ignored:
        warnings.warn(
            f"config {source}: ignored {len(ignored)} setting(s) the network does not use: "
            f"{', '.join(ignored)}",
            UserWarning,
            stacklevel=2,
        )
    return ml_collections.ConfigDict(config)


def describe_source(path_or_config) -> str:
    """How errors name a config: its file path, else a short summary of its architecture."""
    if isinstance(path_or_config, (str, Path)):
        return str(path_or_config)
    try:
        model, data = path_or_config["model"], path_or_config["data"]
        return (
            f"<config: {model['name']} nf={model['nf']} ch_mult={list(model['ch_mult'])} "
            f"num_res_blocks={model['num_res_blocks']} image_size={data['image_size']}>"
        )
    except (KeyError, TypeError):
        return "<in-memory config>"


def _read(path_or_config):
    """(raw nested dict, name of the source, whether it comes from score_sde's code)."""
    if isinstance(path_or_config, ml_collections.ConfigDict):
        return path_or_config.to_dict(), describe_source(path_or_config), True
    if isinstance(path_or_config, dict):
        return path_or_config, "<dict>", False
    if isinstance(path_or_config, (str, Path)):
        path = Path(path_or_config)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        if path.suffix == ".py":
            return _run_config_file(path), str(path), True
        import yaml

        try:
            with open(path, encoding="utf-8") as handle:
                return yaml.safe_load(handle), str(path), False
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            reason = " ".join(str(err).split())
            raise ValueError(f"config {path} is not a readable YAML file ({reason})") from None
    raise TypeError(
        "config must be a YAML or .py path, a dict or an ml_collections.ConfigDict, "
        f"got {type(path_or_config).__name__}"
    )


def _run_config_file(path):
    """get_config() of a score_sde-style .py config file, as a nested dict.

    The file is Python and runs (as in score_sde). Its imports of ``configs.<module>`` resolve in
    the tree the file lives in: the folder above its nearest ``configs`` folder goes first on the
    import path, and ``configs`` modules imported from elsewhere are set aside meanwhile.
    """
    path = path.resolve()
    root = next((folder.parent for folder in path.parents if folder.name == "configs"), path.parent)
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "configs"}
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location(f"_score_sde_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        config = get_config() if callable(get_config) else None
    except Exception as err:  # noqa: BLE001 -- a config file can fail in any way; report it in one line
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"config {path} could not be run ({type(err).__name__}: {reason})") from None
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == "configs"]:
            del sys.modules[name]
        sys.modules.update(saved)
    if config is None:
        raise ValueError(f"config {path} defines no get_config(); a score_sde .py config file is accepted")
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config


def _validate_level(raw, schema, prefix, source, ignored):
    """Validated values of one level; unknown keys are collected in ignored (a list) where the source
    may carry them, else they are errors (ignored None)."""
    unknown = [key for key in raw if key not in schema]
    section = prefix[:-1]
    if unknown and ignored is not None and prefix and section not in STRICT_SECTIONS:
        ignored.extend(prefix + key for key in unknown)
    elif unknown:
        where = f"section '{section}'" if prefix else "the top level"
        raise ValueError(
            f"unknown config key '{prefix}{unknown[0]}' in {source}; accepted keys in {where}: "
            f"{', '.join(schema)}"
        )
    out = {}
    for key, spec in schema.items():
        name = prefix + key
        if isinstance(spec, dict):
            section = raw.get(key) or {}
            if not isinstance(section, dict):
                raise ValueError(f"config key '{name}' in {source} must be a section (mapping)")
            out[key] = _validate_level(section, spec, name + ".", source, ignored)
        elif key in raw:
            out[key] = _validate_value(name, raw[key], spec, source)
        elif spec.default is REQUIRED:
            raise ValueError(f"config {source} is missing the required key '{name}'")
        else:
            out[key] = _validate_value(name, spec.default, spec, source)
    return out


def _validate_value(name, value, spec, source):
    if spec.kind == "choice":
        for choice in spec.choices:
            if value == choice or (
                isinstance(value, str) and isinstance(choice, str) and value.lower() == choice.lower()
            ):
                return choice
        accepted = ", ".join(str(c) for c in spec.choices)
        raise ValueError(f"config key '{name}' in {source} has value {value!r}; accepted values: {accepted}")
    accepts, description, normalise = _CHECKS[spec.kind]
    if not accepts(value):
        raise ValueError(f"config key '{name}' in {source} must be {description}, got {value!r}")
    return normalise(value)


def _check_consistency(config, source):
    """Cross-key rules that the network and the SDE rely on."""
    model, data = config["model"], config["data"]
    levels = len(model["ch_mult"])
    if data["image_size"] % 2 ** (levels - 1):
        raise ValueError(
            f"config {source}: data.image_size={data['image_size']} must be divisible by "
            f"2**(len(model.ch_mult)-1) = {2 ** (levels - 1)}"
        )
    if model["sigma_min"] >= model["sigma_max"]:
        raise ValueError(
            f"config {source}: model.sigma_min={model['sigma_min']} must be below "
            f"model.sigma_max={model['sigma_max']}"
        )
    if model["num_scales"] < 2:
        raise ValueError(f"config {source}: model.num_scales must be at least 2, got {model['num_scales']}")
    if model["embedding_type"] == "fourier" and not config["training"]["continuous"]:
        raise ValueError(
            f"config {source}: model.embedding_type 'fourier' needs training.continuous true "
            "(use 'positional' for discrete noise levels)"
        )
