"""Slice-parallel sampling with torch.distributed: 2 gloo processes on CPU against 1 process.

Workers are started with torch.multiprocessing (spawn) and joined to a process group through the
same environment variables torchrun sets; each runs a list of scenarios, one process group each,
and saves what it got (or the error it ended with) for the tests to compare. The last two tests
run the ZSR entry script under torchrun itself.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import algorithms
from physics import ConeBeamCT, ConeBeamGeometry, ZAxisSuperResolution, select_views
from recon import distributed
from recon.results import RunFolder

ROOT = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
# Long enough for a loaded 2-core CI machine, short enough that a protocol hang fails the test.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
JOIN_DEADLINE_S = 120
TINY_NCSNPP = {
    "data": {"image_size": 16},
    "model": {"nf": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "init_scale": 1.0},
}
# Five slices: uneven blocks (3 and 2) on two ranks.
STACK = (5, 1, 16, 16)
SAMPLER = algorithms.SamplerConfig(nfe=2, sigma_min=0.01, sigma_max=5.0, noise="iscs")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _measurement():
    op = ZAxisSuperResolution(2, axis=2)
    truth = torch.rand(STACK, generator=torch.Generator().manual_seed(1))
    return op, op.A(truth)


def _network_denoiser():
    from models import Denoiser, build_model

    net = build_model(TINY_NCSNPP, generator=torch.Generator().manual_seed(0)).eval()
    # One slice per network call: CPU convolutions round differently for different batch sizes.
    return Denoiser(net, slice_batch=1)


def _reconstruct(denoiser, seed=5, callback=None):
    op, y = _measurement()
    generator = torch.Generator().manual_seed(seed)
    step = algorithms.ConsistencyStep(algorithms.DDSConsistency(op, y, num_cg=2))
    return algorithms.reconstruct(
        denoiser, step, STACK, SAMPLER, generator=generator, callback=callback, disable=True
    )


class Recording:
    """A denoiser that records the slices it was given and returns an exact function of them."""

    def __init__(self, fail_on_call=None):
        self.calls = []
        self.fail_on_call = fail_on_call

    def __call__(self, x, sigma):
        self.calls.append(x[:, 0, 0, 0].tolist())
        if len(self.calls) == self.fail_on_call:
            raise ValueError(f"denoiser broke on call {len(self.calls)}")
        return x * 0.5 + float(sigma)

    def score(self, x, sigma):
        return -x


def _cone_problem():
    geometry = ConeBeamGeometry.for_volume((4, 12, 10))
    op = ConeBeamCT(geometry, views=select_views("SVCT", 5), backend="torch")
    generator = torch.Generator().manual_seed(3)
    truth = torch.rand(4, 1, 12, 10, generator=generator, dtype=torch.float64)
    x0 = torch.rand(4, 1, 12, 10, generator=generator, dtype=torch.float64)
    return op, op.A(truth), x0


def _dds_step(op, y, x0):
    return algorithms.DDSConsistency(op, y, num_cg=3)(x0, 1.0)


def _views_split(rank):
    op, y, x0 = _cone_problem()
    kept, _ = distributed.view_parallel(op, y)
    # The CPU backend's float sums stand in for the exact ones of the Triton backend.
    op.sums_views_exactly = lambda t: True
    block, block_y = distributed.view_parallel(op, y)
    # One view cannot be split over two ranks.
    one_view = ConeBeamCT(op.geometry, views=select_views("SVCT", 1), backend="torch")
    one_view.sums_views_exactly = lambda t: True
    one_view_kept = distributed.view_parallel(one_view, one_view.A(x0))[0] is one_view
    return dict(
        whole_kept=kept is op,
        one_view_kept=one_view_kept,
        view_range=block.view_range,
        y=block_y,
        x=_dds_step(block, block_y, x0),
    )


def _uneven_blocks(rank):
    results = {}
    for num_slices in (1, 2, 5, 8):
        recording = Recording()
        denoiser = distributed.DistributedDenoiser(recording)
        x = (
            torch.arange(num_slices, dtype=torch.float32)
            .reshape(-1, 1, 1, 1)
            .expand(-1, 1, 3, 2)
            .contiguous()
        )
        results[num_slices] = dict(x0=denoiser(x, 2.0), score=denoiser.score(x, 2.0), calls=recording.calls)
    return results


def _sampler_with_network(rank):
    return _reconstruct(distributed.slice_parallel(_network_denoiser()))


def _fail_in_denoiser(rank):
    """Rank 1's network breaks at the last step."""
    return _reconstruct(distributed.slice_parallel(Recording(fail_on_call=2 if rank == 1 else None)))


