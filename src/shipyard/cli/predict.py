"""`shipyard predict`: batch prediction from files, in-process (no server, no torch). A thin front
over `shipyard.serve.batch_predict.predict`: parse, run with a progress bar on stderr, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shipyard.cli._common import JsonOpt, emit_json, err, out, reporting, settings

#: bad rows listed on stderr (all of them, up to the result's own cap, are in --json)
SHOWN_BAD = 20


def predict(
    ref: Annotated[str, typer.Argument(metavar="REF", help="NAME (its newest version), NAME@ALIAS, NAME@VERSION, or a bundle folder or .tar.gz.")],
    source: Annotated[Path, typer.Argument(metavar="INPUT", help="A .csv or .parquet table with a header (the model's columns; others are ignored), an .npz array (x, x_test or its only array), or a folder of images (subfolders included).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the predictions: .csv or .parquet.")],
    fmt: Annotated[str | None, typer.Option("--format", help="csv | parquet  [default: from the output's suffix]")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows read, preprocessed and run through ONNX Runtime at a time.")] = 4096,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads [default: the settings' thread count, SHIPYARD_THREADS].")] = None,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Write the rows that can be predicted and list the bad ones (stderr, --json) instead of failing.")] = False,
    id_column: Annotated[str | None, typer.Option(help="A table column whose values become the row_id [default: the 1-based data row].")] = None,
    label_column: Annotated[str, typer.Option(help="For a model of images or features read from a table: the column that is not a value.")] = "label",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Predict every row of a file (or every image of a folder) with a model, in-process.

    The output has `row_id`, then `label` and one `p_<class>` per class (a regression:
    `prediction`, or `prediction_<target>` for each target), then `version`. A row that cannot
    be predicted (a non-number, an unknown category, a missing value the model does not impute,
    an image of another size) stops the job with exit code 1 naming its row (and line), leaving
    no output, unless --skip-bad-rows."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from shipyard.serve.batch_predict import predict as run_predict

    with reporting(as_json):
        s = settings()
        shown = not quiet and err.is_terminal  # a pipe or a log gets no bar (and no line count for it)
        bar = Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                       TimeRemainingColumn(), console=err, transient=True, disable=not shown)
        task = bar.add_task("predict", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=max(total, done) if total is not None else None)

        def log(message: str) -> None:
            err.print(escape(message))

        with bar:
            result = run_predict(ref, source, output, batch_size=batch_size, threads=threads, format=fmt,
                                 skip_bad_rows=skip_bad_rows, id_column=id_column, label_column=label_column,
                                 settings=s,
                                 progress=progress if shown else None, log=log)
        if result.bad_row_count:
            err.print(f"[yellow]skipped {result.bad_row_count} bad row(s):[/]")
            for b in result.bad_rows[:SHOWN_BAD]:
                err.print(f"  {escape(str(b))}")
            if result.bad_row_count > SHOWN_BAD:
                err.print(f"  … {result.bad_row_count - SHOWN_BAD} more" + (" (in --json)" if not as_json else ""))
        model = result.model + (f"@{result.version}" if result.version is not None else f" ({ref})")
        err.print(escape(f"predicted {result.rows:,} row(s) with {model} in {result.seconds:.2f} s "
                         f"({result.rows_per_s:,.0f} rows/s) → {result.output}"))
        if as_json:
            emit_json(result.to_dict())
            return
        out.print(escape(result.output))
