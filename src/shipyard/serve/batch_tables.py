"""Tables for `shipyard predict`: CSV (pandas, in chunks) and Parquet (pyarrow record batches)
files turned into features batch by batch. A table model takes its named columns and ignores the
others; every value is checked the way `PreprocessSpec.encode` would refuse it (a non-number, a
category training never saw, a missing value with no imputation, a number beyond float32), but
per row, so a bad row is reported by its row number (and its line in a CSV) without failing its
batch. Tables for models of images or features take every column but the label and id columns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.data.preprocess import PreprocessSpec
from shipyard.errors import DataError, UsageError
from shipyard.serve.batch_inputs import F32_MAX, Chunk, Flags, ModelInputs, Source, apply_rows, first_line, to_features

if TYPE_CHECKING:
    import pandas as pd


def _numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column's values as float64 and where a value is there but not a number."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(s), dtype=bool)
    v = pd.to_numeric(s.where(~s.map(lambda e: isinstance(e, bool)), "x"), errors="coerce") \
        .to_numpy(dtype=np.float64, na_value=np.nan)
    return v, s.notna().to_numpy() & np.isnan(v)


def _check_numbers(flags: Flags, s: pd.Series, v: np.ndarray, notnum: np.ndarray, column: str | None,
                   missing_ok: bool) -> None:
    flags.flag(notnum, column, lambda i: f"{s.iloc[i]!r} is not a number")
    flags.flag(np.abs(np.nan_to_num(v, nan=0.0)) > F32_MAX, column,
               lambda i: "holds an infinite value" if np.isinf(v[i]) else f"{v[i]:g} is beyond float32")
    if not missing_ok:
        flags.flag(np.isnan(v) & ~notnum, column, lambda i: "has no value and no imputation was recorded "
                                                            "for it (train with --impute mean|median|constant)")


class FrameFeatures:
    """DataFrame batches → features. A table model takes its named columns (every other column is
    ignored); an array model (images, features) takes every column but the label and id columns,
    as many as its raw input (or its features) has values."""

    def __init__(self, model: ModelInputs, columns: list[str], where: str, *, id_column: str | None = None,
                 label_column: str = "label") -> None:
        self.model, self.where, self.id_column = model, where, id_column
        spec = model.spec
        if id_column is not None and id_column not in columns:
            raise DataError(where, f"no id column {id_column!r} (columns: {_listed(columns)})")
        if spec is not None and spec.columns is not None:
            names = [c.name for c in spec.columns]
            if missing := [n for n in names if n not in columns]:
                raise DataError(where, f"missing column {missing[0]!r}"
                                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                       + f"; the model takes {_listed(names)}")
            self.used = names
        else:
            self.used = [c for c in columns if c not in (label_column, id_column)]
            want = [int(np.prod(model.raw_shape))] if model.raw_shape is not None else []
            if model.num_features not in want:
                want.append(model.num_features)
            if len(self.used) not in want:
                raise DataError(where, f"{len(self.used)} value columns (besides {label_column!r}"
                                       + (f" and {id_column!r}" if id_column else "") + "); the model takes "
                                       + " or ".join(map(str, want)))
        self.ignored = [c for c in columns if c not in self.used and c != id_column]
        self.categorical = [c.name for c in spec.columns or () if c.kind == "categorical"] if spec else []

    def text_columns(self) -> list[str]:
        """Columns to read as text (categories; ids), never guessed into numbers."""
        return self.categorical + ([self.id_column] if self.id_column else [])

    def __call__(self, frame: pd.DataFrame, rows: np.ndarray,
                 lines: Callable[[list[int]], list[int]] | None = None) -> Chunk:
        flags = Flags(len(frame))
        spec = self.model.spec
        if spec is not None and spec.columns is not None:
            features = apply_rows(spec, self._table(frame, flags, spec), flags)
        else:
            features = self._array(frame, flags)
        ids = frame[self.id_column].astype(str).str.strip().to_numpy(dtype=object) if self.id_column else rows
        return Chunk(ids[~flags.bad], features, flags.rows(rows, lines))

    def _table(self, frame: pd.DataFrame, flags: Flags, spec: PreprocessSpec) -> np.ndarray:
        """The raw table `spec.encode` would build (numbers; category indices; NaN where missing),
        with each refused value flagged on its row instead of failing the batch."""
        import pandas as pd

        cols = spec.columns or ()
        raw = np.empty((len(frame), len(cols)), dtype=np.float32)
        numeric = [j for j, c in enumerate(cols) if c.kind == "numeric"]
        names = [cols[j].name for j in numeric]
        is_num = {n: pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)
                  for n, t in frame.dtypes.items()}
        if all(is_num[n] for n in names):
            # the common case at once: every numeric column parsed as numbers (one copy out of the
            # frame when it holds nothing else); only a column with a missing or out-of-range
            # value is looked at on its own
            if all(is_num.values()):
                at = {n: k for k, n in enumerate(frame.columns)}
                v = frame.to_numpy(dtype=np.float64, na_value=np.nan)[:, [at[n] for n in names]]
            else:
                v = np.column_stack([frame[n].to_numpy(dtype=np.float64, na_value=np.nan) for n in names])
            with np.errstate(invalid="ignore"):
                odd = ~(np.abs(v) <= F32_MAX).all(axis=0)
            for k in map(int, np.flatnonzero(odd)):
                c = cols[numeric[k]]
                _check_numbers(flags, frame[c.name], v[:, k], np.zeros(len(v), bool), c.name, c.fill is not None)
            raw[:, numeric] = v
        else:
            for j in numeric:
                s = frame[cols[j].name]
                x, notnum = _numbers(s)
                _check_numbers(flags, s, x, notnum, cols[j].name, cols[j].fill is not None)
                raw[:, j] = x
        for j, c in enumerate(cols):
            if c.kind == "numeric":
                continue
            s = frame[c.name]
            na = s.isna().to_numpy()
            text = s.astype(object).where(~na, None)
            if not na.all():
                text = text.map(lambda e: e.strip() if isinstance(e, str) else str(e), na_action="ignore")
            codes = pd.Categorical(text, categories=list(c.categories)).codes
            for i in np.flatnonzero((codes < 0) & ~na)[:10_000]:
                flags.one(int(i), f"{text.iloc[i]!r} is not one of the categories training saw "
                                  f"({_known(c.categories)})", c.name)
            if c.fill is None:
                flags.flag(na, c.name, lambda i: "has no value and no imputation was recorded for it "
                                                 "(train with --impute mean|median|constant)")
            raw[:, j] = np.where(codes < 0, np.nan, codes)
        return raw

    def _array(self, frame: pd.DataFrame, flags: Flags) -> np.ndarray:
        import pandas as pd

        sub = frame[self.used]
        if all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in sub.dtypes):
            v = sub.to_numpy(dtype=np.float64, na_value=np.nan)
            if not (np.abs(v) <= F32_MAX).all():  # NaN fails it too
                for k in map(int, np.flatnonzero(~(np.abs(v) <= F32_MAX).all(axis=0))):
                    _check_numbers(flags, sub.iloc[:, k], v[:, k], np.zeros(len(v), bool), self.used[k], False)
        else:
            v = np.empty(sub.shape, dtype=np.float64)
            for j, name in enumerate(self.used):
                v[:, j], notnum = _numbers(sub[name])
                _check_numbers(flags, sub[name], v[:, j], notnum, name, False)
        return to_features(self.model, v, flags, self.used)


def _known(categories: tuple[str, ...]) -> str:
    return ", ".join(repr(k) for k in categories[:8]) + (", …" if len(categories) > 8 else "")


def _listed(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")


class _Lines:
    """Data row numbers → their lines in a CSV (blank and whitespace-only lines, which pandas
    skips, are not rows), found by reading the file only when a bad row is reported, and at most
    once through (rows are asked for in order)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: Any = None
        self.row = self.line = 0

    def __call__(self, rows: list[int]) -> list[int]:
        if self.file is None:
            self.file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            for raw in self.file:  # the header: the first line that is not blank
                self.line += 1
                if raw.strip():
                    break
        out = []
        for r in rows:
            while self.row < r:
                raw = self.file.readline()
                if not raw:
                    break
                self.line += 1
                if raw.strip():
                    self.row += 1
            out.append(self.line)
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