def _fail_between_steps(rank):
    """Rank 0 breaks in its first callback, between two synchronisation points."""

    def callback(step):
        if rank == 0:
            raise OSError("disk full while saving step 0")

    return _reconstruct(distributed.slice_parallel(Recording()), callback=callback)


def _fail_after_sampling(rank):
    """Rank 0 breaks after the last synchronisation point of the sampler (e.g. while writing)."""
    out = _reconstruct(distributed.slice_parallel(Recording()))
    if rank == 0:
        raise OSError("cannot write recon.nii.gz")
    return out


def _rank_zero_sink(rank):
    """Each rank writes through a RankZero sink into a folder of its own."""
    made = []
    with tempfile.TemporaryDirectory() as folder:

        def make_writer():
            made.append(rank)
            return RunFolder(Path(folder), {"spacing": (1.0, 1.0, 1.0)})

        sink = distributed.RankZero(make_writer)
        sink.json("metrics.json", {"rank": rank})
        sink.volume("GT", torch.zeros(2, 3, 4))
        sink.flush()
        files = sorted(p.name for p in Path(folder).iterdir())
    return dict(made=made, path_is_none=sink.path is None, files=files)


def _nested_caught(rank):
    """As the entry scripts' main(): an inner session's errors are caught inside the outer one."""
    try:
        with distributed.session(torch.device("cpu")):
            return _fail_in_denoiser(rank)
    except (ValueError, distributed.PeerFailure) as err:
        return type(err).__name__, distributed.reported(err)


def _nested_raised(rank):
    """An inner session's errors leave the outer one too."""
    with distributed.session(torch.device("cpu")):
        return _fail_in_denoiser(rank)


SCENARIOS = {
    "uneven_blocks": _uneven_blocks,
    "views_split": _views_split,
    "sampler_with_network": _sampler_with_network,
    "fail_in_denoiser": _fail_in_denoiser,
    "fail_between_steps": _fail_between_steps,
    "fail_after_sampling": _fail_after_sampling,
    "rank_zero_sink": _rank_zero_sink,
    "nested_caught": _nested_caught,
    "nested_raised": _nested_raised,
}


def _worker(rank, world_size, ports, scenarios, out_dir, threads):
    torch.set_num_threads(threads)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1"
    )
    outcomes = {}
    for scenario, port in zip(scenarios, ports, strict=True):
        os.environ["MASTER_PORT"] = str(port)
        outcome = outcomes[scenario] = {"error": None, "result": None}
        try:
            with distributed.session(torch.device("cpu"), timeout=COLLECTIVE_TIMEOUT):
                outcome["result"] = SCENARIOS[scenario](rank)
        except Exception as err:  # noqa: BLE001 -- the tests inspect every rank's error
            outcome["error"] = (type(err).__name__, str(err))
    torch.save(outcomes, Path(out_dir) / f"rank{rank}.pt")


def run_ranks(scenarios, out_dir, world_size=WORLD_SIZE):
    """Run ``scenarios`` in turn on ``world_size`` gloo processes; returns scenario -> rank outcomes."""
    ports = [_free_port() for _ in scenarios]
    context = mp.start_processes(
        _worker,
        args=(world_size, ports, list(scenarios), str(out_dir), torch.get_num_threads()),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + JOIN_DEADLINE_S
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"{scenarios}: the ranks did not end within {JOIN_DEADLINE_S} s")
    by_rank = [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
    return {scenario: [outcomes[scenario] for outcomes in by_rank] for scenario in scenarios}


@pytest.fixture(scope="module")
def rank_outcomes(tmp_path_factory):
    """Every scenario, run by one pair of processes (starting processes is the slow part)."""
    return run_ranks(tuple(SCENARIOS), tmp_path_factory.mktemp("ranks"))


# ----------------------------------------------------------------------------- single process


def test_slice_blocks_are_contiguous_and_balanced():
    for num_slices in range(0, 30):
        for world_size in range(1, 9):
            blocks = distributed.slice_blocks(num_slices, world_size)
            assert len(blocks) == world_size
            assert blocks[0][0] == 0 and blocks[-1][1] == num_slices
            assert all(stop == start for (_, stop), (start, _) in zip(blocks, blocks[1:]))
            sizes = [stop - start for start, stop in blocks]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert distributed.slice_blocks(7, 2) == [(0, 4), (4, 7)]
    with pytest.raises(ValueError, match="world_size >= 1"):
        distributed.slice_blocks(4, 0)


def test_launch_and_gpu_choice_follow_torchrun_environment():
    assert distributed.launch_from_env({}) == distributed.Launch(0, 1, 0)
    launch = distributed.launch_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert launch == distributed.Launch(3, 4, 1) and not launch.is_main
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "two"}):
        with pytest.raises(ValueError, match="accepted"):
            distributed.launch_from_env(bad)
    assert distributed.cuda_index(1, 2, distributed.Launch()) == 1
    assert distributed.cuda_index(0, 4, launch) == 1
    with pytest.raises(ValueError, match="--gpu 2: this machine has 2"):
        distributed.cuda_index(2, 2, distributed.Launch())
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        distributed.cuda_index(1, 4, launch)
    with pytest.raises(ValueError, match="--nproc-per-node <= 1"):
        distributed.cuda_index(0, 1, launch)


