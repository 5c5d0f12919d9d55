"""`shipyard data …`: load a data source and describe it, as training would see it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from shipyard.cli._common import JsonOpt, emit_json, out, reporting

data_app = typer.Typer(help="Inspect data sources.", no_args_is_help=True, rich_markup_mode=None)


@data_app.command("show")
def data_show(
    source: Annotated[str, typer.Argument(help="mnist-sample | fashion-mnist | idx:DIR | npz:FILE | csv:FILE | parquet:FILE | sklearn:NAME | folder:DIR")],
    label_column: Annotated[str, typer.Option(help="Label column of a csv: or parquet: table.")] = "label",
    task: Annotated[str | None, typer.Option(help="classification | regression  [default: guessed from the labels]")] = None,
    impute: Annotated[str, typer.Option(help="none | mean | median | constant: missing values (none: refused)")] = "none",
    image: Annotated[str | None, typer.Option(help="HEIGHT,WIDTH: the table's columns are image pixels.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load a data source and describe it as training would see it: task, sizes, classes or the
    target's range, each column's name, type, categories and missing values, the fingerprint and
    the preprocessing."""
    from shipyard.cli.train import parse_image
    from shipyard.training.recipe import Recipe

    with reporting(as_json):
        recipe = Recipe(data=source, label_column=label_column, task=task, impute=impute,  # type: ignore[arg-type]
                        image=parse_image(image))
        info = recipe.load_data().describe()
        if as_json:
            emit_json(info)
            return
        columns = info.pop("columns", None)
        for k, v in info.items():
            out.print(f"[dim]{k:>14}[/]  {escape(str(v))}")
        if isinstance(columns, list):
            out.print(f"[dim]{'columns':>14}[/]  {len(columns)}")
            for c in columns:
                detail = (f"{len(c['categories'])} categories: {', '.join(c['categories'][:6])}"
                          f"{', …' if len(c['categories']) > 6 else ''}" if c["type"] == "categorical"
                          else f"{c['min']:.4g} … {c['max']:.4g}")
                missing = f"  [yellow]{c['missing']} missing[/]" if c["missing"] else ""
                out.print(f"{'':>16}{escape(c['name']):<28} {c['type']:<12} {escape(detail)}{missing}")
