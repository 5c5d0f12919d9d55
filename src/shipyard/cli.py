"""The `shipyard` command: a thin Typer front that parses, calls the API, and prints.
Verbs that do not train never import torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from shipyard import __version__, _cli_bundle, _cli_export, _cli_monitor, _cli_serve, _cli_traffic, _cli_update
from shipyard._cli_models import gc, models_app
from shipyard._output import emit_json, err, out, pct, reporting
from shipyard.errors import UsageError
from shipyard.settings import Settings

app = typer.Typer(
    name="shipyard",
    help="Train, optimize, package, register, serve, monitor and update deep-learning models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
runs_app = typer.Typer(help="List, inspect, compare and plot training runs.", no_args_is_help=True,
                       rich_markup_mode=None)
data_app = typer.Typer(help="Inspect data sources.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(runs_app, name="runs")
app.add_typer(data_app, name="data")
app.command()(_cli_bundle.optimize)
app.command("import")(_cli_bundle.import_model)
app.add_typer(_cli_bundle.bundle_app, name="bundle")
app.add_typer(models_app, name="models")
app.command("gc")(gc)
app.command()(_cli_serve.serve)
app.add_typer(_cli_monitor.monitor_app, name="monitor")
app.add_typer(_cli_export.export_app, name="export")
app.command("trace")(_cli_monitor.trace)
app.command("retrain")(_cli_update.retrain)
app.command("rollout")(_cli_update.rollout)
app.command("rollback")(_cli_update.rollback)
app.command("quickstart")(_cli_update.quickstart)
app.command("autopilot")(_cli_update.autopilot)
app.command()(_cli_traffic.traffic)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on the last line of stdout.")]


class _State:
    settings: Settings | None = None


def settings() -> Settings:
    return _State.settings or Settings.from_env()


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
        _State.settings = Settings.from_env(home=home, database_url=db)


def _model_args(pairs: list[str] | None) -> dict[str, Any] | None:
    if not pairs:
        return None
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg wants KEY=VALUE, got {pair!r}")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw
    return args


@app.command()
def train(
    data: Annotated[str | None, typer.Option(help="mnist-sample | fashion-mnist | idx:DIR | npz:FILE | csv:FILE | folder:DIR  [default: mnist-sample]")] = None,
    model: Annotated[str | None, typer.Option(help="mlp | cnn | package.module:factory  [default: mlp]")] = None,
    model_arg: Annotated[list[str] | None, typer.Option(help="Model argument KEY=VALUE (JSON value), repeatable, e.g. hidden=[256,128].")] = None,
    epochs: Annotated[int | None, typer.Option(help="[default: 10]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[default: 32]")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam | adamw | sgd | rmsprop  [default: adam]")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate [default: 0.001].")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="[default: 0]")] = None,
    momentum: Annotated[float | None, typer.Option(help="For sgd and rmsprop [default: 0.9].")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="[default: 0]")] = None,
    schedule: Annotated[str | None, typer.Option(help="Learning-rate schedule: none | cosine | step  [default: none]")] = None,
    schedule_step: Annotated[int | None, typer.Option(help="Epochs between steps for --schedule step [default: 5].")] = None,
    schedule_gamma: Annotated[float | None, typer.Option(help="Factor per step for --schedule step [default: 0.1].")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after this many epochs without a val_accuracy gain [default: off].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights, shuffling and dropout [default: 0].")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share [default: 0.1 with a test split, else 0.2].")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column for csv: sources [default: label].")] = None,
    standardize: Annotated[str | None, typer.Option(help="none | global | feature  [default: the source's]")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads [default: SHIPYARD_THREADS or min(2, cores)].")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda  [default: auto]")] = None,
    like: Annotated[str | None, typer.Option(help="Replay this run's recipe, with the options given here as overrides.")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue this interrupted run from its last completed epoch.")] = None,
    nproc: Annotated[int | None, typer.Option(help="Data-parallel processes on this host (torch.distributed, gloo on CPU, NCCL on GPU); --batch-size stays the global batch and must divide by nproc × nnodes [default: 1].")] = None,
    nnodes: Annotated[int | None, typer.Option(help="Hosts in the job; run the same command on each with its own --node-rank [default: 1].")] = None,
    node_rank: Annotated[int, typer.Option(help="This host's rank, 0 to nnodes-1; node 0 holds the recipe and tracks the one run.")] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT of the c10d rendezvous, the same on every node (node 0 listens there); needed with --nnodes > 1.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a model and track the run (defaults: the canonical MNIST MLP recipe)."""
    from shipyard.train import get_run
    from shipyard.train import train as train_api

    def interrupted(run_id: str) -> dict[str, Any]:
        return get_run(run_id, settings=settings()).to_dict()

    with reporting(as_json, on_interrupt=interrupted):
        overrides = dict(
            data=data, model=model, model_args=_model_args(model_arg), epochs=epochs,
            batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
            momentum=momentum, label_smoothing=label_smoothing, schedule=schedule,
            schedule_step=schedule_step, schedule_gamma=schedule_gamma, patience=patience, seed=seed,
            val_fraction=val_fraction, label_column=label_column, standardize=standardize,
            threads=threads, device=device, nproc=nproc, nnodes=nnodes,
        )
        if resume and like:
            raise UsageError("--resume and --like exclude each other")
        run = train_api(like=like, resume=resume, settings=settings(), progress=not quiet,
                        node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, **overrides)
        summary = f"run [bold]{run.id}[/] {run.status}: best val_accuracy {pct(run.best_val_accuracy)} at epoch {run.best_epoch}"
        if run.test_accuracy is not None:
            summary += f", test_accuracy {pct(run.test_accuracy)}"
        err.print(summary)
        if as_json:
            emit_json(run.to_dict())
        else:
            out.print(escape(f"checkpoint      {run.checkpoint}\ntensorboard_dir {run.tensorboard_dir}"))


