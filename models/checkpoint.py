"""Score-model checkpoints: score_sde training checkpoints and our compact weights-only files.

score_sde format: {"model": state dict (keys may carry DataParallel's "module." prefix),
"ema": {"decay", "num_updates", "shadow_params": [tensors of the parameters that require grad, in
order]}, "optimizer": state dict, "step": int}.

Compact format (export_weights): {"format": COMPACT_FORMAT, "version": 1, "config": plain dict,
"state_dict": EMA weights (trainable parameters in fp16/bf16/fp32, everything else at full
precision), "meta": JSON-like dict}.
"""

import json
import os
import warnings
from pathlib import Path

import torch

from models.config import SCHEMA, describe_source, load_config
from models.ncsnpp import build_model

COMPACT_FORMAT = "iscs-score-weights"
COMPACT_VERSION = 1
_EXPORT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NOT_NETWORK = {"ema_rate", "beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales", "dropout"}
NETWORK_KEYS = tuple(
    [("model", key) for key in SCHEMA["model"] if key not in _NOT_NETWORK]
    + [("data", key) for key in ("image_size", "num_channels", "centered")]
)
"""(section, key) pairs that define the network's function; a config given with a compact file must match."""


def load_score_model(config, checkpoint_path, device="cpu"):
    """Build the score network and load a checkpoint into it, EMA weights applied, in eval mode.

    Args:
        config: YAML path, dict or ConfigDict of the network; for a compact file None takes the
            config stored in it (a given config must then agree with the stored one).
        checkpoint_path: score_sde checkpoint or compact file written by export_weights.
        device: where the network is placed.

    Returns:
        nn.Module with net(x [B,1,H,W] in [0,1], sigma [B]) -> score [B,1,H,W]; net.config is the
        config and net.checkpoint_info holds path, format, step and meta.

    Raises:
        FileNotFoundError: no file at checkpoint_path.
        ValueError: not a known checkpoint format, or its weights do not fit the network (first
            missing and unexpected key, first shape mismatch, config and path named); nothing is
            loaded then.
    """
    path = Path(checkpoint_path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; a checkpoint file is accepted")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = _load_file(path)
    kind = _format_of(payload)
    if kind is None:
        keys = sorted(payload)[:6] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is neither a score_sde checkpoint (keys 'model', 'ema') nor a compact file "
            f"(format '{COMPACT_FORMAT}'); found {keys}"
        )
    return _LOADERS[kind](config, payload, path, torch.device(device))


def save_checkpoint(path, model, ema, optimizer, step: int):
    """Write a score_sde-format training checkpoint {"model", "ema", "optimizer", "step"} atomically.

    Args:
        path: destination file; written through a temporary file so a crash never leaves half a file.
        model: the network (its state dict is stored without a "module." prefix).
        ema: models.ExponentialMovingAverage of the model's parameters.
        optimizer: torch optimizer.
        step: training step.
    """
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
    }
    _atomic_save(state, Path(path))


def export_weights(path, model, config, meta=None, dtype=torch.float16):
    """Write a compact weights-only file that load_score_model reads (config embedded).

    The model must already hold the weights to ship (apply ema.copy_to first). Trainable
    parameters are stored in ``dtype``; frozen parameters (the Fourier embedding, whose
    precision the embedding needs) and buffers keep their dtype.

    Args:
        path: destination file.
        model: the network.
        config: its config (path, dict or ConfigDict), stored as a plain dict.
        meta: JSON-serialisable dict, e.g. {"step": 150000, "data": "AAPM", "notes": "..."}.
        dtype: torch.float16, torch.bfloat16 or torch.float32.
    """
    if dtype not in _EXPORT_DTYPES:
        raise ValueError(f"export_weights: dtype must be one of {_EXPORT_DTYPES}, got {dtype}")
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except TypeError as exc:
        raise TypeError(f"export_weights: meta must be JSON-serialisable ({exc})") from None
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = {
        name: (t.detach().to(dtype) if name in trainable else t.detach()).cpu().clone()
        for name, t in model.state_dict(keep_vars=True).items()
    }
    payload = {
        "format": COMPACT_FORMAT,
        "version": COMPACT_VERSION,
        "config": load_config(config).to_dict(),
        "state_dict": state,
        "meta": meta,
    }
    _atomic_save(payload, Path(path))


