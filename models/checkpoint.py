"""Score-model checkpoints: score_sde training checkpoints and our compact weights-only files.

score_sde format: {"model": state dict (keys carry DataParallel's "module." prefix, as score_sde
writes them; files without it are read too), "ema": {"decay", "num_updates", "shadow_params":
[tensors of the parameters that require grad, in order]}, "optimizer": state dict, "step": int or
0-d tensor}.

Compact format (export_weights): {"format": COMPACT_FORMAT, "version": 1, "config": plain dict,
"state_dict": EMA weights (trainable parameters in fp16/bf16/fp32, everything else at full
precision), "meta": JSON-like dict}.

Every file is read by read_checkpoint, which never runs code stored in a file: torch's weights-only
unpickler with an allow-list of exactly the objects real score_sde / DiffusionMBIR checkpoints hold
beyond tensors and Python containers (numpy scalars and their dtypes, which score_sde's warm-up
writes into the optimizer's learning rate). Anything else is refused in one line that names the
first disallowed object and the two ways on: trust=True for a file from a trusted source, or a
one-off conversion to the compact format (python -m models.convert_checkpoint).
"""

import contextlib
import json
import pickle
import re
import warnings
from pathlib import Path

import torch

from models.config import SCHEMA, describe_source, load_config
from models.ncsnpp import build_model
from utils.io import write_verified

COMPACT_FORMAT = "iscs-score-weights"
COMPACT_VERSION = 1
MODULE_PREFIX = "module."
"""The key prefix of a model wrapped in torch.nn.DataParallel, as score_sde trains and saves it."""
_EXPORT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NOT_NETWORK = {"ema_rate", "beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales", "dropout"}
NETWORK_KEYS = tuple(
    [("model", key) for key in SCHEMA["model"] if key not in _NOT_NETWORK]
    + [("data", key) for key in ("image_size", "num_channels", "centered")]
)
"""(section, key) pairs that define the network's function; a config given with a compact file must match."""

NUMPY_SCALAR_TYPES = ("float64", "float32", "int64", "int32")
"""numpy scalar types a checkpoint may hold (score_sde's warm-up stores the learning rate as a
numpy.float64; step counters can be numpy integers); each is read back as that numpy scalar."""

_REFUSED_OBJECT = (
    re.compile(r"GLOBAL (\S+)"),
    re.compile(r"unrecognized function (\S+)"),
    re.compile(r"but got (<class '[^']+'>|\S+)"),
)
"""Where torch's weights-only unpickler names what it refused, in the order its messages use."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds objects whose unpickling could run code; it was not unpickled."""


def read_checkpoint(path, trust: bool = False, map_location="cpu"):
    """The object stored in a torch checkpoint file, unpickled without running code stored in it.

    Args:
        path: the file (torch zip format or legacy pickle).
        trust: unpickle in full (weights_only=False), which runs any code the file holds; only for
            files from a trusted source that the safe loader refuses.
        map_location: where tensors are placed (torch.load's argument).

    Raises:
        FileNotFoundError, IsADirectoryError: no file at path.
        UnsafeCheckpointError: the file holds an object outside the allow-list (nothing of it ran).
        ValueError: the file is not a readable torch checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; a checkpoint file is accepted")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False)
        with _allowed_globals(), warnings.catch_warnings():
            # Plain pickles of protocol 4 and up make torch warn before it refuses them.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = None if trust else _refused_object(str(err), path)
        if refused is not None:
            raise UnsafeCheckpointError(
                f"{path} was not loaded: it holds {refused}, which a checkpoint of weights does not need "
                "and whose unpickling could run code; if you trust its source, load it with trust=True "
                f"(--trust-checkpoint) or convert it once: python -m models.convert_checkpoint {path} OUT "
                "--trust-source [--config CONFIG]"
            ) from None
        raise ValueError(f"{path} could not be read as a torch checkpoint ({_first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, AttributeError, ImportError, KeyError, ValueError) as err:
        raise ValueError(f"{path} could not be read as a torch checkpoint ({_first_line(err)})") from None


def load_score_model(config, checkpoint_path, device="cpu", trust: bool = False):
    """Build the score network and load a checkpoint into it, EMA weights applied, in eval mode.

    Args:
        config: YAML or score_sde .py path, dict or ConfigDict of the network; for a compact file
            None takes the config stored in it (a given config must then agree with the stored one).
        checkpoint_path: score_sde checkpoint or compact file written by export_weights.
        device: where the network is placed.
        trust: read the file with full unpickling (see read_checkpoint); off by default.

    Returns:
        nn.Module with net(x [B,1,H,W] in [0,1], sigma [B]) -> score [B,1,H,W]; net.config is the
        config and net.checkpoint_info holds path, format, step and meta.

    Raises:
        FileNotFoundError: no file at checkpoint_path.
        UnsafeCheckpointError: the file holds objects outside the allow-list (see read_checkpoint).
        ValueError: not a known checkpoint format, or its weights do not fit the network (first
            missing and unexpected key, first shape mismatch, config and path named); nothing is
            loaded then.
    """
    path = Path(checkpoint_path)
    payload = read_checkpoint(path, trust=trust)
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

    The model's keys carry the "module." prefix of the torch.nn.DataParallel wrapper that score_sde
    trains in, so score_sde's own restore_checkpoint loads every key of the file.

    Args:
        path: destination file (written by atomic_save).
        model: the network (unwrapped, or wrapped in DataParallel / DistributedDataParallel).
        ema: models.ExponentialMovingAverage of the model's parameters.
        optimizer: torch optimizer.
        step: training step.
    """
    wrapped = isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel))
    state = {
        "model": model.state_dict() if wrapped else model.state_dict(prefix=MODULE_PREFIX),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
    }
    atomic_save(state, path)


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
    atomic_save(payload, path)


