"""NIfTI-1 and NIfTI-2 headers read, checked and edited with the standard library.

SimpleITK reads a truncated ``.nii.gz`` as zero-filled, turns NaN and infinite voxels into 0, and
neither reads nor writes ``cal_min``/``cal_max`` or the intent; this module checks a file against
its own header (byte count, end of the gzip stream, voxel values) and sets those display fields.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Dict, NamedTuple, Tuple

import numpy as np

# Bytes per voxel of every NIfTI datatype code (binary, code 1, is not a voxel type SimpleITK reads).
ITEMSIZE = {
    2: 1,
    4: 2,
    8: 4,
    16: 4,
    32: 8,
    64: 8,
    128: 3,
    256: 1,
    512: 2,
    768: 4,
    1024: 8,
    1280: 8,
    1536: 16,
    1792: 16,
    2048: 32,
    2304: 4,
}
# Datatype codes whose voxels can be NaN or infinite: float32 and float64.
FLOAT_DTYPES = {16: "f4", 64: "f8"}
MAGIC = {1: b"n+1\0", 2: b"n+2\0\r\n\x1a\n"}
HEADER_SIZE = {1: 348, 2: 540}
# (struct format, byte offset) of the fields read or written here, per NIfTI version.
FIELDS: Dict[int, Dict[str, Tuple[str, int]]] = {
    1: {
        "dim": ("8h", 40),
        "datatype": ("h", 70),
        "vox_offset": ("f", 108),
        "cal_max": ("f", 124),
        "cal_min": ("f", 128),
        "descrip": ("80s", 148),
        "qform_code": ("h", 252),
        "sform_code": ("h", 254),
        "intent_name": ("16s", 328),
        "magic": ("4s", 344),
    },
    2: {
        "magic": ("8s", 4),
        "datatype": ("h", 12),
        "dim": ("8q", 16),
        "vox_offset": ("q", 168),
        "cal_max": ("d", 192),
        "cal_min": ("d", 200),
        "descrip": ("80s", 240),
        "qform_code": ("i", 344),
        "sform_code": ("i", 348),
        "intent_name": ("16s", 508),
    },
}
TEXT_FIELDS = {"descrip": 80, "intent_name": 16}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Offsets beyond this (1 TiB) cannot be a real header's: a corrupt float must not drive a seek.
_MAX_OFFSET = 1 << 40
_CHUNK = 1 << 20


class Header(NamedTuple):
    """What a NIfTI header says about the file's layout."""

    version: int  # 1 or 2
    order: str  # struct byte order: "<" or ">"
    datatype: int
    dims: Tuple[int, ...]  # dim[1 .. dim[0]], x first
    vox_offset: int

    @property
    def data_bytes(self) -> int:
        return math.prod(self.dims) * ITEMSIZE[self.datatype]

    @property
    def end(self) -> int:
        """Bytes the file must hold: the header, any extensions, then every voxel."""
        return self.vox_offset + self.data_bytes

    def field(self, raw: bytes, name: str):
        fmt, offset = FIELDS[self.version][name]
        values = struct.unpack_from(self.order + fmt, raw, offset)
        return values if len(values) > 1 else values[0]


def _layout(raw: bytes) -> Tuple[int, str]:
    for order in "<>":
        for version, size in HEADER_SIZE.items():
            if len(raw) >= 4 and struct.unpack_from(order + "i", raw)[0] == size:
                return version, order
    found = struct.unpack_from("<i", raw)[0] if len(raw) >= 4 else None
    raise ValueError(
        f"not a NIfTI file (sizeof_hdr is {found}; 348 for NIfTI-1 or 540 for NIfTI-2 is accepted)"
    )


