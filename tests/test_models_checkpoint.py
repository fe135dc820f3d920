"""Checkpoints: score_sde parity, round trips of both formats, and load errors that name the problem."""

import os

import pytest
import torch

from models import (
    ExponentialMovingAverage,
    build_model,
    export_weights,
    load_config,
    load_score_model,
    save_checkpoint,
)
from models.checkpoint import COMPACT_FORMAT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
CONFIG = os.path.join(DATA, "parity_small_config.yaml")
CHECKPOINT = os.path.join(DATA, "parity_small_checkpoint.pth")
EXPECTED = os.path.join(DATA, "parity_small_expected.pt")


@pytest.fixture(scope="module")
def expected():
    return torch.load(EXPECTED, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def parity_net():
    return load_score_model(CONFIG, CHECKPOINT)


def test_parity_with_the_reference_network(parity_net, expected):
    assert not parity_net.training
    with torch.no_grad():
        score = parity_net(expected["x"], expected["sigma"])
    assert (score - expected["score"]).abs().max().item() <= 1e-5
    assert parity_net.checkpoint_info["format"] == "score_sde" and parity_net.checkpoint_info["step"] == 1000


def test_ema_weights_are_applied_and_fourier_w_comes_from_model(parity_net):
    raw = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    trainable = [p for p in parity_net.parameters() if p.requires_grad]
    for param, shadow in zip(trainable, raw["ema"]["shadow_params"], strict=True):
        assert torch.equal(param, shadow)
    assert torch.equal(parity_net.all_modules[0].W, raw["model"]["module.all_modules.0.W"])
    assert not torch.equal(trainable[0], raw["model"]["module.all_modules.1.weight"])


def _trained_pieces(gen):
    """A parity-config network with an EMA that differs from its weights, and an optimiser."""
    net = build_model(CONFIG, generator=torch.Generator().manual_seed(5))
    ema = ExponentialMovingAverage(net.parameters(), decay=0.9)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    ema.update(net.parameters())
    return net, ema, optimizer


@pytest.mark.parametrize("prefixed", [True, False], ids=["as-written", "without-module-prefix"])
def test_score_sde_round_trip(tmp_path, gen, prefixed):
    net, ema, optimizer = _trained_pieces(gen)
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, net, ema, optimizer, step=12)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "ema", "optimizer", "step"}
    assert all(key.startswith("module.") for key in raw["model"])
    if not prefixed:
        raw["model"] = {k[len("module.") :]: v for k, v in raw["model"].items()}
        torch.save(raw, path)
    loaded = load_score_model(CONFIG, path)
    ema.copy_to(net.parameters())
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.checkpoint_info["step"] == 12


def _score_sde_restore(ckpt_dir, state, device):
    """score_sde's utils.restore_checkpoint, line for line (its model is wrapped in DataParallel)."""
    loaded_state = torch.load(ckpt_dir, map_location=device)
    state["optimizer"].load_state_dict(loaded_state["optimizer"])
    state["model"].load_state_dict(loaded_state["model"], strict=False)
    state["ema"].load_state_dict(loaded_state["ema"])
    state["step"] = loaded_state["step"]
    return state


def test_score_sde_restore_loads_every_key_and_gives_our_score(tmp_path, gen, expected):
    net, ema, optimizer = _trained_pieces(gen)
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, net, ema, optimizer, step=12)
    # score_sde's side: mutils.create_model wraps a fresh network in DataParallel.
    model = torch.nn.DataParallel(build_model(CONFIG, generator=torch.Generator().manual_seed(99)))
    theirs = ExponentialMovingAverage(model.parameters(), decay=0.999)
    adam = torch.optim.Adam(model.parameters(), lr=2e-4)
    state = _score_sde_restore(path, dict(optimizer=adam, model=model, ema=theirs, step=0), "cpu")
    missing, unexpected = model.load_state_dict(torch.load(path)["model"], strict=True)
    assert (missing, unexpected) == ([], [])
    assert torch.equal(model.module.all_modules[0].W, net.all_modules[0].W)
    assert state["step"] == 12
    theirs.copy_to(model.parameters())
    ours = load_score_model(CONFIG, path)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(expected["x"], expected["sigma"]),
            ours(expected["x"], expected["sigma"]),
            rtol=0,
            atol=0,
        )