def atomic_save(obj, path) -> None:
    """torch.save obj to path by :func:`utils.io.write_verified`, so a crash or a full disk never leaves a
    partial file under path.

    Raises:
        OSError: the file could not be written (one line naming it); no temporary file is left.
    """
    write_verified(path, lambda temporary: torch.save(obj, temporary))


def _allowed_globals():
    """The allow-list as torch's safe_globals context (torch >= 2.5; older torch keeps its defaults)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        return contextlib.nullcontext()
    return safe_globals(_numpy_globals())


def _numpy_globals():
    """numpy's scalar constructor (under the module names numpy 1 and numpy 2 pickle it with) and
    the dtype classes of NUMPY_SCALAR_TYPES."""
    import numpy as np

    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
    dtypes = [type(np.dtype(name)) for name in NUMPY_SCALAR_TYPES]
    # torch < 2.6 allow-lists by the object's own module path only.
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 6):
        return [scalar, np.dtype, *dtypes]
    names = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    return [*((scalar, name) for name in names), np.dtype, *dtypes]


def _refused_object(message, path):
    """The object a weights-only refusal of path names (None when the message is not a refusal)."""
    if "Weights only load failed" not in message:
        return None
    for pattern in _REFUSED_OBJECT:
        found = pattern.search(message)
        if found:
            name = found.group(1).rstrip(".,;")
            # torch names builtins without their module.
            return name if "." in name or name.startswith("<") else f"builtins.{name}"
    # torch's unpickler stops at pickle opcodes it does not parse (plain pickles of protocol 4 and up).
    try:
        return _first_global(path) or "pickle instructions outside the allow-list"
    except ValueError:
        return None


_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}


def _first_global(path):
    """module.name of the first global outside the allow-list that a pickle (or a torch zip file's
    data.pkl) imports, read opcode by opcode without unpickling; None when there is none.

    Raises:
        ValueError: the file is not a pickle.
    """
    import pickletools
    import zipfile

    from torch import _weights_only_unpickler

    allowed = set(_weights_only_unpickler._get_allowed_globals())
    for entry in _numpy_globals():
        allowed.add(entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith("data.pkl")]
            data = archive.read(names[0]) if names else b""
    else:
        data = path.read_bytes()
    strings, memo, pushed = [], [], None
    for opcode, arg, _ in pickletools.genops(data):
        name = None
        if opcode.name in ("GLOBAL", "INST"):
            name = arg.replace(" ", ".")
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            name = f"{strings[-2]}.{strings[-1]}"
        if name is not None and name not in allowed:
            return name
        if opcode.name == "MEMOIZE":
            memo.append(pushed)
            continue
        pushed = arg if opcode.name in _STRING_OPS else None
        if opcode.name in ("BINGET", "LONG_BINGET", "GET") and arg < len(memo):
            pushed = memo[arg]
        if pushed is not None:
            strings.append(pushed)
    return None


def _first_line(err):
    text = " ".join(str(err).split("\n")[0].split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


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
            f"{path} is a score_sde checkpoint, which holds no config: pass the model config "
            "(--config-path in the scripts)"
        )
    name = describe_source(config)
    config = load_config(config)
    net = build_model(config)
    state = strip_module_prefix(payload["model"])
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


def strip_module_prefix(state):
    """A model state dict without DataParallel's "module." prefix (unchanged if its keys lack it)."""
    if state and all(key.startswith(MODULE_PREFIX) for key in state):
        return {key[len(MODULE_PREFIX) :]: value for key, value in state.items()}
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
