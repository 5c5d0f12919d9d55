"""Batch prediction from files, in-process (`shipyard predict`, `shipyard.predict`): a registered
model version (`NAME`, `NAME@ALIAS`, `NAME@3`) or a bundle on disk, run over a CSV, Parquet or
NPZ file or a folder of images in large batches through the bundle's preprocessing and ONNX
Runtime (no server, no torch), the answers written as CSV or Parquet.

Output columns: `row_id` (the 1-based data row, an image's relative path, or `--id-column`);
`label` (`classes[argmax]`, what the server answers) and one `p_<class>` per class, or
`prediction` (`prediction_<target>` for several targets) for a regression; `version`. The file
is written under a temporary name beside the output and renamed when complete, so a failed or
interrupted job leaves no partial output."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.bundle import MANIFEST, Bundle
from shipyard.data.sources import IMAGE_SUFFIXES
from shipyard.errors import DataError, UsageError
from shipyard.serve.batch_inputs import BadRow, Chunk, ModelInputs, Source, open_images, open_npz
from shipyard.serve.batch_tables import open_csv, open_parquet
from shipyard.settings import Settings

if TYPE_CHECKING:
    from shipyard.registry import Registry

FORMATS = ("csv", "parquet")
DEFAULT_BATCH = 4096
#: bad rows kept in the result (and the JSON); the rest are counted
MAX_BAD_LISTED = 1000


@dataclass
class PredictResult:
    """What a job did: rows written, where, with which model version, in how long."""

    rows: int
    output: str
    version: int | None
    seconds: float
    model: str
    input: str
    format: str
    bad_rows: list[BadRow] = field(default_factory=list)
    bad_row_count: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return (self.rows + self.bad_row_count) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "output": self.output, "version": self.version, "seconds": round(self.seconds, 4),
                "model": self.model, "input": self.input, "format": self.format,
                "bad_rows": [b.to_dict() for b in self.bad_rows], "bad_row_count": self.bad_row_count,
                "ignored_columns": self.ignored_columns}


# -- the model -----------------------------------------------------------------------------------

def _is_bundle_path(ref: str) -> bool:
    p = Path(ref)
    return (p.is_dir() and (p / MANIFEST).is_file()) or (p.is_file() and ref.endswith((".tar.gz", ".tgz")))


def open_model(ref: str | Path, *, registry: Registry | None = None,
               settings: Settings | None = None) -> tuple[Bundle, str, int | None]:
    """(bundle, model name, registry version) of a registry reference or a bundle on disk (a
    folder with a manifest, or a .tar.gz; its version is None)."""
    text = str(ref)
    if _is_bundle_path(text):
        b = Bundle.load(text)
        return b, b.name, None
    if "/" in text or os.sep in text or text.endswith((".tar.gz", ".tgz")):
        raise UsageError(f"{text}: no bundle there (a folder with {MANIFEST}, or a .tar.gz), and not a model "
                         "reference (NAME, NAME@VERSION or NAME@ALIAS)")
    if registry is None:
        from shipyard.registry import Registry

        registry = Registry(settings=settings)
    mv = registry.get(text)
    return registry.load(mv), mv.name, mv.version


def _session(bundle: Bundle, threads: int) -> Any:
    """The graph in ONNX Runtime with the server's session options (`ModelRuntime`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(bundle.model_path), opts, providers=["CPUExecutionProvider"])


def output_columns(bundle: Bundle) -> list[str]:
    """The answer's columns between `row_id` and `version`."""
    if bundle.regression:
        return ["prediction"] if len(bundle.classes) == 1 else [f"prediction_{t}" for t in bundle.classes]
    return ["label", *(f"p_{c}" for c in bundle.classes)]


# -- the output ----------------------------------------------------------------------------------

