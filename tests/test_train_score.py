"""The training script at toy size: the loss falls, resuming is exact, the export loads."""

import json

import pytest
import torch
import yaml

import models
import train_score
from datasets import ct_phantom


@pytest.fixture(autouse=True)
def one_thread():
    """Toy-size training is bound by per-op overhead: one thread avoids cross-thread waits (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = ["--data", "phantom", "--pool-size", "2", "--pool-depth", "4", "--refresh-every", "1", "--log-every", "1",
        "--sample-steps", "0", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """The shipped CT config shrunk to 16x16 images and nf 8 (same family and options)."""
    with open("configs/ve/CT_phantom_128.yaml", encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["data"]["image_size"] = 16
    config["model"].update(nf=8, ch_mult=[1, 2], attn_resolutions=[8])
    config["training"]["batch_size"] = 4
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config, run_dir, *extra):
    return train_score.main(["--config", str(config), "--run-dir", str(run_dir), *TINY, *extra])


def test_shipped_configs_load_and_fit_the_size_budget():
    for name in ("CT_phantom_128", "MRI_ZSR_128"):
        config = models.load_config(f"configs/ve/{name}.yaml")
        net = models.build_model(config)
        params = sum(p.numel() for p in net.parameters())
        assert config.data.image_size == 128 and params <= 7_000_000
        assert config.model.sigma_min == 0.01 and config.model.sigma_max > 1


def test_loss_falls_on_a_fixed_batch(tiny_config):
    args = train_score.build_parser().parse_args(
        ["--config", str(tiny_config), "--run-dir", "unused", *TINY, "--lr", "2e-3", "--warmup", "1"])
    trainer = train_score.Trainer(args, train_score.resolve(args))
    x = trainer.data.batch(8, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):
        trainer.noise_gen.manual_seed(11)  # the same t and z every step: a fixed objective
        losses.append(float(trainer.train_step(x)[0]))
    assert losses[0] == pytest.approx(16 * 16, rel=0.3)  # the zero-initialised output layer gives score 0
    assert losses[-1] < 0.5 * losses[0]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_resume_continues_with_identical_state(tiny_config, tmp_path):
    _run(tiny_config, tmp_path / "straight", "--max-steps", "4")
    _run(tiny_config, tmp_path / "split", "--max-steps", "2")
    _run(tiny_config, tmp_path / "split", "--max-steps", "4", "--resume")
    a = torch.load(tmp_path / "straight/checkpoints/checkpoint_4.pth", weights_only=True)
    b = torch.load(tmp_path / "split/checkpoints/checkpoint_4.pth", weights_only=True)
    assert a["step"] == b["step"] == 4
    # score_sde's layout: the keys of a DataParallel-wrapped model, which resume reads back.
    assert a["model"] and all(key.startswith("module.") for key in a["model"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]))
    assert a["ema"]["num_updates"] == b["ema"]["num_updates"] == 4
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(x["exp_avg"], y["exp_avg"]) and torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
    ta = torch.load(tmp_path / "straight/checkpoints/trainer_4.pt", weights_only=True)
    tb = torch.load(tmp_path / "split/checkpoints/trainer_4.pt", weights_only=True)
    assert ta["data"] == tb["data"] and ta["data"]["made"] == 2 + 3  # pool of 2, refreshed at batches 1, 2, 3
    calls = [json.loads(line) for line in (tmp_path / "split/calls.jsonl").read_text().splitlines()]
    assert [(c["first_step"], c["last_step"]) for c in calls] == [(0, 2), (2, 4)]
    log = [json.loads(line) for line in (tmp_path / "split/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_time_budget_stops_cleanly_and_export_loads(tiny_config, tmp_path):
    run = tmp_path / "run"
    export = tmp_path / "prior.pt"
    _run(tiny_config, run, "--max-steps", "3", "--sample-steps", "2", "--num-samples", "2", "--export", str(export))
    assert (run / "samples/step_0000003_pc2.png").is_file()
    _run(tiny_config, run, "--max-steps", "100", "--resume", "--max-minutes", "0.001", "--reserve-seconds", "0")
    last = json.loads((run / "calls.jsonl").read_text().splitlines()[-1])
    assert last["stopped"] == "time budget" and last["last_step"] == 3
    shipped = models.load_score_model(None, export)
    reference = models.load_score_model(tiny_config, run / "checkpoints/checkpoint_3.pth")
    assert shipped.checkpoint_info["meta"]["step"] == 3
    x, sigma = torch.rand(2, 1, 16, 16), torch.tensor([0.05, 5.0])
    with torch.no_grad():
        assert torch.allclose(shipped(x, sigma), reference(x, sigma), rtol=2e-2, atol=2e-2)
    # A new run started from the export carries the step count on and warms the fresh optimiser up again.
    _run(tiny_config, tmp_path / "continued", "--max-steps", "5", "--init-weights", str(export), "--warmup", "10")
    calls = json.loads((tmp_path / "continued/calls.jsonl").read_text())
    first = json.loads((tmp_path / "continued/log.jsonl").read_text().splitlines()[0])
    assert (calls["first_step"], calls["last_step"]) == (3, 5)
    assert first["step"] == 4 and first["lr"] == pytest.approx(0.1 * 5e-4)


def test_sample_grid_png_decodes(tmp_path):
    import matplotlib.image

    samples = torch.rand(3, 1, 5, 4, generator=torch.Generator().manual_seed(0))
    train_score.save_grid(samples, tmp_path / "grid.png", pad=1)
    image = matplotlib.image.imread(tmp_path / "grid.png")
    assert image.shape[:2] == (2 * 6 + 1, 2 * 5 + 1)
    expected = (samples[2, 0] * 255).round() / 255
    assert torch.allclose(torch.from_numpy(image[7:12, 1:5].copy()).float(), expected, atol=1e-6)
    assert float(image[:, 0].max()) == 0.0


def test_refusals(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        _run(tiny_config, tmp_path / "a", "--max-steps", "1", "--first-data-seed", str(ct_phantom.DEMO_SEED))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(tiny_config, tmp_path / "b", "--max-steps", "1", "--resume")
    _run(tiny_config, tmp_path / "c", "--max-steps", "1")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _run(tiny_config, tmp_path / "c", "--max-steps", "2")


class RunsCode:
    """Unpickling it creates the marker file (os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("target", ["checkpoint", "trainer", "init-weights"])
def test_resume_and_init_weights_never_run_code_from_files(tiny_config, tmp_path, target):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    if target == "init-weights":
        evil = tmp_path / "evil.pt"
        torch.save({"format": "iscs-score-weights", "config": RunsCode(marker)}, evil)
        extra = ["--init-weights", str(evil)]
    else:
        _run(tiny_config, run, "--max-steps", "1")
        evil = run / "checkpoints" / ("checkpoint_1.pth" if target == "checkpoint" else "trainer_1.pt")
        torch.save({"model": {}, "ema": RunsCode(marker), "step": 1}, evil)
        extra = ["--resume"]
    with pytest.raises(models.UnsafeCheckpointError) as info:
        _run(tiny_config, run, "--max-steps", "2", *extra)
    assert not marker.exists()
    assert "\n" not in str(info.value) and str(evil) in str(info.value) and "posix.system" in str(info.value)


def test_max_pairwise_distance_closed_form():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [1.0, 1.0]])
    assert train_score.max_pairwise_distance(points, chunk=3) == pytest.approx(10.0)


def test_pc_sampler_recovers_a_point_mass():
    """With the exact score of a point mass x0, s(x, sigma) = (x0 - x) / sigma^2, the samples land on x0."""
    x0 = torch.linspace(0.1, 0.9, 16).view(1, 1, 4, 4)

    def score(x, sigma):
        return (x0 - x) / torch.as_tensor(sigma).view(-1, 1, 1, 1) ** 2

    out = train_score.pc_sample(score, (6, 1, 4, 4), 0.01, 10.0, 100, torch.Generator().manual_seed(0))
    again = train_score.pc_sample(score, (6, 1, 4, 4), 0.01, 10.0, 100, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert (out - x0).abs().max() < 0.03
