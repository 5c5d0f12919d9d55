"""`shipyard monitor …`: what the models in production are doing, from the prediction log in the
registry's database."""

from __future__ import annotations

import csv
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from shipyard._output import emit_json, err, reporting
from shipyard.errors import NotFound, UsageError

monitor_app = typer.Typer(help="Monitoring: the prediction log, labels and accuracy.", no_args_is_help=True,
                          rich_markup_mode=None)

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")


def parse_since(text: str, now: float | None = None) -> float:
    """`30m`, `2h`, `7d` (ago) or an ISO 8601 time → unix seconds."""
    now = time.time() if now is None else now
    if m := _SPAN.match(text.strip()):
        return now - float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: give a span such as 30m, 2h or 7d, or an ISO time such as "
                         "2026-11-27T10:00") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@monitor_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Model name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (.csv or .parquet).")],
    since: Annotated[str, typer.Option(help="From when: a span ago (30m, 2h, 7d) or an ISO time.")] = "7d",
    fmt: Annotated[str | None, typer.Option("--format", help="csv or parquet (default: from the file name).")] = None,
    projection: Annotated[bool, typer.Option(help="Add the input projection columns p0…pK.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on the last line of stdout.")] = False,
) -> None:
    """Write the prediction log of NAME (request id, time, version, predicted class, confidence,
    the label if one arrived) as CSV or Parquet."""
    from shipyard.cli import settings

    with reporting(as_json):
        kind = fmt or output.suffix.lstrip(".").lower()
        if kind not in ("csv", "parquet"):
            raise UsageError(f"--format {kind!r}: choose csv or parquet")
        start = parse_since(since)
        import sqlalchemy as sa

        from shipyard.monitor.predlog import read
        from shipyard.registry.models import Registry
        from shipyard.registry.schema import feedback

        reg = Registry(settings=settings())
        model = next((m for m in reg.list() if m.name == name), None)
        if model is None:
            raise NotFound(f"no model {name!r} (see `shipyard models list`)")
        classes = [str(c) for c in (model.latest.meta.get("classes", []) if model.latest else [])]
        logged = read(reg.engine, name, since=start, projection=projection)
        with reg.engine.connect() as conn:
            labels = dict(conn.execute(sa.select(feedback.c.request_id, feedback.c.label)
                                       .where(feedback.c.model == name)).all())

        def cls(i: int | None) -> str | None:
            return None if i is None else classes[i] if i < len(classes) else str(i)

        columns = {
            "request_id": logged.request_ids,
            "time": [datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") for t in logged.ts],
            "version": logged.version.tolist(),
            "predicted": [cls(int(p)) for p in logged.predicted],
            "confidence": [round(float(c), 6) for c in logged.confidence],
            "label": [cls(labels.get(r)) for r in logged.request_ids],
        }
        if projection and logged.projection is not None:
            for k in range(logged.projection.shape[1]):
                columns[f"p{k}"] = logged.projection[:, k].astype(float).round(4).tolist()
        output.parent.mkdir(parents=True, exist_ok=True)
        if kind == "csv":
            with output.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(columns)
                w.writerows(zip(*columns.values(), strict=True))
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise UsageError("Parquet needs pyarrow: pip install 'shipyard[parquet]', or use --format csv") from None
            pq.write_table(pa.table(columns), output)
        n_labels = sum(1 for r in logged.request_ids if r in labels)
        err.print(f"wrote {len(logged):,} predictions ({n_labels:,} labelled) of {name} to {output}")
        if as_json:
            emit_json({"model": name, "rows": len(logged), "labelled": n_labels, "path": str(output.resolve()),
                       "format": kind})