class _Writer:
    """Appends batches of (row ids, answers) to a CSV or Parquet file, with pyarrow when it is
    installed (CSV through pandas otherwise: the same text, slower)."""

    def __init__(self, path: Path, fmt: str, columns: list[str], regression: bool, text_ids: bool,
                 version: int | None, *, arrow: bool | None = None) -> None:
        self.path, self.fmt, self.columns, self.regression, self.version = path, fmt, columns, regression, version
        if arrow is None:
            try:
                import pyarrow  # noqa: F401
                arrow = True
            except ImportError:
                arrow = False
        if fmt == "parquet" and not arrow:
            raise UsageError("writing Parquet needs pyarrow: pip install 'shipyard[parquet]'")
        self.arrow = arrow
        self._file: Any = None
        self._first = True
        if arrow:
            import pyarrow as pa

            fields = [("row_id", pa.string() if text_ids else pa.int64())]
            fields += [(c, pa.string() if c == "label" and not regression else pa.float32()) for c in columns]
            self.schema = pa.schema([*fields, ("version", pa.int64())])

    def _open(self) -> None:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            self._file = pq.ParquetWriter(self.path, self.schema)
        elif self.arrow:
            import pyarrow.csv as pc

            self._file = pc.CSVWriter(self.path, self.schema, write_options=pc.WriteOptions(quoting_style="needed"))
        else:
            self._file = open(self.path, "w", newline="")  # noqa: SIM115 - closed by close()

    def write(self, ids: np.ndarray, answers: np.ndarray, labels: np.ndarray | None) -> None:
        if self._file is None:
            self._open()
        values = [answers[:, j] for j in range(answers.shape[1])]
        n = len(ids)
        if self.arrow:
            import pyarrow as pa

            cols = [pa.array(ids, type=self.schema.field(0).type)]
            if labels is not None:
                cols.append(pa.array(labels, type=pa.string()))
            cols += [pa.array(v, type=pa.float32()) for v in values]
            cols.append(pa.nulls(n, pa.int64()) if self.version is None
                        else pa.array(np.full(n, self.version, dtype=np.int64)))
            self._file.write(pa.RecordBatch.from_arrays(cols, schema=self.schema))
            return
        import pandas as pd

        data: dict[str, Any] = {"row_id": ids}
        if labels is not None:
            data["label"] = labels
        for name, v in zip(self.columns[1:] if labels is not None else self.columns, values, strict=True):
            data[name] = v
        data["version"] = pd.array([self.version] * n, dtype="Int64")
        pd.DataFrame(data).to_csv(self._file, index=False, header=self._first)
        self._first = False

    def close(self) -> None:
        if self._file is None:  # nothing read: the header alone (an empty Parquet file)
            self._open()
            if not self.arrow:
                f: Any = self._file
                f.write(",".join(["row_id", *self.columns, "version"]) + "\n")
        self._file.close()


