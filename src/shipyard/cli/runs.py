"""`shipyard runs …`: list, inspect, compare, plot, name and tag the tracked training runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli._common import JsonOpt, emit_json, err, out, pct, reporting, settings
from shipyard.errors import UsageError

runs_app = typer.Typer(help="List, inspect, compare, plot, name and tag training runs.", no_args_is_help=True,
                       rich_markup_mode=None)


@runs_app.command("list")
def runs_list(
    status: Annotated[str | None, typer.Option(help="running | finished | failed | interrupted")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    name: Annotated[str | None, typer.Option("--name", help="Only the runs of this exact name.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only the runs with this tag: KEY, or KEY=VALUE.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List training runs, newest first, with their names and tags."""
    from shipyard.training import runs

    with reporting(as_json):
        found = runs(status=status, limit=limit, settings=settings(), name=name, tag=tag)
        if as_json:
            emit_json({"runs": [_brief(r) for r in found]})
            return
        t = Table()
        for col in ("run", "name", "status", "model", "data", "epochs", "best val acc", "test acc", "started", "time",
                    "tags"):  # the run id is never cut: it is what the other verbs take
            t.add_column(col, no_wrap=col in ("run", "status", "epochs", "started", "time"), overflow="fold",
                         min_width={"name": 12, "tags": 16}.get(col))
        for r in found:
            t.add_row(r.id, escape(r.name or "–"), _status(r.status), str(r.recipe.get("model")), r.data_source,
                      f"{r.epochs_run}/{r.recipe.get('epochs')}", pct(r.best_val_accuracy),
                      pct(r.test_accuracy), r.created_at.strftime("%Y-%m-%d %H:%M"), _dur(r.duration_s),
                      escape(_tags(r.tags)))
        filtered = status is not None or name is not None or tag is not None
        out.print(t if found else "no run matches" if filtered else "no runs yet: try `shipyard train`")


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one run: recipe, per-epoch metrics, artifacts and paths."""
    from shipyard.training import get_run

    with reporting(as_json):
        r = get_run(run, settings=settings())
        if as_json:
            emit_json(r.to_dict())
            return
        out.print(f"[bold]run {r.id}[/]  {_status(r.status)}" + (f"  [red]{escape(r.error)}[/]" if r.error else ""))
        head = Table.grid(padding=(0, 2))
        head.add_column(no_wrap=True)
        head.add_column(overflow="fold")
        for k, v in [("name", r.name or "–"), ("tags", _tags(r.tags) or "–"), ("data", f"{r.data_source}  (fingerprint {str(r.data_fingerprint)[:16]}…)"),
                     ("recipe", ", ".join(f"{k}={v}" for k, v in r.recipe.items() if k != "data")),
                     ("best", f"val_accuracy {pct(r.best_val_accuracy)} at epoch {r.best_epoch}"),
                     ("test_accuracy", pct(r.test_accuracy)),
                     ("device", f"{r.device}, {r.threads} thread(s)"), ("time", _dur(r.duration_s)),
                     ("checkpoint", str(r.checkpoint)), ("tensorboard", str(r.tensorboard_dir)),
                     ("libraries", ", ".join(f"{k} {v}" for k, v in (r.library_versions or {}).items()))]:
            head.add_row(f"[dim]{k}[/]", escape(str(v)))
        out.print(head)
        t = Table("epoch", "loss", "acc", "val loss", "val acc", "lr", "time", "samples/s")
        m = r.metrics
        for i in range(len(m.get("val_accuracy", []))):
            t.add_row(str(i + 1), f"{m['train_loss'][i]:.4f}", pct(m["train_accuracy"][i]),
                      f"{m['val_loss'][i]:.4f}", pct(m["val_accuracy"][i]) + (" *" if i + 1 == r.best_epoch else ""),
                      f"{m['lr'][i]:.2g}", f"{m['epoch_time_s'][i]:.1f}s", f"{m['samples_per_s'][i]:,.0f}")
        out.print(t)


@runs_app.command("tag")
def runs_tag(
    run: Annotated[str, typer.Argument(help="Run id, a unique prefix, or latest.")],
    name: Annotated[str | None, typer.Option("--name", help="Rename the run (up to 128 printable characters); \"\" removes its name.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Set tag KEY=VALUE (replacing that key's value), repeatable. KEY: 1-64 of A-Z a-z 0-9 _ . -; VALUE: up to 256 characters; at most 32 tags.")] = None,
    untag: Annotated[list[str] | None, typer.Option("--untag", help="Remove tag KEY, repeatable (an unknown key is an error).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Name, tag or untag an existing run; prints its name and tags (--json: the whole run). With
    no option, shows them."""
    from shipyard.training import RunStore
    from shipyard.training.tracking import parse_tags

    with reporting(as_json):
        store = RunStore(settings())
        r = store.set_name_tags(run, name=name, tags=parse_tags(tag), untag=untag or ())
        if as_json:
            emit_json(r.to_dict())
            return
        out.print(escape(f"run {r.id}  name {r.name or '–'}  tags {_tags(r.tags) or '–'}"))


@runs_app.command("compare")
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")],
    as_json: JsonOpt = False,
) -> None:
    """Compare runs side by side: the recipe keys that differ and the results."""
    from shipyard.training import get_run

    with reporting(as_json):
        if len(run_ids) < 2:
            raise UsageError("compare needs at least two runs")
        found = [get_run(r, settings=settings()) for r in run_ids]
        keys = sorted({k for r in found for k in r.recipe})
        differing = [k for k in keys if len({json.dumps(r.recipe.get(k), sort_keys=True) for r in found}) > 1]
        results = ["status", "best_val_accuracy", "test_accuracy", "best_epoch", "epochs_run", "duration_s"]
        if as_json:
            emit_json({"runs": [r.id for r in found], "differing_params": differing,
                       "params": {k: [r.recipe.get(k) for r in found] for k in differing},
                       "results": {k: [r.to_dict()[k] for r in found] for k in results}})
            return
        t = Table("", *[r.id for r in found])
        for k in differing:
            t.add_row(f"[dim]{k}[/]", *[str(r.recipe.get(k)) for r in found])
        for k in results:
            vals = [r.to_dict()[k] for r in found]
            fmt = pct if k.endswith("accuracy") else (_dur if k == "duration_s" else str)
            t.add_row(k, *[fmt(v) for v in vals])
        out.print(t)
        if not differing:
            err.print("the runs have identical recipes")


@runs_app.command("plot")
def runs_plot(
    run_ids: Annotated[list[str], typer.Argument(help="One or more run ids.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG path [default: the run's folder/curves.png].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Plot training curves (loss and accuracy per epoch) to a PNG."""
    from shipyard.training import get_run
    from shipyard.training.plots import plot_curves

    with reporting(as_json):
        found = [get_run(r, settings=settings()) for r in run_ids]
        path = output or Path(found[0].run_dir or ".") / ("curves.png" if len(found) == 1 else "compare.png")
        plot_curves(found, path)
        if as_json:
            emit_json({"plot": str(path)})
        else:
            out.print(str(path))


def _brief(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    return {k: d[k] for k in ("run_id", "name", "tags", "status", "data_source", "best_val_accuracy", "test_accuracy",
                              "epochs_run", "best_epoch", "created_at", "duration_s", "checkpoint")} | {
        "model": r.recipe.get("model")}


def _tags(tags: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(tags.items()))


def _status(s: str) -> str:
    color = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}.get(s, "white")
    return f"[{color}]{s}[/]"


def _dur(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}min"
