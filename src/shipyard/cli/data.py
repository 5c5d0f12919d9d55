"""`shipyard data …`: load a data source and describe it, as training would see it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from shipyard.cli._common import JsonOpt, emit_json, out, reporting

data_app = typer.Typer(help="Inspect data sources.", no_args_is_help=True, rich_markup_mode=None)


@data_app.command("show")
def data_show(
    source: Annotated[str, typer.Argument(help="mnist-sample | fashion-mnist | idx:DIR | npz:FILE | csv:FILE | folder:DIR")],
    label_column: Annotated[str, typer.Option(help="Label column for csv: sources.")] = "label",
    as_json: JsonOpt = False,
) -> None:
    """Load a data source and describe it: sizes, classes, fingerprint, preprocessing."""
    from shipyard.data import load

    with reporting(as_json):
        info = load(source, label_column=label_column).describe()
        if as_json:
            emit_json(info)
            return
        for k, v in info.items():
            out.print(f"[dim]{k:>14}[/]  {escape(str(v))}")
