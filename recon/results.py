"""Self-describing results folders.

A run writes into ``<results_dir>/<config>/<data>/<task>-<degree>/<method>/<problem>/<YYMMDD_HHMMSS>/``;
a folder is never reused (a clash gets the suffix ``_1``, ``_2``, ...). While the run is going the
folder holds a file ``INCOMPLETE``; it is removed when the run finishes, and a failed run keeps it
with the error message (the log ``run.log`` has the traceback). Every file is written through a
checked temporary file (``utils.io.write_verified``), so a full disk fails the run instead of leaving a
short file under its final name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import yaml

from utils.device import device_name
from utils.io import Meta, write_text, write_volume

MARKER = "INCOMPLETE"
LOG_NAME = "run.log"
LOGGER_NAME = "iscs"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)


def volume_name(path: Path) -> str:
    """The file name of a volume without its (double) suffix: ``data/ct.nii.gz`` -> ``ct``."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def problem_name(options: Mapping[str, Any]) -> str:
    """A short folder name from the options that define the problem, in a fixed order.

    ``options`` maps a short label to its value (e.g. ``{"s": "0-32", "NFE": 10, "nCG": 5}``);
    the result joins ``label + value`` with ``_`` (``s0-32_NFE10_nCG5``); booleans become 0/1.
    """
    parts = [
        f"{label}{_slug(int(value) if isinstance(value, bool) else value)}"
        for label, value in options.items()
    ]
    return "_".join(parts) or "default"


def run_parent(
    results_dir: Path, config: str, data: str, task: str, degree: Any, method: str, problem: str
) -> Path:
    """The folder that holds the timestamped run folders of one problem."""
    return (
        Path(results_dir)
        / _slug(config)
        / _slug(data)
        / f"{_slug(task)}-{_slug(degree)}"
        / _slug(method)
        / problem
    )


