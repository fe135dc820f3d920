"""Results folders: naming, never reused, marked incomplete until done."""

import datetime as dt
import json
import logging

import numpy as np
import pytest
import torch
import yaml

from recon.results import (
    LOG_NAME,
    LOGGER_NAME,
    MARKER,
    PENDING_VOLUMES,
    RunFolder,
    create_run_dir,
    problem_name,
    run_parent,
    volume_name,
)
from utils.io import read_volume

NOW = dt.datetime(2026, 1, 31, 14, 5, 9)


def test_layout_of_the_folder_names(tmp_path):
    problem = problem_name({"s": "0-32", "NFE": 10, "init": False, "wTIK": 0.5, "noise": "SLERP"})
    assert problem == "s0-32_NFE10_init0_wTIK0.5_noiseSLERP"
    parent = run_parent(tmp_path, "CT_phantom_128", "ct_demo", "LACT", 90, "DDS", problem)
    assert parent == tmp_path / "CT_phantom_128" / "ct_demo" / "LACT-90" / "DDS" / problem
    assert volume_name("data/demo/ct demo.nii.gz") == "ct demo" and volume_name("x/v.npy") == "v"


def test_a_clash_gets_a_suffix_and_nothing_is_reused(tmp_path):
    made = [create_run_dir(tmp_path, NOW) for _ in range(3)]
    assert [p.name for p in made] == ["260131_140509", "260131_140509_1", "260131_140509_2"]
    assert all((p / MARKER).is_file() for p in made)


def test_folder_writes_volumes_behind_and_never_completes_with_a_failed_one(tmp_path, gen):
    folder = RunFolder(create_run_dir(tmp_path, NOW), None)
    volume = torch.rand(2, 3, 4, generator=gen)
    expected = volume.clone()
    # More volumes than the queue holds, so that volume() also waits for the oldest.
    queued = [folder.volume(f"v{i}", volume) for i in range(PENDING_VOLUMES + 2)]
    volume.zero_()  # the folder writes its own copy
    folder.volume("flat", torch.zeros(3, 4))  # not 3-D: write_volume refuses it in the writer thread
    with pytest.raises(ValueError, match="3D"):
        folder.complete()
    assert (folder.path / MARKER).is_file()
    for future in queued:
        np.testing.assert_array_equal(read_volume(future.result())[0], expected.numpy())


def test_a_failed_write_surfaces_at_the_next_volume_without_waiting(tmp_path, gen):
    folder = RunFolder(create_run_dir(tmp_path, NOW), None)
    folder.volume("flat", torch.zeros(3, 4)).exception()  # failed, and finished
    with pytest.raises(ValueError, match="3D"):
        folder.raise_failed()
    with pytest.raises(ValueError, match="3D"):
        folder.volume("next", torch.rand(2, 3, 4, generator=gen))
    assert not list(folder.path.glob("next*"))


def test_abandon_drops_the_volumes_not_started(tmp_path, gen, monkeypatch):
    import threading

    import recon.results as results

    started, release = threading.Event(), threading.Event()
    real_write = results.write_volume

    def slow_write(*args, **kwargs):
        started.set()
        release.wait(10)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(results, "write_volume", slow_write)
    folder = RunFolder(create_run_dir(tmp_path, NOW), None)
    futures = [folder.volume(f"v{i}", torch.rand(2, 3, 4, generator=gen)) for i in range(3)]
    assert started.wait(10)  # the first write is running; the other two wait in the queue
    folder.abandon()
    release.set()
    futures[0].result()
    assert all(future.cancelled() for future in futures[1:])
    assert sorted(p.name.split(".")[0] for p in folder.path.glob("v*")) == ["v0"]


def test_folder_writes_and_marks(tmp_path, gen):
    meta = {"spacing": (0.5, 0.5, 2.0), "origin": (1.0, 2.0, 3.0), "direction": tuple(np.eye(3).ravel())}
    folder = RunFolder(create_run_dir(tmp_path, NOW), meta)
    folder.start_log()
    logging.getLogger(LOGGER_NAME).info("hello log")
    folder.stop_log()
    folder.yaml("args.yaml", {"options": {"data": tmp_path / "x.nii.gz", "sigma": float("inf")}})
    folder.json("metrics.json", {"psnr": float("nan")})
    written = folder.volume("X_0/step_000", torch.rand(2, 3, 4, generator=gen)).result()
    assert written == folder.path / "X_0" / "step_000.nii.gz" and written.is_file()
    assert "hello log" in (folder.path / LOG_NAME).read_text()
    assert yaml.safe_load((folder.path / "args.yaml").read_text()) == {
        "options": {"data": str(tmp_path / "x.nii.gz"), "sigma": None}
    }
    assert json.loads((folder.path / "metrics.json").read_text()) == {"psnr": None}
    folder.fail("boom")
    assert "boom" in (folder.path / MARKER).read_text()
    folder.complete()
    assert not (folder.path / MARKER).exists()