def open_csv(path: Path, model: ModelInputs, batch_size: int, *, id_column: str | None = None,
             label_column: str = "label", count: bool = False) -> Source:
    """A CSV with a header row, read `batch_size` rows at a time (only the columns used). Blank
    lines are skipped; rows are numbered from 1 after the header, and a bad row names its line in
    the file too."""
    import pandas as pd

    try:
        as_read = [str(c) for c in pd.read_csv(path, nrows=0).columns]
        header = [c.strip() for c in as_read]
    except pd.errors.EmptyDataError:
        raise DataError(path, "empty file: expected a header row") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(path, f"not a readable CSV file ({first_line(e)})") from None
    feats = FrameFeatures(model, header, str(path), id_column=id_column, label_column=label_column)

    wanted = [i for i, c in enumerate(header) if c in feats.used or c == id_column]

    def chunks() -> Iterator[Chunk]:
        seen = 0
        lines = _Lines(path) if path.suffix.lower() != ".gz" else None  # lines of a compressed file: not counted
        reader = pd.read_csv(path, chunksize=batch_size, usecols=wanted,
                             dtype={as_read[i]: str for i in wanted if header[i] in feats.text_columns()})
        try:
            with reader:
                while True:
                    try:
                        frame = next(reader)
                    except StopIteration:
                        return
                    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
                        raise DataError(path, f"not a readable CSV file after row {seen} "
                                              f"({first_line(e)})") from None
                    frame.columns = [header[i] for i in wanted]
                    rows = np.arange(seen + 1, seen + len(frame) + 1, dtype=np.int64)
                    seen += len(frame)
                    yield feats(frame, rows, lines)
        finally:
            if lines is not None:
                lines.close()

    total = max(_count_lines(path) - 1, 0) if count else None
    return Source("csv", chunks, total, feats.ignored, text_ids=id_column is not None)


def open_parquet(path: Path, model: ModelInputs, batch_size: int, *, id_column: str | None = None,
                 label_column: str = "label") -> Source:
    """A Parquet file, read `batch_size` rows at a time (record batches of the columns used)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("reading Parquet needs pyarrow: pip install 'shipyard[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow's errors have no common base worth naming
        raise DataError(path, f"not a readable Parquet file ({first_line(e)})") from None
    feats = FrameFeatures(model, list(pf.schema_arrow.names), str(path), id_column=id_column,
                          label_column=label_column)

    def chunks() -> Iterator[Chunk]:
        seen = 0
        wanted = feats.used + ([id_column] if id_column else [])
        for rb in pf.iter_batches(batch_size=batch_size, columns=wanted):
            frame = rb.to_pandas()
            rows = np.arange(seen + 1, seen + len(frame) + 1, dtype=np.int64)
            seen += len(frame)
            yield feats(frame, rows)

    return Source("parquet", chunks, pf.metadata.num_rows, feats.ignored, text_ids=id_column is not None)


__all__ = ["FrameFeatures", "open_csv", "open_parquet"]