def create_run_dir(parent: Path, now: Optional[_dt.datetime] = None) -> Path:
    """Create ``parent/<YYMMDD_HHMMSS>`` (or with suffix ``_1``, ``_2``, ...) and mark it incomplete.

    The directory is created atomically, so two runs started in the same second get different folders.
    """
    stamp = (now or _dt.datetime.now()).strftime("%y%m%d_%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while True:
        path = parent / (stamp if suffix == 0 else f"{stamp}_{suffix}")
        try:
            path.mkdir()
        except FileExistsError:
            suffix += 1
            continue
        try:
            write_text(path / MARKER, "run in progress\n")
        except OSError:
            # A folder without its marker would look complete: it goes rather than stay unmarked.
            path.rmdir()
            raise
        return path


def _plain(value: Any) -> Any:
    """Options as YAML/JSON-friendly builtins (paths and str subclasses as str, non-finite floats as None)."""
    if isinstance(value, (Path, str)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def environment(device: torch.device, command: Sequence[str]) -> Dict[str, Any]:
    """Versions, device, git commit and command line: what ``args.yaml`` records beside the options."""
    return {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "SimpleITK": _package_version("SimpleITK"),
        },
        "device": str(device),
        "device_name": device_name(device),
        "git_commit": _git_commit(),
        "command": shlex.join(command),
    }


PENDING_VOLUMES = 4
"""Volumes queued for a run folder's writer thread at most; one more waits for the oldest."""


class RunFolder:
    """One run's results folder: writes volumes, YAML/JSON/text files, and the run log.

    Volumes are written by one worker thread, so that compressing them (seconds each for a 256^3
    NIfTI) overlaps with the computation that follows; :meth:`flush` waits for them and
    :meth:`complete` flushes first, so a folder never looks complete with a volume missing.

    Args:
        path: an existing folder made by :func:`create_run_dir`.
        meta: the geometry written into every volume of the reconstructed grid.
    """

    def __init__(self, path: Path, meta: Meta):
        self.path = Path(path)
        self.meta = meta
        self._handler: Optional[logging.Handler] = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volume-writer")
        self._pending: deque = deque()

    def volume(self, name: str, array, meta: Optional[Meta] = None, **display) -> Future:
        """Queue ``<name>.nii.gz`` (``name`` may contain a sub-folder) with the run's geometry for
        the writer thread; ``display`` holds ``utils.io.write_volume``'s ``descrip``, ``cal_range``
        and ``intent``. The array is copied to host memory first, so the caller may change it.
        Returns the write's future (its result: the path written, ``.pt`` without SimpleITK)."""
        if isinstance(array, torch.Tensor):
            array = array.detach().to("cpu", copy=True)
        else:
            array = np.array(array, copy=True)
        self.raise_failed()
        while len(self._pending) >= PENDING_VOLUMES:
            self._pending.popleft().result()
        path, meta = self.path / f"{name}.nii.gz", self.meta if meta is None else meta
        future = self._writer.submit(write_volume, path, array, meta, **display)
        self._pending.append(future)
        return future

    def raise_failed(self) -> None:
        """Raise the error of a queued write that has already failed, without waiting for the others."""
        for future in self._pending:
            if future.done() and future.exception() is not None:
                raise future.exception()

    def flush(self) -> None:
        """Wait for every queued volume; raise the first write's error, after all have ended."""
        wait(self._pending)
        try:
            self.raise_failed()
        finally:
            self._pending.clear()

    def yaml(self, name: str, content: Mapping[str, Any]) -> Path:
        """Write ``content`` as YAML (paths as strings, keys in the given order)."""
        return write_text(self.path / name, yaml.safe_dump(_plain(dict(content)), sort_keys=False))

    def json(self, name: str, content: Mapping[str, Any]) -> Path:
        """Write ``content`` as JSON (non-finite numbers as null)."""
        return write_text(self.path / name, json.dumps(_plain(dict(content)), indent=2) + "\n")

    def text(self, name: str, content: str) -> Path:
        """Write a text file."""
        return write_text(self.path / name, content if content.endswith("\n") else content + "\n")

    def start_log(self) -> None:
        """Copy the project's log records (and Python warnings) into ``run.log``."""
        self._handler = logging.FileHandler(self.path / LOG_NAME, encoding="utf-8")
        self._handler.setLevel(logging.DEBUG)
        self._handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG)
        for name in (LOGGER_NAME, "py.warnings"):
            logging.getLogger(name).addHandler(self._handler)

    def stop_log(self) -> None:
        """Detach the ``run.log`` handler, and flush, sync and close the file."""
        if self._handler is not None:
            for name in (LOGGER_NAME, "py.warnings"):
                logging.getLogger(name).removeHandler(self._handler)
            try:
                self._handler.flush()
                if self._handler.stream is not None:
                    os.fsync(self._handler.stream.fileno())
            finally:
                self._handler.close()
            self._handler = None

    def complete(self) -> None:
        """Mark the run finished (removes the ``INCOMPLETE`` marker) once every queued volume is written."""
        self.flush()
        self._writer.shutdown()
        (self.path / MARKER).unlink()

    def abandon(self) -> None:
        """Drop the queued volumes that have not started (a stopped run does not wait for them)."""
        self._pending.clear()
        self._writer.shutdown(wait=False, cancel_futures=True)

    def fail(self, message: str) -> None:
        """Keep the folder marked incomplete, with the reason (the marker is replaced atomically)."""
        self._writer.shutdown()
        write_text(self.path / MARKER, f"run failed: {message}\nsee {LOG_NAME}\n")


@contextlib.contextmanager
def console_logging() -> Iterator[logging.Logger]:
    """Print the project's INFO records to stdout, its warnings and Python warnings to stderr.

    Error records go to ``run.log`` only: the entry scripts print the one ``error:`` line themselves.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    info = logging.StreamHandler(sys.stdout)
    info.setLevel(logging.INFO)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    warning = logging.StreamHandler(sys.stderr)
    warning.setLevel(logging.WARNING)
    warning.addFilter(lambda record: record.levelno < logging.ERROR)
    handlers = (info, warning)
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(warning)
    try:
        yield logger
    finally:
        logging.getLogger("py.warnings").removeHandler(warning)
        logging.captureWarnings(False)
        for handler in handlers:
            logger.removeHandler(handler)