def prefetched(chunks: Iterator[Chunk], depth: int = 2) -> Generator[Chunk, None, None]:
    """The batches, read and preprocessed in a thread up to `depth` ahead while the caller runs
    the graph and writes (parsing, ONNX Runtime and the writer release the GIL). An error of the
    reader is raised here, in order; closing this generator stops the reader."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, who raises it
            put(e)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="predict-reader", daemon=True)
    reader.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


# -- the job -------------------------------------------------------------------------------------

def open_source(path: Path, model: ModelInputs, batch_size: int, *, id_column: str | None = None,
                label_column: str = "label", count: bool = False) -> Source:
    """The reader for `path`: a folder of images, or a file by its suffix."""
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        if id_column is not None:
            raise UsageError("--id-column is for tables; an image's row id is its path in the folder")
        return open_images(path, model, batch_size)
    if not path.is_file():
        raise DataError(path, "no such file or folder")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if suffix in (".csv", ".csv.gz", ".txt"):
        return open_csv(path, model, batch_size, id_column=id_column, label_column=label_column,
                        count=count and suffix != ".csv.gz")
    if suffix in (".parquet", ".pq"):
        return open_parquet(path, model, batch_size, id_column=id_column, label_column=label_column)
    if suffix == ".npz":
        if id_column is not None:
            raise UsageError("--id-column is for tables; an array's row id is its 1-based index")
        return open_npz(path, model, batch_size)
    raise UsageError(f"{path}: cannot tell its format from {suffix or 'no suffix'}; give a .csv, .parquet or .npz "
                     "file, or a folder of images")


def output_format(output: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt!r}: choose {' or '.join(FORMATS)}")
        return fmt
    suffix = output.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise UsageError(f"{output}: cannot tell the output format from {suffix or 'no suffix'}; name a .csv or "
                     ".parquet file, or pass --format csv|parquet")


def predict(ref: str | Path, source: str | Path, output: str | Path, *, batch_size: int = DEFAULT_BATCH,
            threads: int | None = None, format: str | None = None, skip_bad_rows: bool = False,
            id_column: str | None = None, label_column: str = "label", registry: Registry | None = None,
            settings: Settings | None = None, progress: Callable[[int, int | None], None] | None = None,
            log: Callable[[str], None] | None = None) -> PredictResult:
    """Predict every row of `source` (CSV, Parquet, NPZ, or a folder of images) with `ref` (a
    registry reference or a bundle path) and write `output` (CSV or Parquet, by its suffix or
    `format`). A bad row fails the job with a DataError naming it (no output is left), unless
    `skip_bad_rows`: then it is left out and listed in the result. `progress(rows_done, total)`
    is called after each batch; `log` gets one line per note (e.g. the ignored columns)."""
    started = time.perf_counter()
    say = log or (lambda m: None)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be ≥ 1, got {batch_size}")
    settings = settings or (registry.settings if registry is not None else Settings.from_env())
    threads = settings.threads if threads is None else threads
    if threads < 1:
        raise UsageError(f"--threads must be ≥ 1, got {threads}")
    src_path, out_path = Path(source), Path(output)
    fmt = output_format(out_path, format)
    if out_path.exists() and src_path.exists() and out_path.resolve() == src_path.resolve():
        raise UsageError(f"{out_path}: the output would overwrite the input")
    if out_path.is_dir():
        raise UsageError(f"{out_path}: is a folder; name the output file")
    bundle, name, version = open_model(ref, registry=registry, settings=settings)
    model = ModelInputs.of(bundle)
    src = open_source(src_path, model, batch_size, id_column=id_column, label_column=label_column,
                      count=progress is not None)
    if src.ignored:
        say(f"ignored {len(src.ignored)} column(s) the model does not take: {', '.join(src.ignored)}")
    for note in src.notes:
        say(note)
    session = _session(bundle, threads)
    onnx_input, onnx_output = bundle.meta.signature.onnx_input, session.get_outputs()[0].name
    classes = np.array(bundle.classes, dtype=object)
    columns = output_columns(bundle)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.parent / f".{out_path.name}.partial-{os.getpid()}"
    writer = _Writer(tmp, fmt, columns, bundle.regression, src.text_ids, version)
    bad: list[BadRow] = []
    bad_count = written = 0
    try:
        with contextlib.closing(prefetched(src.chunks())) as chunks:
            for chunk in chunks:
                if chunk.bad:
                    if not skip_bad_rows:
                        more = f" (and {len(chunk.bad) - 1} more in this batch)" if len(chunk.bad) > 1 else ""
                        raise DataError(src_path, f"{chunk.bad[0]}{more}; nothing written (--skip-bad-rows writes "
                                                  "the other rows and lists the bad ones)")
                    bad_count += len(chunk.bad)
                    bad.extend(chunk.bad[: max(MAX_BAD_LISTED - len(bad), 0)])
                if len(chunk.ids):
                    answers = session.run([onnx_output], {onnx_input: chunk.features})[0]
                    labels = None if bundle.regression else classes[answers.argmax(axis=1)]
                    writer.write(chunk.ids, answers, labels)
                    written += len(chunk.ids)
                if progress is not None:
                    progress(written + bad_count, src.total)
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        if writer._file is not None:
            with contextlib.suppress(Exception):  # the job's own error is the one to report
                writer._file.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bundle.close()
    return PredictResult(rows=written, output=str(out_path), version=version, seconds=time.perf_counter() - started,
                         model=name, input=str(src_path), format=fmt, bad_rows=bad, bad_row_count=bad_count,
                         ignored_columns=src.ignored, notes=src.notes)


__all__ = ["DEFAULT_BATCH", "FORMATS", "BadRow", "Chunk", "PredictResult", "open_model", "output_columns",
           "predict"]
