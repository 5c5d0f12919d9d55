"""The `shipyard` command: the Typer root app, its callback (`--home`, `--db`, `--version`), and the
one place every verb is registered. A thin front that parses, calls the API, and prints; verbs that
do not train never import torch. Command modules import `_common`, never this module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Protocol, TypeGuard

import typer

from shipyard._version import __version__
from shipyard.cli import (
    autopilot,
    bundle,
    data,
    explain,
    export,
    gc,
    models,
    monitor,
    optimize,
    predict,
    quickstart,
    retrain,
    rollout,
    runs,
    serve,
    trace,
    traffic,
    train,
    ui,
)
from shipyard.cli._common import emit_json, err, out, reporting, use_settings
from shipyard.settings import Settings

app = typer.Typer(
    name="shipyard",
    help="Train, optimize, package, register, serve, monitor and update deep-learning models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# the order here is the order `shipyard --help` lists them in: commands, then groups
app.command()(optimize.optimize)
app.command("import")(optimize.import_model)
app.command("gc")(gc.gc)
app.command()(serve.serve)
app.command("predict")(predict.predict)
app.command("explain")(explain.explain)
app.command("trace")(trace.trace)
app.command("retrain")(retrain.retrain)
app.command("rollout")(rollout.rollout)
app.command("rollback")(rollout.rollback)
app.command("quickstart")(quickstart.quickstart)
app.command("autopilot")(autopilot.autopilot)
app.command()(traffic.traffic)
app.command()(train.train)
app.command("ui")(ui.ui)
app.add_typer(runs.runs_app, name="runs")
app.add_typer(data.data_app, name="data")
app.add_typer(bundle.bundle_app, name="bundle")
app.add_typer(models.models_app, name="models")
app.add_typer(monitor.monitor_app, name="monitor")
app.add_typer(export.export_app, name="export")


def _version(value: bool) -> None:
    if value:
        out.print(f"shipyard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    home: Annotated[Path | None, typer.Option(help="State folder [env: SHIPYARD_HOME; default ./.shipyard].")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL [env: SHIPYARD_DATABASE_URL; default SQLite in HOME].")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    with reporting(False):
        use_settings(Settings.from_env(home=home, database_url=db))


class _ParserError(Protocol):
    """What every error of the parser has (Typer ships its own copy of Click's exception classes
    and exports none of them)."""

    exit_code: int

    def format_message(self) -> str: ...

    def show(self) -> None: ...


def _is_parser_error(e: Exception) -> TypeGuard[_ParserError]:
    return hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)


def main() -> None:
    """The `shipyard` command. Usage errors the parser finds itself (an unknown option, a value of
    the wrong type, a missing argument) keep the --json contract too: the message on stderr, the
    last stdout line `{"error": …}`, exit code 2."""
    import sys

    try:
        rc = app(standalone_mode=False)
    except typer.Abort:
        err.print("Aborted!")
        sys.exit(1)
    except Exception as e:
        # the parser's errors: told apart by what every one of them has
        if not _is_parser_error(e):
            raise
        try:
            from typer import rich_utils

            # typer annotates this with its private _click.ClickException, which it does not export
            rich_utils.rich_format_error(e)  # type: ignore[arg-type]
        except ImportError:
            e.show()
        if "--json" in sys.argv[1:]:
            emit_json({"error": e.format_message()})
        sys.exit(e.exit_code)
    sys.exit(rc if type(rc) is int else 0)