def _load_file(path):
    """torch.load with weights_only=True; if that refuses the file, full unpickling with a warning.

    Old score_sde checkpoints can pickle objects outside the safe loader's allow-list (e.g. numpy
    scalars in the optimizer state); those files are trusted model files, so they are unpickled.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_error:  # noqa: BLE001 -- the safe loader signals refusal with several types
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ValueError(f"{path} could not be read as a torch checkpoint: {exc}") from exc
        warnings.warn(
            f"{path}: the safe loader refused the file ({type(safe_error).__name__}); it was unpickled "
            "in full, which runs code stored in it: load only checkpoints you trust",
            UserWarning,
            stacklevel=3,
        )
        return payload


def _format_of(payload):
    if not isinstance(payload, dict):
        return None
    if payload.get("format") == COMPACT_FORMAT:
        return "compact"
    if "model" in payload and "ema" in payload:
        return "score_sde"
    return None


def _load_score_sde(config, payload, path, device):
    if config is None:
        raise ValueError(
            f"{path} is a score_sde checkpoint, which holds no config: pass the model config (--config-path in the scripts)"
        )
    name = describe_source(config)
    config = load_config(config)
    net = build_model(config)
    state = _strip_prefix(payload["model"], "module.")
    _check_state_dict(net, state, path, name)
    shadow = payload["ema"]["shadow_params"]
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    _check_shadow(trainable, shadow, path, name)
    net.load_state_dict(state)
    with torch.no_grad():
        for (_, param), value in zip(trainable, shadow, strict=True):
            param.copy_(value)
    info = {"path": str(path), "format": "score_sde", "step": _as_int(payload.get("step")), "meta": {}}
    return _finish(net, info, device)


def _load_compact(config, payload, path, device):
    version = payload.get("version")
    if version != COMPACT_VERSION:
        raise ValueError(
            f"{path}: compact format version {version!r} is not supported (this code reads {COMPACT_VERSION})"
        )
    stored = load_config(payload["config"])
    name = f"the config stored in {path}"
    if config is not None:
        name = describe_source(config)
        config = load_config(config)
        differing = [
            f"{section}.{key}"
            for section, key in NETWORK_KEYS
            if config[section][key] != stored[section][key]
        ]
        if differing:
            raise ValueError(
                f"config {name} differs from the one stored in {path} at {', '.join(differing[:5])}; "
                "leave the config out (config=None; no --config-path in the scripts) to use the stored one"
            )
        # The noise range is not part of the network, but a prior trained for another one samples badly.
        retuned = [
            f"model.{key} {config.model[key]:g} (trained with {stored.model[key]:g})"
            for key in ("sigma_min", "sigma_max")
            if config.model[key] != stored.model[key]
        ]
        if retuned:
            warnings.warn(
                f"config {name} sets {', '.join(retuned)} for {path}; the config's values are used",
                stacklevel=3,
            )
    net = build_model(stored if config is None else config)
    state = payload["state_dict"]
    _check_state_dict(net, state, path, name)
    net.load_state_dict(state)
    meta = dict(payload.get("meta") or {})
    info = {"path": str(path), "format": "compact", "step": _as_int(meta.get("step")), "meta": meta}
    return _finish(net, info, device)


_LOADERS = {"score_sde": _load_score_sde, "compact": _load_compact}


def _finish(net, info, device):
    net.checkpoint_info = info
    return net.to(device).eval()


def _strip_prefix(state, prefix):
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def _check_state_dict(net, state, path, config_name):
    """Raise one ValueError describing how state differs from net's state dict (keys, then shapes)."""
    expected = net.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"first missing key '{missing[0]}' ({len(missing)} missing)")
    if unexpected:
        problems.append(f"first unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected)")
    if mismatched:
        key = mismatched[0]
        problems.append(
            f"shape mismatch at '{key}': checkpoint {list(state[key].shape)} "
            f"vs network {list(expected[key].shape)}"
            f" ({len(mismatched)} mismatched)"
        )
    raise ValueError(
        f"checkpoint {path} does not fit the network built from {config_name}: {'; '.join(problems)}. "
        "Is the config the one the checkpoint was trained with?"
    )


def _check_shadow(trainable, shadow, path, config_name):
    if len(shadow) != len(trainable):
        raise ValueError(
            f"checkpoint {path}: ema.shadow_params has {len(shadow)} tensors but the network built from "
            f"{config_name} has {len(trainable)} trainable parameters"
        )
    for (name, param), value in zip(trainable, shadow, strict=True):
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"checkpoint {path}: ema.shadow_params entry for '{name}' has shape {list(value.shape)}, "
                f"the network built from {config_name} needs {list(param.shape)}"
            )


def _as_int(value):
    return None if value is None else int(value)


def _atomic_save(payload, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)