def test_compact_round_trip_fp32_is_exact(tmp_path, parity_net):
    path = tmp_path / "weights.pt"
    export_weights(path, parity_net, CONFIG, meta={"step": 1000, "data": "AAPM"}, dtype=torch.float32)
    loaded = load_score_model(None, path)
    for (name, a), b in zip(parity_net.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.checkpoint_info["meta"] == {"step": 1000, "data": "AAPM"}
    assert loaded.checkpoint_info["step"] == 1000
    assert load_score_model(CONFIG, path).config.model.to_dict() == load_config(CONFIG).model.to_dict()


def test_compact_fp16_keeps_embedding_and_buffers_at_full_precision(tmp_path, parity_net, expected):
    path = tmp_path / "weights.pt"
    export_weights(path, parity_net, CONFIG)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == COMPACT_FORMAT
    assert raw["state_dict"]["all_modules.1.weight"].dtype == torch.float16
    assert raw["state_dict"]["all_modules.0.W"].dtype == torch.float32
    assert raw["state_dict"]["sigmas"].dtype == torch.float64
    loaded = load_score_model(None, path)
    with torch.no_grad():
        error = (loaded(expected["x"], expected["sigma"]) - expected["score"]).abs().max().item()
    assert error < 1e-3 * expected["score"].abs().max().item()


def test_wrong_architecture_names_first_missing_and_unexpected_keys(tmp_path, parity_net):
    other = load_config(CONFIG).to_dict()
    other["model"]["num_res_blocks"] = 2
    with pytest.raises(ValueError) as info:
        load_score_model(other, CHECKPOINT)
    message = str(info.value)
    assert CHECKPOINT in message and "num_res_blocks=2" in message
    assert "first missing key 'all_modules." in message and "first unexpected key" in message


def test_shape_mismatch_is_named(tmp_path):
    wider = load_config(CONFIG).to_dict()
    wider["model"]["nf"] = 32
    with pytest.raises(
        ValueError, match=r"shape mismatch at 'all_modules.0.W': checkpoint \[16\] vs network \[32\]"
    ):
        load_score_model(wider, CHECKPOINT)


def test_ema_of_another_network_is_rejected(tmp_path):
    raw = torch.load(CHECKPOINT, weights_only=True)
    raw["ema"]["shadow_params"] = raw["ema"]["shadow_params"][:-1]
    path = tmp_path / "short_ema.pth"
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"ema\.shadow_params has 275 tensors but the network .* has 276"):
        load_score_model(CONFIG, path)


def test_compact_file_with_a_differing_config_is_rejected(tmp_path, parity_net):
    path = tmp_path / "weights.pt"
    export_weights(path, parity_net, CONFIG)
    other = load_config(CONFIG).to_dict()
    other["model"]["fourier_scale"] = 8
    with pytest.raises(ValueError, match=r"differs from the one stored in .* at model.fourier_scale"):
        load_score_model(other, path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing_here\.pth"):
        load_score_model(CONFIG, tmp_path / "nothing_here.pth")
    path = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"neither a score_sde checkpoint .* nor a compact file"):
        load_score_model(CONFIG, path)
    with pytest.raises(ValueError, match="holds no config"):
        load_score_model(None, CHECKPOINT)


def test_export_rejects_bad_dtype_and_meta(tmp_path, parity_net):
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_weights(tmp_path / "w.pt", parity_net, CONFIG, dtype=torch.int8)
    with pytest.raises(TypeError, match="meta must be JSON-serialisable"):
        export_weights(tmp_path / "w.pt", parity_net, CONFIG, meta={"when": object()})