@runs_app.command("list")
def runs_list(
    status: Annotated[str | None, typer.Option(help="running | finished | failed | interrupted")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List training runs, newest first."""
    from shipyard.train import runs

    with reporting(as_json):
        found = runs(status=status, limit=limit, settings=settings())
        if as_json:
            emit_json({"runs": [_brief(r) for r in found]})
            return
        t = Table("run", "status", "model", "data", "epochs", "best val acc", "test acc", "started", "time")
        for r in found:
            t.add_row(r.id, _status(r.status), str(r.recipe.get("model")), r.data_source,
                      f"{r.epochs_run}/{r.recipe.get('epochs')}", pct(r.best_val_accuracy),
                      pct(r.test_accuracy), r.created_at.strftime("%Y-%m-%d %H:%M"), _dur(r.duration_s))
        out.print(t if found else "no runs yet: try `shipyard train`")


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one run: recipe, per-epoch metrics, artifacts and paths."""
    from shipyard.train import get_run

    with reporting(as_json):
        r = get_run(run, settings=settings())
        if as_json:
            emit_json(r.to_dict())
            return
        out.print(f"[bold]run {r.id}[/]  {_status(r.status)}" + (f"  [red]{escape(r.error)}[/]" if r.error else ""))
        head = Table.grid(padding=(0, 2))
        head.add_column(no_wrap=True)
        head.add_column(overflow="fold")
        for k, v in [("data", f"{r.data_source}  (fingerprint {str(r.data_fingerprint)[:16]}…)"),
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


@runs_app.command("compare")
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")],
    as_json: JsonOpt = False,
) -> None:
    """Compare runs side by side: the recipe keys that differ and the results."""
    from shipyard.train import get_run

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
            t.add_row(k, *[fmt(v) for v in vals])  # type: ignore[operator]
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
    from shipyard.train import get_run
    from shipyard.train.plots import plot_curves

    with reporting(as_json):
        found = [get_run(r, settings=settings()) for r in run_ids]
        path = output or Path(found[0].run_dir or ".") / ("curves.png" if len(found) == 1 else "compare.png")
        plot_curves(found, path)
        if as_json:
            emit_json({"plot": str(path)})
        else:
            out.print(str(path))


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


def _brief(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    return {k: d[k] for k in ("run_id", "status", "data_source", "best_val_accuracy", "test_accuracy",
                              "epochs_run", "best_epoch", "created_at", "duration_s", "checkpoint")} | {
        "model": r.recipe.get("model")}


def _status(s: str) -> str:
    color = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}.get(s, "white")
    return f"[{color}]{s}[/]"


def _dur(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}min"


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
        # the parser's errors (Typer ships its own copy of Click's exception classes): told apart
        # by what every one of them has
        if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
            raise
        try:
            from typer import rich_utils

            rich_utils.rich_format_error(e)  # type: ignore[arg-type]
        except ImportError:
            e.show()  # type: ignore[attr-defined]
        if "--json" in sys.argv[1:]:
            emit_json({"error": e.format_message()})
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    sys.exit(rc if type(rc) is int else 0)
