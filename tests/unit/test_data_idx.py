"""Corrupted IDX files: every problem is a DataError that names the file and says what is wrong."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from shipyard.data import idx
from shipyard.data._idx import read_idx
from shipyard.errors import DataError, ShipyardError

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """Serialise an array in the IDX layout (big-endian header and data)."""
    head = bytes([0, 0, _CODES[a.dtype], a.ndim])
    head += b"".join(int(n).to_bytes(4, "big") for n in a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, *, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def images(n: int = 4, h: int = 3, w: int = 2) -> np.ndarray:
    return np.arange(n * h * w, dtype=np.uint8).reshape(n, h, w)


# --- a valid file first, so the corruption tests below are known to start from a good one ----


@pytest.mark.parametrize("gz", [False, True])
def test_valid_file_round_trips(tmp_path: Path, gz: bool) -> None:
    a = images()
    out = read_idx(write(tmp_path / "train-images-idx3-ubyte", idx_bytes(a), gz=gz))
    assert out.shape == (4, 3, 2)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_multibyte_types_are_read_big_endian_into_native_order(tmp_path: Path, dtype) -> None:
    a = (np.arange(6).reshape(2, 3) * (-3 if np.dtype(dtype).kind != "u" else 3)).astype(dtype)
    out = read_idx(write(tmp_path / "a.idx", idx_bytes(a)))
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, a)


# --- wrong magic -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"\x01\x00\x08\x01", id="first-byte-not-zero"),
        pytest.param(b"\x00\x01\x08\x01", id="second-byte-not-zero"),
        pytest.param(b"\x00\x00\x07\x01", id="unknown-type-code"),
        pytest.param(b"PK\x03\x04", id="zip-file"),
    ],
)
def test_wrong_magic(tmp_path: Path, head: bytes) -> None:
    path = write(tmp_path / "train-images-idx3-ubyte", head + b"\x00\x00\x00\x01" + b"\x00")
    with pytest.raises(DataError) as ei:
        read_idx(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "not an IDX file" in msg
    assert head.hex() in msg  # the bytes actually found are shown
    assert ei.value.path == path


def test_wrong_magic_inside_gzip(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.gz", b"\x12\x34\x56\x78rest", gz=True)
    with pytest.raises(DataError, match="not an IDX file") as ei:
        read_idx(path)
    assert str(path) in str(ei.value)
    assert "12345678" in str(ei.value)


@pytest.mark.parametrize("data", [b"", b"\x00\x00"], ids=["empty", "two-bytes"])
def test_too_short_for_magic(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "short-idx1-ubyte", data)
    with pytest.raises(DataError, match="not an IDX file") as ei:
        read_idx(path)
    assert str(path) in str(ei.value)


def test_text_file_is_not_idx(tmp_path: Path) -> None:
    path = write(tmp_path / "train-images-idx3-ubyte", b"label,pixel0\n1,2\n")
    with pytest.raises(DataError, match="not an IDX file") as ei:
        read_idx(path)
    assert str(path) in str(ei.value)


# --- truncated ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path: Path, gz: bool) -> None:
    good = idx_bytes(images())  # 4*3*2 = 24 data bytes
    path = write(tmp_path / "train-images-idx3-ubyte", good[:-5], gz=gz)
    with pytest.raises(DataError) as ei:
        read_idx(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "truncated" in msg
    assert "24" in msg and "19" in msg  # promised and found byte counts


def test_truncated_header(tmp_path: Path) -> None:
    # magic says 3 dimensions (12 header bytes) but only one size follows
    path = write(tmp_path / "train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00\x00\x00\x04")
    with pytest.raises(DataError, match="truncated IDX header") as ei:
        read_idx(path)
    assert str(path) in str(ei.value)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(images(50, 10, 10)), mtime=0)
    path = write(tmp_path / "train-images-idx3-ubyte.gz", compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match="cannot read") as ei:
        read_idx(path)
    assert str(path) in str(ei.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(DataError, match="cannot read") as ei:
        read_idx(path)
    assert str(path) in str(ei.value)


def test_header_with_absurd_sizes_is_a_data_error(tmp_path: Path) -> None:
    # A corrupted header promising 65536**4 bytes: the product wraps to 0 in int64, so the
    # empty payload must not be accepted (nor end in a bare ValueError from reshape).
    head = b"\x00\x00\x08\x04" + (65536).to_bytes(4, "big") * 4
    path = write(tmp_path / "train-images-idx3-ubyte", head)
    with pytest.raises(DataError, match="truncated") as ei:
        read_idx(path)
    assert str(path) in str(ei.value)


# --- trailing bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_bytes(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images()) + b"junk!!!", gz=gz)
    with pytest.raises(DataError) as ei:
        read_idx(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "7 unexpected bytes after the data" in msg


# --- image/label count mismatch and layout problems, through idx(DIR) --------------------------


def make_dir(tmp_path: Path, x: np.ndarray, y: np.ndarray, name: str = "d") -> Path:
    d = tmp_path / name
    d.mkdir()
    write(d / "train-images-idx3-ubyte", idx_bytes(x))
    write(d / "train-labels-idx1-ubyte", idx_bytes(y))
    return d


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    d = make_dir(tmp_path, images(4), np.array([0, 1, 2], dtype=np.uint8))
    with pytest.raises(DataError) as ei:
        idx(d)
    msg = str(ei.value)
    assert str(d / "train-labels-idx1-ubyte") in msg  # the offending labels file
    assert str(d / "train-images-idx3-ubyte") in msg  # and the images it was checked against
    assert "3 labels for 4 images" in msg


def test_test_part_count_mismatch_names_test_files(tmp_path: Path) -> None:
    d = make_dir(tmp_path, images(4), np.array([0, 1, 0, 1], dtype=np.uint8))
    write(d / "t10k-images-idx3-ubyte", idx_bytes(images(2)))
    write(d / "t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 1], dtype=np.uint8)))
    with pytest.raises(DataError, match="3 labels for 2 images") as ei:
        idx(d)
    assert str(d / "t10k-labels-idx1-ubyte") in str(ei.value)


def test_corrupt_file_in_folder_names_that_file(tmp_path: Path) -> None:
    d = make_dir(tmp_path, images(4), np.array([0, 1, 0, 1], dtype=np.uint8))
    bad = write(d / "train-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 0, 1], np.uint8))[:-1])
    with pytest.raises(DataError, match="truncated") as ei:
        idx(d)
    assert ei.value.path == bad
    assert str(bad) in str(ei.value)


def test_images_must_be_3d(tmp_path: Path) -> None:
    d = make_dir(tmp_path, np.zeros((4, 9), np.uint8), np.array([0, 1, 0, 1], dtype=np.uint8))
    with pytest.raises(DataError, match="3-D") as ei:
        idx(d)
    assert str(d / "train-images-idx3-ubyte") in str(ei.value)


def test_labels_must_be_1d(tmp_path: Path) -> None:
    d = make_dir(tmp_path, images(4), np.zeros((4, 1), np.uint8))
    with pytest.raises(DataError, match="1-D") as ei:
        idx(d)
    assert str(d / "train-labels-idx1-ubyte") in str(ei.value)


def test_missing_train_labels(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    write(d / "train-images-idx3-ubyte", idx_bytes(images()))
    with pytest.raises(DataError, match="no train labels file") as ei:
        idx(d)
    assert str(d) in str(ei.value)


def test_test_images_without_test_labels(tmp_path: Path) -> None:
    d = make_dir(tmp_path, images(4), np.array([0, 1, 0, 1], dtype=np.uint8))
    write(d / "t10k-images-idx3-ubyte", idx_bytes(images(2)))
    with pytest.raises(DataError, match="found test images but no test labels file") as ei:
        idx(d)
    assert str(d) in str(ei.value)


def test_data_error_is_a_shipyard_error_with_exit_code_1(tmp_path: Path) -> None:
    path = write(tmp_path / "x", b"")
    with pytest.raises(ShipyardError) as ei:
        read_idx(path)
    assert isinstance(ei.value, DataError)
    assert ei.value.exit_code == 1
    assert ei.value.http_status == 400
