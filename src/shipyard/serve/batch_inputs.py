"""The inputs of `shipyard predict`, read in batches and turned into the graph's float32 features
by the bundle's preprocessing spec (`PreprocessSpec.apply`, the numpy code training and the
server use): what every reader shares (`ModelInputs`, `Chunk`, `BadRow`), NPZ arrays and folders
of images here, tables in `batch_tables`. A row that cannot be turned into features (a pixel
that is not a whole number 0-255, an image of another size, a non-finite feature) becomes a
`BadRow` naming its row number (its file, in a folder) instead of failing the batch. No torch."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.bundle import Bundle
from shipyard.data.preprocess import PreprocessSpec
from shipyard.data.sources import IMAGE_SUFFIXES
from shipyard.errors import DataError, UsageError

F32_MAX = float(np.finfo(np.float32).max)
_ROW_PREFIX = re.compile(r"^row 0: |: row 0(?= )")


@dataclass(frozen=True)
class BadRow:
    """A row left out: its 1-based data row number, its line in a CSV, the image's path."""

    row: int
    reason: str
    line: int | None = None
    column: str | None = None
    id: str | None = None

    def where(self) -> str:
        return f"row {self.row}" + (f" (line {self.line})" if self.line is not None else "") \
            + (f" ({self.id})" if self.id is not None else "")

    def __str__(self) -> str:
        return f"{self.where()}: " + (f"column {self.column!r}: " if self.column else "") + self.reason

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("row", self.row), ("line", self.line), ("id", self.id), ("column", self.column),
                                  ("reason", self.reason)) if v is not None}


@dataclass
class Chunk:
    """One batch read: the good rows' ids and features, and the rows left out."""

    ids: np.ndarray
    features: np.ndarray
    bad: list[BadRow] = field(default_factory=list)


@dataclass(frozen=True)
class ModelInputs:
    """What a bundle takes, as predict needs it: the spec, the graph's features shape, and the raw
    input (an image, a raw table) when there is one."""

    spec: PreprocessSpec | None
    features_shape: tuple[int, ...]
    raw_shape: tuple[int, ...] | None
    raw_dtype: np.dtype[Any] | None

    @classmethod
    def of(cls, bundle: Bundle) -> ModelInputs:
        sig = bundle.meta.signature
        feats = next(i for i in sig.inputs if i.name == sig.onnx_input)
        spec = bundle.preprocess
        raw = next((i for i in sig.inputs if i.kind == "raw"), None)
        if spec is not None and spec.columns is None:
            return cls(spec, tuple(feats.shape[1:]), spec.raw_shape, np.dtype(spec.raw_dtype))
        if spec is not None:  # a table: its raw form is [N, columns] float32
            return cls(spec, tuple(feats.shape[1:]), (len(spec.columns or ()),), np.dtype(np.float32))
        return cls(None, tuple(feats.shape[1:]), tuple(raw.shape[1:]) if raw else None, None)

    @property
    def num_features(self) -> int:
        return int(np.prod(self.features_shape))


@dataclass
class Source:
    """An opened input: how many rows (None: not known before reading), the columns it ignores,
    whether row ids are numbers or text, and the batches."""

    kind: str
    chunks: Callable[[], Iterator[Chunk]]
    total: int | None = None
    ignored: list[str] = field(default_factory=list)
    text_ids: bool = False
    notes: list[str] = field(default_factory=list)


