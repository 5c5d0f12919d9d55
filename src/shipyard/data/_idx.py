"""Reader for the IDX format of the original MNIST files (optionally gzip-compressed)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from shipyard.errors import DataError

# IDX type codes (third byte of the magic number) → numpy dtype (big-endian on disk)
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(path, f"cannot read: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(path, f"not an IDX file (magic bytes {data[:4].hex() or 'missing'})")
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(path, "truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise DataError(path, f"truncated: header promises {expected} data bytes, file has {got}")
    if got > expected:
        raise DataError(path, f"{got - expected} unexpected bytes after the data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
