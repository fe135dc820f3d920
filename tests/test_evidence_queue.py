"""The queue of experiments/iscs_eval.py (no model): problems, prior-tagged keys, filters and priority."""

import pytest

from experiments import iscs_eval

CT, MRI = "ct_new-aaaaaaaaaaaa", "mri_new-bbbbbbbbbbbb"
VOLUMES = {name: [10 * i + 1, 10 * i + 2] for i, name in enumerate(iscs_eval.PROBLEMS)}


def _queue(tags=None, seeds=range(2)):
    return iscs_eval.case_queue(VOLUMES, seeds, tags or {"ct": CT, "mri": MRI})


def _segments(queue):
    """Consecutive runs of the same (problem, method) in the queue."""
    segments = []
    for case in queue:
        if not segments or segments[-1] != (case.problem, case.method):
            segments.append((case.problem, case.method))
    return segments


def test_new_problems_and_keys():
    zsr5 = iscs_eval.PROBLEMS["ZSR-5"]
    assert (zsr5.task, zsr5.parameter, zsr5.source, zsr5.prior) == ("ZSR", 5, "mri", "mri")
    for name in ("SVCT-30:shepp-logan", "SVCT-30:torso", "LACT-100:torso", "ZSR-4:brain-mr"):
        base, family = name.split(":")
        assert iscs_eval.PROBLEMS[name].source == family and iscs_eval.tuned_problem(name) == base
        assert iscs_eval.PROBLEMS[name].prior == iscs_eval.PROBLEMS[base].prior
    # Records made before priors were tagged keep their keys; sampler cases now end with the prior.
    assert iscs_eval.Case("SVCT-30", 7, "DDS", "iid", 0).key == "SVCT-30/phantom-7/DDS/iid/seed0"
    assert iscs_eval.Case("SVCT-30", 7, "DDS", "iid", 0, CT).key == f"SVCT-30/phantom-7/DDS/iid/seed0/{CT}"
    keys = {case.key: case for case in _queue()}
    assert len(keys) == len(_queue())
    for case in keys.values():
        expected = {"ct": CT, "mri": MRI}[iscs_eval.PROBLEMS[case.problem].prior]
        assert case.prior == (expected if case.method in iscs_eval.SAMPLER_METHODS else "")
    # Another prior gives other keys for every sampler case and the same for the classical ones.
    other = {case.key for case in _queue({"ct": "ct_old-cccccccccccc", "mri": MRI})}
    ct_sampled = {k for k, c in keys.items() if c.prior == CT}
    assert ct_sampled and not ct_sampled & other
    assert {k for k, c in keys.items() if not c.prior} <= other


def test_checkpoint_hash_is_the_sha256_prefix(tmp_path):
    import hashlib

    path = tmp_path / "prior.pt"
    path.write_bytes(b"weights")
    digest = iscs_eval.checkpoint_hash(path)
    assert digest == hashlib.sha256(b"weights").hexdigest()[:12]
    assert iscs_eval.prior_tag(path, digest) == f"prior-{digest}"


def test_evidence_priority_order():
    queue = _queue()
    head = _segments(queue)[:6]
    assert head == [
        ("LACT-100", "DDNM"),
        ("SVCT-30:shepp-logan", "DDS"),
        ("SVCT-30:torso", "DDS"),
        ("SVCT-30:shepp-logan", "DDS"),
        ("SVCT-30:torso", "DDS"),
        ("ZSR-5", "DDS"),
    ]
    # LACT-100 DDNM pairs seed by seed: every volume with seed 0 before any seed 1.
    lact = [(c.seed, c.volume, c.noise) for c in queue[:8]]
    assert lact == [(s, v, n) for s in range(2) for v in VOLUMES["LACT-100"] for n in ("iid", "iscs")]
    order = [(c.problem, c.method) for c in queue]
    blocks = [
        order.index(("LACT-100", "DDNM")),
        order.index(("SVCT-30:torso", "DDS")),
        order.index(("ZSR-5", "DDS")),
        order.index(("SVCT-30", "DDS")),
        order.index(("SVCT-30:torso", "FDK")),
        order.index(("ZSR-4:brain-mr", "A_dagger")),
    ]
    assert blocks == sorted(blocks)
    # Then the classical baselines (FDK / A_dagger, ADMM-TV) of every external volume, before the rest.
    external = [c for c in queue if c.problem in iscs_eval.EXTERNAL_PROBLEMS and not c.prior]
    first_rest = next(i for i, c in enumerate(queue) if c.problem in ("SVCT-30", "LACT-100") and not c.prior)
    assert all(queue.index(c) < first_rest for c in external)
    assert len(external) == 2 * 2 * len(iscs_eval.EXTERNAL_PROBLEMS)
    # The paper order keeps its head; both orders hold the same cases.
    paper = iscs_eval.case_queue(VOLUMES, range(2), {"ct": CT, "mri": MRI}, priority="paper")
    assert _segments(paper)[0] == ("SVCT-30", "DDS") and set(paper) == set(queue)
    with pytest.raises(ValueError, match="priority 'fast': accepted evidence, paper"):
        iscs_eval.case_queue(VOLUMES, range(2), priority="fast")


def test_problem_and_method_filters():
    queue = _queue()
    chosen = iscs_eval.select(queue, ["LACT-100", "ZSR-5"], ["DDNM", "DDS"])
    assert chosen and {(c.problem, c.method) for c in chosen} == {
        ("LACT-100", "DDNM"),
        ("LACT-100", "DDS"),
        ("ZSR-5", "DDNM"),
        ("ZSR-5", "DDS"),
    }
    assert chosen == [c for c in queue if c in set(chosen)]
    assert iscs_eval.select(queue, None, None) == queue
    parser = iscs_eval.build_parser()
    args = parser.parse_args(["--problems", "SVCT-30:torso, ZSR-5", "--methods", "FDK"])
    assert (args.problems, args.methods, args.priority, args.precision) == (
        ("SVCT-30:torso", "ZSR-5"),
        ("FDK",),
        "evidence",
        "auto",
    )
    assert args.ct_checkpoint == iscs_eval.PROFILES["SVCT"].checkpoint


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--problems", "SVCT-31"], "problem SVCT-31 unknown; accepted"),
        (["--methods", "DDS,DPS"], "method DPS unknown; accepted"),
        (["--precision", "fp16"], "invalid choice: 'fp16'"),
    ],
)
def test_bad_selection_names_the_value(flags, message, capsys):
    with pytest.raises(SystemExit) as raised:
        iscs_eval.build_parser().parse_args(flags)
    assert raised.value.code == 2 and message in capsys.readouterr().err