def parse_header(raw: bytes) -> Header:
    """The layout a NIfTI header describes, with every field this module relies on checked.

    Raises:
        ValueError: one line naming the bad field and what is accepted.
    """
    version, order = _layout(raw)
    if len(raw) < HEADER_SIZE[version]:
        raise ValueError(f"truncated inside the NIfTI header ({len(raw)} of {HEADER_SIZE[version]} bytes)")
    probe = Header(version, order, 0, (), 0)
    magic = probe.field(raw, "magic")
    if magic != MAGIC[version]:
        raise ValueError(f"NIfTI magic is {magic!r}; a single-file NIfTI ({MAGIC[version]!r}) is accepted")
    dim = probe.field(raw, "dim")
    if not 1 <= dim[0] <= 7:
        raise ValueError(f"NIfTI dim[0] is {dim[0]}; 1..7 dimensions are accepted")
    dims = tuple(int(d) for d in dim[1 : dim[0] + 1])
    for axis, size in enumerate(dims, start=1):
        if size < 1:
            raise ValueError(f"NIfTI dim[{axis}] is {size}; every dimension must be >= 1")
    datatype = probe.field(raw, "datatype")
    if datatype not in ITEMSIZE:
        raise ValueError(f"NIfTI datatype code {datatype} is not a voxel type; accepted: {sorted(ITEMSIZE)}")
    offset = probe.field(raw, "vox_offset")
    if not (math.isfinite(offset) and HEADER_SIZE[version] <= offset <= _MAX_OFFSET):
        raise ValueError(
            f"NIfTI vox_offset is {offset}; an offset of at least {HEADER_SIZE[version]} bytes is accepted"
        )
    return Header(version, order, datatype, dims, int(offset))


def open_stream(path: Path) -> BinaryIO:
    """The file's NIfTI bytes: decompressed for ``.nii.gz``."""
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


class _Scan:
    """Counts the stream's bytes and the non-finite voxels of float data as chunks arrive."""

    def __init__(self, header: Header):
        self.header = header
        self.total = 0
        self.nonfinite = 0
        self._dtype = (
            np.dtype(header.order + FLOAT_DTYPES[header.datatype])
            if header.datatype in FLOAT_DTYPES
            else None
        )
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        start, self.total = self.total, self.total + len(chunk)
        if self._dtype is None:
            return
        begin = max(self.header.vox_offset - start, 0)
        stop = min(self.header.end - start, len(chunk))
        if begin >= stop:
            return
        data = self._carry + chunk[begin:stop]
        whole = len(data) - len(data) % self._dtype.itemsize
        values = np.frombuffer(data, dtype=self._dtype, count=whole // self._dtype.itemsize)
        self.nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))
        self._carry = data[whole:]


def scan(path: Path) -> Tuple[Header, int]:
    """Check a ``.nii``/``.nii.gz`` file against its header; return the header and its non-finite voxel count.

    The whole file is read once, without holding it: for ``.nii.gz`` the gzip stream must decode to
    its end-of-stream marker (CRC and length checked by zlib) and the decompressed bytes must cover
    every voxel the header claims; for ``.nii`` the file size must.

    Raises:
        ValueError: one line: the header is not a NIfTI header, the file or stream is truncated or corrupt.
    """
    try:
        with open_stream(path) as stream:
            head = stream.read(HEADER_SIZE[2])
            header = parse_header(head)
            counter = _Scan(header)
            counter.feed(head)
            while chunk := stream.read(_CHUNK):
                counter.feed(chunk)
    except EOFError:
        raise ValueError("truncated: the gzip stream ends before its end-of-stream marker") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"corrupt gzip stream ({err})") from None
    if counter.total < header.end:
        shape = "x".join(str(d) for d in header.dims)
        raise ValueError(
            f"truncated: {counter.total} bytes of NIfTI data, the header needs {header.end} "
            f"({shape} voxels of {ITEMSIZE[header.datatype]} bytes from offset {header.vox_offset})"
        )
    return header, counter.nonfinite


def encode_text(name: str, text: str) -> bytes:
    """``text`` as the bytes of header field ``name``; ValueError when it does not fit."""
    size = TEXT_FIELDS[name]
    if not (text.isascii() and text.isprintable() and len(text) < size):
        raise ValueError(f"{name} {text!r}: printable ASCII of at most {size - 1} characters is accepted")
    return text.encode("ascii")


def set_fields(raw: bytearray, values: Dict[str, object]) -> None:
    """Write header fields in place: text (``descrip``, ``intent_name``) or numbers (``cal_min``...)."""
    header_version, order = _layout(bytes(raw[:4]))
    for name, value in values.items():
        fmt, offset = FIELDS[header_version][name]
        packed = encode_text(name, value) if name in TEXT_FIELDS else value
        struct.pack_into(order + fmt, raw, offset, packed)
