"""The prediction log as a file a data scientist can open: one row per logged prediction (request
id, time, version, predicted class, confidence, the label if one arrived, optionally the input
projection), as CSV or Parquet. What `shipyard monitor export` writes."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import UsageError

if TYPE_CHECKING:
    from shipyard.registry import Registry

FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class Exported:
    """What was written: the CLI's `--json` summary."""

    model: str
    rows: int
    labelled: int
    path: str
    format: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_format(output: Path, fmt: str | None = None) -> str:
    """`fmt`, or the one the file name says; refused before any query runs."""
    kind = fmt or output.suffix.lstrip(".").lower()
    if kind not in FORMATS:
        raise UsageError(f"--format {kind!r}: choose csv or parquet")
    return kind


def columns(reg: Registry, name: str, *, since: float, projection: bool = False) -> tuple[dict[str, list[Any]], int]:
    """The log of `name` since `since` (unix seconds) as named columns, classes by name, and how
    many of its rows have a label."""
    from shipyard.monitor.feedback import labels as labels_of
    from shipyard.monitor.predlog import read

    model = reg.model(name)  # NotFound names the model
    classes = list(model.latest.meta.classes) if model.latest else []
    logged = read(reg.engine, name, since=since, projection=projection)
    labels = labels_of(reg.engine, name)  # every label: one may arrive long after its prediction

    def cls(i: int | None) -> str | None:
        return None if i is None else classes[i] if i < len(classes) else str(i)

    cols: dict[str, list[Any]] = {
        "request_id": list(logged.request_ids),
        "time": [datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") for t in logged.ts],
        "version": logged.version.tolist(),
        "predicted": [cls(int(p)) for p in logged.predicted],
        "confidence": [round(float(c), 6) for c in logged.confidence],
        "label": [cls(labels.get(r)) for r in logged.request_ids],
    }
    if projection and logged.projection is not None:
        for k in range(logged.projection.shape[1]):
            cols[f"p{k}"] = logged.projection[:, k].astype(float).round(4).tolist()
    return cols, sum(1 for r in logged.request_ids if r in labels)


def export(reg: Registry, name: str, output: Path, *, since: float, fmt: str | None = None,
           projection: bool = False) -> Exported:
    """Write the log of `name` since `since` to `output` (CSV, or Parquet with pyarrow)."""
    kind = file_format(output, fmt)
    cols, n_labels = columns(reg, name, since=since, projection=projection)
    output.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        with output.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(zip(*cols.values(), strict=True))
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError("Parquet needs pyarrow: pip install 'shipyard[parquet]', or use --format csv") from None
        pq.write_table(pa.table(cols), output)
    return Exported(name, len(cols["request_id"]), n_labels, str(output.resolve()), kind)
