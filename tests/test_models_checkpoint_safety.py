"""Checkpoint files never run code: malicious pickles are refused by every loader in one line, while
real score_sde / DiffusionMBIR checkpoints (numpy scalars in the optimizer state) load without opt-in."""

import argparse
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from models import (
    ExponentialMovingAverage,
    UnsafeCheckpointError,
    build_model,
    load_score_model,
    read_checkpoint,
)
from models.convert_checkpoint import main as convert_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "data", "parity_small_config.yaml")


class SystemPayload:
    """Unpickling it runs a shell command (os.system) that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload(SystemPayload):
    """Unpickling it runs Python (builtins.exec) that creates the marker file."""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _write(kind, payload, path):
    if kind == "pickle-4":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    elif kind == "pickle-2":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif kind == "torch-zip":
        torch.save(payload, path)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    return path


FORMATS = ("pickle-4", "pickle-2", "torch-zip", "torch-legacy")
PAYLOADS = {"posix.system": SystemPayload, "builtins.exec": ExecPayload}


@pytest.fixture(params=[(f, g) for f in FORMATS for g in PAYLOADS], ids=lambda p: f"{p[0]}-{p[1]}")
def malicious(request, tmp_path):
    """(file, marker, name of the global it calls): a score_sde-shaped checkpoint whose 'ema' runs code."""
    kind, name = request.param
    marker = tmp_path / "marker"
    payload = {"model": {"w": 0.0}, "ema": PAYLOADS[name](marker), "step": 1}
    path = _write(kind, payload, tmp_path / f"evil-{kind}.pth")
    # The payload must really be live: a full unpickle creates the marker.
    with open(path, "rb") as handle:
        (pickle.load(handle) if kind.startswith("pickle") else torch.load(handle, weights_only=False))
    assert marker.exists()
    marker.unlink()
    return path, marker, name


def _assert_refused(err, path, name):
    message = str(err)
    assert "\n" not in message
    assert str(path) in message and name in message
    assert "trust=True" in message and "python -m models.convert_checkpoint" in message


@pytest.mark.parametrize(
    "loader",
    [
        lambda path: read_checkpoint(path),
        lambda path: load_score_model(CONFIG, path),
        lambda path: load_score_model(None, path),
    ],
    ids=["read_checkpoint", "load_score_model", "load_score_model-compact"],
)
def test_malicious_files_run_nothing_in_the_loaders(malicious, loader):
    path, marker, name = malicious
    with pytest.raises(UnsafeCheckpointError) as info:
        loader(path)
    assert not marker.exists()
    _assert_refused(info.value, path, name)


def test_conversion_refuses_without_confirmation(malicious, tmp_path, capsys):
    path, marker, name = malicious
    assert convert_main([str(path), str(tmp_path / "out.pt")]) == 2
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and name in error


@pytest.fixture(scope="module")
def score_sde_run():
    """(saved_state with its step left out, score of the EMA weights on fixed inputs): one training
    step as score_sde's run_lib / losses / utils.save_checkpoint take and write it.

    The model is wrapped in DataParallel, the optimizer is Adam, and the learning-rate warm-up
    (losses.optimization_manager) stores lr * np.minimum(step / warmup, 1.0), a numpy.float64, in
    the optimizer's param_groups."""
    model = torch.nn.DataParallel(build_model(CONFIG, generator=torch.Generator().manual_seed(2)))
    ema = ExponentialMovingAverage(model.parameters(), decay=0.999)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    state = {"optimizer": optimizer, "model": model, "ema": ema, "step": 3}
    for group in optimizer.param_groups:
        group["lr"] = 2e-4 * np.minimum(state["step"] / 5000, 1.0)
    for param in model.parameters():
        param.grad = torch.full_like(param, 1e-3)
    optimizer.step()
    ema.update(model.parameters())
    saved_state = {
        "optimizer": state["optimizer"].state_dict(),
        "model": state["model"].state_dict(),
        "ema": state["ema"].state_dict(),
    }
    ema.copy_to(model.parameters())
    with torch.no_grad():
        score = model.eval()(*INPUTS)
    return saved_state, score


INPUTS = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(8)), torch.tensor([0.5, 20.0]))


def _as_numpy1_file(path):
    """Rewrite a torch zip file so that its numpy scalars are pickled under numpy 1's module path."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data or b"numpy.core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            target.writestr(item, data)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    "step, numpy1",
    [(7, False), (torch.tensor(7), False), (np.int64(7), False), (7, True)],
    ids=["int-step", "tensor-step", "numpy-step", "numpy1-pickles"],
)
def test_real_score_sde_checkpoints_with_numpy_state_load_without_opt_in(
    tmp_path, score_sde_run, step, numpy1
):
    saved_state, score = score_sde_run
    path = tmp_path / "checkpoint.pth"
    torch.save({**saved_state, "step": step}, path)
    if numpy1:
        _as_numpy1_file(path)
    lr = read_checkpoint(path)["optimizer"]["param_groups"][0]["lr"]
    assert isinstance(lr, np.float64) and lr == pytest.approx(2e-4 * 3 / 5000)
    net = load_score_model(CONFIG, path)
    assert net.checkpoint_info["step"] == 7
    with torch.no_grad():
        torch.testing.assert_close(net(*INPUTS), score, rtol=0, atol=0)


def test_a_trusted_file_loads_with_trust_and_converts_to_a_safe_compact_file(tmp_path, score_sde_run):
    saved_state, score = score_sde_run
    path = tmp_path / "with_args.pth"
    # Many training scripts store their arguments beside the weights.
    torch.save({**saved_state, "step": 7, "args": argparse.Namespace(lr=2e-4)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"it holds argparse\.Namespace"):
        load_score_model(CONFIG, path)
    out = tmp_path / "converted.pt"
    assert convert_main([str(path), str(out), "--trust-source", "--config", CONFIG]) == 0
    converted = load_score_model(None, out)
    assert converted.checkpoint_info["meta"] == {"converted_from": "with_args.pth", "step": 7}
    with torch.no_grad():
        torch.testing.assert_close(converted(*INPUTS), score, rtol=0, atol=0)


def test_unreadable_files_fail_in_one_line(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"junk\.pth could not be read as a torch checkpoint") as info:
        read_checkpoint(junk)
    assert not isinstance(info.value, UnsafeCheckpointError) and "\n" not in str(info.value)
    with pytest.raises(IsADirectoryError):
        read_checkpoint(tmp_path)