class Flags:
    """The rows of a batch found bad so far, each with the first reason found."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.why: dict[int, tuple[str | None, str]] = {}

    def flag(self, mask: Any, column: str | None, reason: Callable[[int], str]) -> None:
        new = np.flatnonzero(np.asarray(mask, dtype=bool) & ~self.bad)
        for i in new[:10_000]:  # the first reasons are what anyone reads
            self.why[int(i)] = (column, reason(int(i)))
        self.bad[new] = True

    def one(self, i: int, reason: str, column: str | None = None) -> None:
        if not self.bad[i]:
            self.bad[i] = True
            self.why[i] = (column, reason)

    def rows(self, rows: np.ndarray, lines: Callable[[list[int]], list[int]] | None = None,
             ids: np.ndarray | None = None) -> list[BadRow]:
        """The bad rows; `lines` maps their row numbers to lines in the file (asked only for them)."""
        at = [int(i) for i in np.flatnonzero(self.bad)]
        numbers = [int(rows[i]) for i in at]
        found = lines(numbers) if lines is not None and at else [None] * len(at)
        out = []
        for i, row, line in zip(at, numbers, found, strict=True):
            column, reason = self.why.get(i, (None, "refused"))
            out.append(BadRow(row, reason, line, column, str(ids[i]) if ids is not None else None))
        return out


def apply_rows(spec: PreprocessSpec, raw: np.ndarray, flags: Flags) -> np.ndarray:
    """`spec.apply` on the rows not flagged yet; when it still refuses the batch, row by row, so
    only the rows it refuses are flagged (with its own message)."""
    good = ~flags.bad
    try:
        return spec.apply(raw[good])
    except UsageError:
        pass
    out = []
    for i in np.flatnonzero(good):
        try:
            out.append(spec.apply(raw[i : i + 1]))
        except UsageError as e:
            flags.one(int(i), _ROW_PREFIX.sub("", str(e)))
    return np.concatenate(out) if out else np.zeros((0, spec.num_features), dtype=np.float32)


def to_features(model: ModelInputs, v: np.ndarray, flags: Flags, names: list[str] | None = None, *,
                prefer_raw: bool = True) -> np.ndarray:
    """Values `[N, …]` (a raw input's or the features' shape, or flat) → features: the raw input
    when they fit it (`prefer_raw`: also when they fit the features as well), else the features.
    Integer raw inputs (pixels) must hold whole numbers in their type's range; features must be
    finite."""
    spec, n = model.spec, len(v)
    flat = v.reshape(n, -1)
    raw = spec is not None and model.raw_shape is not None and flat.shape[1] == int(np.prod(model.raw_shape)) \
        and (prefer_raw or tuple(v.shape[1:]) != model.features_shape)
    if raw and model.raw_dtype is not None and model.raw_dtype.kind in "ui":
        info = np.iinfo(model.raw_dtype)
        if v.dtype != model.raw_dtype:
            with np.errstate(invalid="ignore"):
                wrong = ~((flat >= info.min) & (flat <= info.max) & (flat == np.round(flat)))
            if wrong.any():
                col = wrong.argmax(axis=1)
                flags.flag(wrong.any(axis=1), None, lambda i: (f"column {names[col[i]]!r}: " if names else "")
                           + f"{flat[i, col[i]]:g} is not a whole number {info.min}–{info.max} "
                           f"({model.raw_dtype} pixels)")
                flat = np.where(wrong, 0, flat)
        v = flat.astype(model.raw_dtype)
    if raw:
        assert spec is not None and model.raw_shape is not None
        return apply_rows(spec, v.reshape(n, *model.raw_shape), flags)
    x = flat.astype(np.float32)
    with np.errstate(invalid="ignore"):
        nonfinite = ~np.isfinite(x).all(axis=1)
    flags.flag(nonfinite, None, lambda i: "a feature is missing, infinite or beyond float32")
    return np.ascontiguousarray(x[~flags.bad].reshape(-1, *model.features_shape))


# -- arrays and images ---------------------------------------------------------------------------

def open_npz(path: Path, model: ModelInputs, batch_size: int) -> Source:
    """An NPZ file's array `x` (else `x_test`, else its only array), shaped like the raw input or
    the features."""
    try:
        with np.load(path, allow_pickle=False) as f:
            names = list(f.files)
            name = next((k for k in ("x", "x_test") if k in names), names[0] if len(names) == 1 else None)
            if name is None:
                raise DataError(path, f"no array named x or x_test among {', '.join(names) or 'none'}")
            x = f[name]
    except (OSError, ValueError) as e:
        raise DataError(path, f"not a readable NPZ file ({first_line(e)})") from None
    shapes = ([[-1, *model.raw_shape]] if model.raw_shape is not None else []) + [[-1, *model.features_shape]]
    fits = x.ndim >= 1 and (tuple(x.shape[1:]) in {model.raw_shape, model.features_shape}
                            or int(np.prod(x.shape[1:])) in {int(np.prod(s[1:])) for s in shapes})
    if not fits:
        raise DataError(path, f"array {name!r} has shape {list(x.shape)}; the model takes "
                              + " or ".join(map(str, shapes)))
    if x.dtype.kind not in "biuf":
        raise DataError(path, f"array {name!r} holds {x.dtype}, not numbers")
    prefer_raw = x.dtype == model.raw_dtype or tuple(x.shape[1:]) == model.raw_shape \
        or (model.spec is not None and model.spec.is_table)
    takes_raw = model.spec is not None and model.raw_shape is not None \
        and int(np.prod(x.shape[1:])) == int(np.prod(model.raw_shape)) \
        and (prefer_raw or tuple(x.shape[1:]) != model.features_shape)
    notes = [f"{path.name}: array {name!r} {list(x.shape)} {x.dtype}, taken as "
             + ("the raw input (preprocessed here)" if takes_raw else "ready features (not preprocessed)")]

    def chunks() -> Iterator[Chunk]:
        for start in range(0, len(x), batch_size):
            part = x[start : start + batch_size]
            flags = Flags(len(part))
            v = part if part.dtype.kind in "uif" else part.astype(np.float64)
            features = to_features(model, v, flags, prefer_raw=prefer_raw)
            rows = np.arange(start + 1, start + len(part) + 1, dtype=np.int64)
            yield Chunk(rows[~flags.bad], features, flags.rows(rows))

    return Source("npz", chunks, len(x), notes=notes)


def open_images(root: Path, model: ModelInputs, batch_size: int) -> Source:
    """Every image file under `root` (subfolders included, hidden ones not), in path order, or the
    one image file `root` names; the row id is its path relative to `root`. Each is converted to
    the model's raw image (grayscale for [H, W], RGB for [H, W, 3]); one of another size is a bad
    row, never resized."""
    shape, dtype = model.raw_shape, model.raw_dtype
    if model.spec is None or model.spec.is_table or shape is None or dtype != np.uint8 or len(shape) not in (2, 3) \
            or (len(shape) == 3 and shape[2] not in (3, 4)):
        takes = f"{dtype} {[-1, *shape]}" if shape is not None else f"features {[-1, *model.features_shape]}"
        raise UsageError(f"{root}: a folder of images, but the model takes no uint8 image input (it takes {takes})")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UsageError("reading images needs Pillow: pip install pillow") from None
    mode = "L" if len(shape) == 2 else ("RGB" if shape[2] == 3 else "RGBA")
    if root.is_file():
        root, files = root.parent, [Path(root.name)]
    else:
        files = sorted(p.relative_to(root) for p in root.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(root, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder or its subfolders")
    h, w = shape[0], shape[1]

    def chunks() -> Iterator[Chunk]:
        for start in range(0, len(files), batch_size):
            part = files[start : start + batch_size]
            x = np.zeros((len(part), *shape), dtype=np.uint8)
            flags = Flags(len(part))
            for i, rel in enumerate(part):
                try:
                    with Image.open(root / rel) as im:
                        if im.size != (w, h):
                            flags.one(i, f"image is {im.size[0]}x{im.size[1]}, the model takes {w}x{h} "
                                         "(nothing is resized)")
                            continue
                        x[i] = np.asarray(im.convert(mode), dtype=np.uint8)
                except (UnidentifiedImageError, OSError) as e:
                    flags.one(i, f"not a readable image ({first_line(e)})")
            ids = np.array([p.as_posix() for p in part], dtype=object)
            assert model.spec is not None
            features = apply_rows(model.spec, x, flags)
            rows = np.arange(start + 1, start + len(part) + 1, dtype=np.int64)
            yield Chunk(ids[~flags.bad], features, flags.rows(rows, ids=ids))

    return Source("images", chunks, len(files), text_ids=True)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["F32_MAX", "BadRow", "Chunk", "Flags", "ModelInputs", "Source", "apply_rows", "first_line", "open_images",
           "open_npz", "to_features"]
