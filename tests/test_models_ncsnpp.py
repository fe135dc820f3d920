"""NCSN++: the published state-dict layout, every architecture option at tiny size, and forward properties."""

import os

import pytest
import torch

from models import build_model, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AAPM = os.path.join(ROOT, "configs", "ve", "AAPM_256_ncsnpp_Chung.yaml")
PARITY = os.path.join(ROOT, "tests", "data", "parity_small_config.yaml")
LAYOUT_NAME = "ncsnpp_AAPM_256_state_dict.tsv"
LAYOUT = next(
    (
        path
        for path in (
            os.path.join(ROOT, "tests", "data", LAYOUT_NAME),
            os.path.join(ROOT, "..", "shared", "reference", LAYOUT_NAME),
        )
        if os.path.exists(path)
    ),
    None,
)


def tiny_config(**model):
    """A 16x16, nf 8 config of the parity family with the given model keys changed."""
    raw = load_config(PARITY).to_dict()
    raw["data"]["image_size"] = 16
    raw["model"].update(nf=8, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8])
    raw["model"].update(model)
    if raw["model"]["embedding_type"] == "positional":
        raw["training"]["continuous"] = False
    return load_config(raw)


def tiny_inputs(gen, batch=2):
    return torch.rand(batch, 1, 16, 16, generator=gen), torch.tensor([0.5, 20.0, 3.0, 0.05][:batch])


@pytest.mark.skipif(LAYOUT is None, reason="the reference layout file is in neither tests/data nor ../shared")
def test_state_dict_matches_published_layout():
    net = build_model(AAPM, generator=torch.Generator().manual_seed(0))
    with open(LAYOUT, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if not line.startswith("#")]
    ours = [
        [key, str(list(value.shape)), str(isinstance(value, torch.nn.Parameter))]
        for key, value in net.state_dict(keep_vars=True).items()
    ]
    assert ours == rows
    assert sum(p.numel() for p in net.parameters()) == 61_433_601
    assert not net.all_modules[0].W.requires_grad
    assert net.sigmas.dtype == torch.float64
    torch.testing.assert_close(net.sigmas[[0, -1]], torch.tensor([378.0, 0.01], dtype=torch.float64))


OPTIONS = [
    {},
    {"resblock_type": "ddpm", "fir": False},
    {"resblock_type": "ddpm", "fir": True},
    {"resblock_type": "ddpm", "fir": True, "resamp_with_conv": False},
    {"resblock_type": "ddpm", "fir": False, "resamp_with_conv": False},
    {"fir": False},
    {"fir_kernel": [1, 2, 1]},
    {"progressive": "output_skip", "progressive_input": "input_skip"},
    {"progressive": "output_skip", "progressive_input": "input_skip", "progressive_combine": "cat"},
    {"progressive": "residual", "progressive_input": "residual"},
    {"progressive": "residual", "fir": False, "resblock_type": "ddpm"},
    {"progressive_input": "none"},
    {"progressive_input": "input_skip", "progressive_combine": "cat", "resblock_type": "ddpm"},
    {"embedding_type": "positional"},
    {"conditional": False},
    {"scale_by_sigma": False, "skip_rescale": False},
    {"nonlinearity": "elu", "init_scale": 0.5, "fourier_scale": 2.0},
    {"nonlinearity": "relu", "dropout": 0.1},
    {"nonlinearity": "lrelu", "ch_mult": [2], "attn_resolutions": [16]},
    {"ch_mult": [1, 1, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16, 4]},
]


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_every_option_builds_runs_and_trains(gen, options):
    config = tiny_config(**options)
    net = build_model(config, generator=torch.Generator().manual_seed(7))
    twin = build_model(config, generator=torch.Generator().manual_seed(7))
    x, sigma = tiny_inputs(gen)
    net.eval()
    twin.eval()
    out = net(x, sigma)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out, twin(x, sigma))
    net.train()
    net(x, sigma).square().mean().backward()
    unused = [
        name
        for name, p in net.named_parameters()
        if p.requires_grad and p.grad is None and not (".Dense_0." in name and not config.model.conditional)
    ]
    assert unused == []


def test_scale_by_sigma_divides_the_output(gen):
    scaled = build_model(tiny_config(), generator=torch.Generator().manual_seed(3)).eval()
    plain = build_model(tiny_config(scale_by_sigma=False)).eval()
    plain.load_state_dict(scaled.state_dict())
    x, sigma = tiny_inputs(gen)
    torch.testing.assert_close(scaled(x, sigma), plain(x, sigma) / sigma[:, None, None, None])


def test_centered_network_takes_inputs_in_minus_one_one(gen):
    net = build_model(tiny_config(), generator=torch.Generator().manual_seed(3)).eval()
    centered = build_model(
        load_config({**tiny_config().to_dict(), "data": {**tiny_config().data.to_dict(), "centered": True}})
    ).eval()
    centered.load_state_dict(net.state_dict())
    x, sigma = tiny_inputs(gen)
    torch.testing.assert_close(net(x, sigma), centered(2 * x - 1, sigma))


def test_positional_embedding_uses_the_nearest_table_entry(gen):
    net = build_model(
        tiny_config(embedding_type="positional", num_scales=10), generator=torch.Generator().manual_seed(3)
    )
    net.eval()
    x, _ = tiny_inputs(gen)
    table = net.sigmas.float()
    exact = table[[2, 7]]
    nearby = exact * torch.tensor([1.05, 0.96])
    torch.testing.assert_close(net(x, nearby), net(x, exact))
    assert not torch.allclose(net(x, table[[3, 7]]), net(x, exact))


def test_zero_dim_sigma_is_broadcast(gen):
    net = build_model(tiny_config(), generator=torch.Generator().manual_seed(3)).eval()
    x, _ = tiny_inputs(gen)
    torch.testing.assert_close(net(x, torch.tensor(2.0)), net(x, torch.tensor([2.0, 2.0])))


def test_channels_last_gives_the_same_numbers(gen):
    net = build_model(tiny_config(), generator=torch.Generator().manual_seed(3)).eval()
    x, sigma = tiny_inputs(gen)
    expected = net(x, sigma)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last), sigma)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_stays_close_to_fp32(gen):
    net = build_model(tiny_config(init_scale=1.0), generator=torch.Generator().manual_seed(3)).eval()
    x, sigma = tiny_inputs(gen)
    expected = net(x, sigma)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, sigma)
    assert out.dtype == torch.float32
    assert (out - expected).norm() / expected.norm() < 5e-2


def test_group_norm_width_error_names_the_rule():
    with pytest.raises(ValueError, match=r"GroupNorm over 13 channels needs .* min\(C // 4, 32\) = 3"):
        build_model(tiny_config(nf=13, ch_mult=[1]))
