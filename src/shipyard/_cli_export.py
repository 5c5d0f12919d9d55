"""`shipyard export …`: configuration for the tools teams already run (Prometheus, Grafana)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shipyard._output import emit_json, err, reporting

export_app = typer.Typer(help="Write configuration for Prometheus and Grafana.", no_args_is_help=True,
                         rich_markup_mode=None)


def _write(text: str, output: Path | None, what: str, as_json: bool) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    err.print(f"wrote {what} to {output}")
    if as_json:
        emit_json({"path": str(output.resolve()), "what": what})


@export_app.command("prometheus-rules")
def prometheus_rules(
    alerts: Annotated[Path | None, typer.Option(help="Alert rules file (TOML); default: the built-in rules.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With -o: print a JSON summary on stdout.")] = False,
) -> None:
    """The alert rules as a Prometheus rule file (YAML), over the series GET /metrics exposes.
    Check it with `promtool check rules FILE`."""
    with reporting(as_json):
        from shipyard.monitor import alerts as alerts_mod
        from shipyard.monitor.exports import prometheus_rules as render

        config = alerts_mod.load(alerts) if alerts else alerts_mod.DEFAULT_RULES
        _write(render(config), output, f"{len(config.rules)} Prometheus alerting rule(s)", as_json)


@export_app.command("grafana")
def grafana(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    title: Annotated[str, typer.Option(help="Dashboard title.")] = "shipyard",
    as_json: Annotated[bool, typer.Option("--json", help="With -o: print a JSON summary on stdout.")] = False,
) -> None:
    """A Grafana dashboard (JSON) over shipyard's Prometheus series: traffic, latency, errors,
    batch size, drift, accuracy, traffic split and versions. Import it in Grafana."""
    with reporting(as_json):
        from shipyard.monitor.exports import grafana as render

        dash = render(title)
        _write(json.dumps(dash, indent=2) + "\n", output, f"a Grafana dashboard of {len(dash['panels'])} panels",
               as_json)
