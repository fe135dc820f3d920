"""Byte-level corruptions of small valid NIfTI files (bit flips, truncations, header field edits).

Property: ``read_volume`` returns a finite volume whose shape is the one the (corrupted) header
states, with a sane geometry, or raises ValueError/OSError with one line; never another exception,
never a hang.
"""

import functools
import gzip
import signal
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.io import read_volume, write_volume

pytest.importorskip("SimpleITK")

# (struct format, byte offset) of NIfTI-1 header fields that a reader interprets.
HEADER_FIELDS = (
    [("i", 0)]
    + [("h", 40 + 2 * i) for i in range(8)]
    + [
        ("h", 68),
        ("h", 70),
        ("h", 72),
        ("f", 108),
        ("f", 112),
        ("f", 116),
        ("h", 252),
        ("h", 254),
        ("4s", 344),
    ]
    + [("f", 76 + 4 * i) for i in range(8)]
    + [("f", 256 + 4 * i) for i in range(18)]
)
FUZZ = settings(
    max_examples=100,
    deadline=5000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECONDS_PER_CASE = 20


@functools.lru_cache(maxsize=None)
def _valid_nifti(kind: str) -> bytes:
    """Uncompressed bytes of a small valid file: a CT-like int16 volume or a float32 one."""
    rng = np.random.default_rng(7)
    volume = (
        rng.integers(-1000, 1600, size=(4, 5, 6)).astype(np.int16)
        if kind == "int16"
        else rng.random((3, 4, 5), dtype=np.float32)
    )
    meta = {"spacing": (0.7, 1.3, 2.5), "origin": (-12.5, 40.0, 3.25)}
    with tempfile.TemporaryDirectory() as folder:
        return write_volume(Path(folder) / "v.nii", volume, meta).read_bytes()


def _field_value(fmt):
    if fmt == "h":
        return st.integers(-(2**15), 2**15 - 1)
    if fmt == "i":
        return st.sampled_from([348, 540, 0, -1, 2**31 - 1, 1543569408])
    if fmt == "4s":
        return st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0"])
    return st.floats(width=32) | st.sampled_from([0.0, -1.0, 352.0, 1e30, float("nan"), float("inf")])


@st.composite
def _edits(draw, size):
    """A list of corruptions of an uncompressed file of ``size`` bytes, applied in order."""
    corruption = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, size - 1), st.integers(0, 7)),
        st.tuples(st.just("flip"), st.integers(0, 351), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1)),
        st.sampled_from(HEADER_FIELDS).flatmap(
            lambda f: st.tuples(st.just("field"), st.just(f), _field_value(f[0]))
        ),
    )
    return draw(st.lists(corruption, min_size=1, max_size=4))


def _apply(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for edit in edits:
        if edit[0] == "flip" and edit[1] < len(data):
            data[edit[1]] ^= 1 << edit[2]
        elif edit[0] == "truncate":
            del data[edit[1] :]
        elif edit[0] == "field" and edit[1][1] + struct.calcsize(edit[1][0]) <= len(data):
            struct.pack_into("<" + edit[1][0], data, edit[1][1], edit[2])
    return bytes(data)


def _stated_shape(data: bytes):
    """The array shape [D, H, W] the header states, parsed here without utils.io."""
    order = "<" if struct.unpack_from("<i", data)[0] == 348 else ">"
    dim = struct.unpack_from(order + "8h", data, 40)
    sizes = tuple(dim[1 : dim[0] + 1]) + (1, 1)
    return sizes[:3][::-1]


class _Hang(Exception):
    pass


def _read_with_time_limit(path: Path):
    def stop(signum, frame):
        raise _Hang(f"read_volume({path.name}) ran for more than {SECONDS_PER_CASE} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(SECONDS_PER_CASE)
    try:
        return read_volume(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_property(path: Path, uncompressed: bytes) -> None:
    try:
        array, meta = _read_with_time_limit(path)
    except (ValueError, OSError) as err:
        message = str(err)
        assert message and "\n" not in message and "\x1b" not in message, repr(message)
        return
    assert array.dtype == np.float32 and np.isfinite(array).all()
    assert array.shape == _stated_shape(uncompressed)
    assert all(np.isfinite(meta[key]).all() for key in meta) and min(meta["spacing"]) > 0


@pytest.mark.parametrize("kind", ["int16", "float32"])
@FUZZ
@given(data=st.data())
def test_corrupted_nii_is_read_correctly_or_refused_in_one_line(kind, data):
    valid = _valid_nifti(kind)
    corrupted = _apply(valid, data.draw(_edits(len(valid))))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.nii"
        path.write_bytes(corrupted)
        _check_property(path, corrupted)


@pytest.mark.parametrize("kind", ["int16", "float32"])
@FUZZ
@given(data=st.data(), corrupt_compressed=st.booleans())
def test_corrupted_nii_gz_is_read_correctly_or_refused_in_one_line(kind, data, corrupt_compressed):
    valid = _valid_nifti(kind)
    if corrupt_compressed:
        packed = gzip.compress(valid, mtime=0)
        edits = data.draw(_edits(len(packed)).filter(lambda e: all(edit[0] != "field" for edit in e)))
        stream, uncompressed = _apply(packed, edits), valid
    else:
        uncompressed = _apply(valid, data.draw(_edits(len(valid))))
        stream = gzip.compress(uncompressed, mtime=0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.nii.gz"
        path.write_bytes(stream)
        _check_property(path, uncompressed)