def test_single_process_runs_unchanged(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    recording = Recording()
    with distributed.session(torch.device("cpu")) as launch:
        assert launch == distributed.Launch() and not distributed.is_active()
        assert distributed.slice_parallel(recording) is recording
        assert distributed.is_main_process()
        distributed.check_peers()


def test_rank_zero_sink_writes_in_a_single_process(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    sink = distributed.RankZero(lambda: RunFolder(tmp_path, {"spacing": (1.0, 1.0, 1.0)}))
    assert sink.path == tmp_path
    sink.text("metrics.txt", "psnr 30")
    assert (tmp_path / "metrics.txt").read_text() == "psnr 30\n"


def test_rank_zero_sink_skips_every_writer_method_on_other_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    sink = distributed.RankZero(lambda: pytest.fail("only rank 0 builds the writer"))
    assert sink.path is None
    for name in (name for name in vars(RunFolder) if not name.startswith("_")):
        assert getattr(sink, name)("a", {}) is None


# ----------------------------------------------------------------------------- two processes


def test_distributed_denoiser_splits_uneven_stacks_into_contiguous_blocks(rank_outcomes):
    for rank, outcome in enumerate(rank_outcomes["uneven_blocks"]):
        assert outcome["error"] is None
        for num_slices, got in outcome["result"].items():
            x = torch.arange(num_slices, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 1, 3, 2)
            assert torch.equal(got["x0"], x * 0.5 + 2.0)
            assert torch.equal(got["score"], -x)
            start, stop = distributed.slice_blocks(num_slices, WORLD_SIZE)[rank]
            # The wrapped denoiser saw exactly this rank's block, once (an empty block: never).
            assert got["calls"] == ([list(map(float, range(start, stop)))] if stop > start else [])


def test_two_processes_give_the_single_process_volume_bitwise(rank_outcomes):
    single = _reconstruct(_network_denoiser())
    # The network shapes the result (a stand-in denoiser gives another volume).
    assert not torch.allclose(single, _reconstruct(Recording()), atol=1e-3)
    outcomes = rank_outcomes["sampler_with_network"]
    assert [outcome["error"] for outcome in outcomes] == [None, None]
    for outcome in outcomes:
        assert torch.equal(outcome["result"], single)


def test_view_parallel_splits_the_views_only_where_the_sum_is_exact(rank_outcomes):
    op, y, x0 = _cone_problem()
    assert distributed.view_parallel(op, y) == (op, y)
    single = _dds_step(op, y, x0)
    outcomes = rank_outcomes["views_split"]
    assert [outcome["error"] for outcome in outcomes] == [None, None]
    results = [outcome["result"] for outcome in outcomes]
    # On CPU (inexact float sums) every rank keeps the whole operator.
    assert [r["whole_kept"] for r in results] == [True, True]
    assert [r["one_view_kept"] for r in results] == [True, True]
    assert [r["view_range"] for r in results] == [(0, 3), (3, 5)]
    assert torch.equal(torch.cat([r["y"] for r in results]), y)
    assert torch.equal(results[0]["x"], results[1]["x"])
    assert not torch.allclose(single, x0, atol=1e-3)
    torch.testing.assert_close(results[0]["x"], single, rtol=1e-10, atol=1e-12)


def test_rank_zero_sink_writes_on_rank_zero_only(rank_outcomes):
    outcomes = rank_outcomes["rank_zero_sink"]
    assert [outcome["error"] for outcome in outcomes] == [None, None]
    first, second = (outcome["result"] for outcome in outcomes)
    assert first == dict(made=[0], path_is_none=False, files=["GT.nii.gz", "metrics.json"])
    assert second == dict(made=[], path_is_none=True, files=[])


@pytest.mark.parametrize(
    "scenario, failing_rank, error",
    [
        ("fail_in_denoiser", 1, "ValueError: denoiser broke on call 2"),
        ("fail_between_steps", 0, "OSError: disk full while saving step 0"),
        ("fail_after_sampling", 0, "OSError: cannot write recon.nii.gz"),
    ],
)
def test_a_failing_rank_ends_every_rank_with_its_error(rank_outcomes, scenario, failing_rank, error):
    outcomes = rank_outcomes[scenario]
    assert outcomes[failing_rank]["error"] == tuple(error.split(": ", 1))
    for rank, outcome in enumerate(outcomes):
        if rank != failing_rank:
            assert outcome["error"] == ("PeerFailure", f"rank {failing_rank} failed: {error}")


# Started by torchrun as the entry script: rank 1's network breaks at the second step.
FAILING_ENTRY = """
import os
import sys

import recon_MRI_ZSR
from models import Denoiser

if os.environ["RANK"] == "1":
    calls = []
    forward = Denoiser.__call__

    def broken(self, x, sigma):
        calls.append(sigma)
        if len(calls) == 2:
            raise ValueError("out of memory on rank 1")
        return forward(self, x, sigma)

    Denoiser.__call__ = broken
sys.exit(recon_MRI_ZSR.main())
"""


@pytest.fixture(scope="module")
def zsr_argv(tmp_path_factory):
    from test_entry import _flags, write_inputs

    inputs = write_inputs(tmp_path_factory.mktemp("inputs"))
    return _flags(
        data=inputs["mri"], checkpoint_path=inputs["prior"], degree=4, NFE=2, num_cg=2, slice_batch=1,
        device="cpu",
    )  # fmt: skip


def torchrun(script, argv, results_dir):
    """Run ``script`` under torchrun with two CPU processes; returns the finished process."""
    # Each rank gets the test's thread count, so that CPU reductions round as in this process.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD_SIZE}",
    ]
    command += [str(script), *argv, "--results-dir", str(results_dir)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOIN_DEADLINE_S)


def test_nested_sessions_end_every_rank_in_step(rank_outcomes):
    # Every rank left both sessions (no rank waits on a synchronisation another one skipped).
    caught = rank_outcomes["nested_caught"]
    assert [outcome["error"] for outcome in caught] == [None, None]
    assert [outcome["result"] for outcome in caught] == [("PeerFailure", True), ("ValueError", True)]
    raised = rank_outcomes["nested_raised"]
    assert [outcome["error"][0] for outcome in raised] == ["PeerFailure", "ValueError"]


def test_torchrun_entry_script_writes_one_folder_with_the_single_process_volume(zsr_argv, tmp_path):
    from test_entry import _run_folders

    import recon_MRI_ZSR
    from utils.io import read_volume

    assert recon_MRI_ZSR.main(zsr_argv + ["--results-dir", str(tmp_path / "single")]) == 0
    done = torchrun("recon_MRI_ZSR.py", zsr_argv, tmp_path / "multi")
    assert done.returncode == 0, done.stderr[-2000:]
    # Only rank 0 logs: the results folder is announced once.
    assert done.stdout.count("results folder:") == 1

    (single,), (multi,) = _run_folders(tmp_path / "single"), _run_folders(tmp_path / "multi")
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
    a, _ = read_volume(single / "recon.nii.gz")
    b, _ = read_volume(multi / "recon.nii.gz")
    np.testing.assert_array_equal(a, b)
    assert "processes: 2" in (multi / "args.yaml").read_text()


def test_torchrun_entry_script_ends_with_the_failing_rank_error(zsr_argv, tmp_path):
    from test_entry import _run_folders

    from recon.results import MARKER

    script = tmp_path / "failing_entry.py"
    script.write_text(FAILING_ENTRY)
    done = torchrun(script, zsr_argv, tmp_path / "results")
    assert done.returncode != 0
    # Rank 0 prints the error once; rank 1, whose error reached rank 0, stays quiet.
    assert done.stderr.count("error: rank 1 failed: ValueError: out of memory on rank 1") == 1
    assert "error: out of memory" not in done.stderr
    (folder,) = _run_folders(tmp_path / "results")
    assert "PeerFailure: rank 1 failed: ValueError: out of memory on rank 1" in (folder / MARKER).read_text()
    assert not (folder / "recon.nii.gz").exists()
