"""The evidence problems of experiments/iscs_eval.py run on the harness at toy size, and records of
two priors stay apart in one results file."""

import json
import math

import pytest
from test_entry import export_tiny_prior, tiny_config
from test_experiments import TOY, synthetic_template

from experiments import iscs_eval

NEW_PROBLEMS = ("ZSR-5", "SVCT-30:shepp-logan", "SVCT-30:torso", "LACT-100:torso", "ZSR-4:brain-mr")


@pytest.fixture
def toy(tmp_path):
    """Flags of a toy harness experiment in ``tmp_path``, and the tiny prior's path."""
    prior = export_tiny_prior(tmp_path / "tiny.pt", tiny_config())
    template = synthetic_template(tmp_path / "template.pt")
    flags = ["--mri-checkpoint", prior, "--mri-template", template, "--tuning", tmp_path / "tuning.json"]
    flags += ["--results", tmp_path / "results.jsonl", "--cache", tmp_path / "cache", "--external", "1"]
    return tmp_path, prior, TOY + ["--harness"] + [str(flag) for flag in flags]


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tag(path):
    return iscs_eval.prior_tag(path, iscs_eval.checkpoint_hash(path))


def test_new_problems_run_one_case_each(toy):
    folder, prior, flags = toy
    only = ["--only"] + [f"{problem}/*/DDS/iid/seed0/*" for problem in NEW_PROBLEMS]
    assert iscs_eval.main(flags + ["--ct-checkpoint", str(prior)] + only) == 0
    records = _records(folder / "results.jsonl")
    assert sorted(r["problem"] for r in records) == sorted(NEW_PROBLEMS)
    for record in records:
        assert record["key"].endswith(f"/{_tag(prior)}") and record["checkpoint"] == "tiny.pt"
        assert math.isfinite(record["metrics"]["psnr"]) and record["settings"]["size"] == 16, record["key"]
    zsr5 = next(r for r in records if r["problem"] == "ZSR-5")
    assert zsr5["key"].startswith("ZSR-5/mri-") and zsr5["prior"] == "mri"
    # Each external family's volume is generated once into the cache, beside the others.
    cached = sorted(path.name.split("_")[0] for path in (folder / "cache").iterdir())
    assert cached == sorted(["mri-1000001", "shepp-logan-2000000", "torso-2000000", "brain-mr-2000000"])


def test_two_priors_keep_separate_records(toy, capsys):
    folder, prior, flags = toy
    other = export_tiny_prior(folder / "other.pt", tiny_config(), seed=1)
    results = folder / "results.jsonl"
    only = ["--only", "LACT-100/*/DDNM/iid/seed0/*", "LACT-100/*/FDK/*"]
    assert iscs_eval.main(flags + ["--ct-checkpoint", str(prior)] + only) == 0
    first = results.read_bytes()
    # The same prior again: nothing runs, the file stays as it was.
    assert iscs_eval.main(flags + ["--ct-checkpoint", str(prior)] + only) == 0
    assert results.read_bytes() == first
    # Another prior: its DDNM case runs (the prior-free FDK case does not), appended after the first.
    assert iscs_eval.main(flags + ["--ct-checkpoint", str(other)] + only) == 0
    records = _records(results)
    assert results.read_bytes().startswith(first)
    assert [(r["method"], r["checkpoint"], r["checkpoint_sha256"]) for r in records] == [
        ("DDNM", "tiny.pt", iscs_eval.checkpoint_hash(prior)),
        ("FDK", None, None),
        ("DDNM", "other.pt", iscs_eval.checkpoint_hash(other)),
    ]
    assert records[0]["key"] == f"{records[2]['key'].rsplit('/', 1)[0]}/{_tag(prior)}"
    assert records[2]["key"].endswith(f"/{_tag(other)}") and _tag(prior) != _tag(other)
    assert {r["pinv"] for r in records if r["method"] == "DDNM"} == {"sirt"}
    assert records[0]["metrics"] != records[2]["metrics"]
