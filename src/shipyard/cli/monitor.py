"""`shipyard monitor …`: what the models in production are doing, from the prediction log in the
registry's database. Parse, call `shipyard.monitor`, print."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from shipyard.cli._common import JsonOpt, emit_json, err, out, parse_since, registry, reporting, settings
from shipyard.errors import NotFound, UsageError

monitor_app = typer.Typer(help="Monitoring: drift, accuracy and alerts, the prediction log and labels.", no_args_is_help=True,
                          rich_markup_mode=None)


@monitor_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Model name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (.csv or .parquet).")],
    since: Annotated[str, typer.Option(help="From when: a span ago (30m, 2h, 7d) or an ISO time.")] = "7d",
    fmt: Annotated[str | None, typer.Option("--format", help="csv or parquet (default: from the file name).")] = None,
    projection: Annotated[bool, typer.Option(help="Add the input projection columns p0…pK.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the prediction log of NAME (request id, time, version, predicted class, confidence,
    the label if one arrived) as CSV or Parquet."""
    from shipyard.monitor import export_log

    with reporting(as_json):
        kind = export_log.file_format(output, fmt)
        done = export_log.export(registry(), name, output, since=parse_since(since), fmt=kind, projection=projection)
        err.print(f"wrote {done.rows:,} predictions ({done.labelled:,} labelled) of {name} to {output}")
        if as_json:
            emit_json(done.to_dict())


def _fmt_test(t: dict[str, Any] | None) -> str:
    if not t:
        return "-"
    return f"{'ALARM ' if t['alarm'] else ''}p={t['p_value']:.1e}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


@monitor_app.command("status")
def status_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 3 when any version alarms or an alert is open.")] = False,
) -> None:
    """The current state of NAME as the evaluator last persisted it: per version the drift tests
    of the newest window, realised and estimated accuracy, and the open alerts."""
    from rich.table import Table

    from shipyard.monitor.api import Monitor

    with reporting(as_json):
        st = Monitor(settings=settings()).status(name)
        if as_json:
            emit_json(st)
        else:
            table = Table(title=f"{name}: monitoring", title_justify="left")
            for col in ("version", "aliases", "windows", "last window", "input", "mean", "prediction", "confidence",
                        "softmax", "estimated acc", "realised (labels)"):
                table.add_column(col)
            notes = []
            for ver, s in st["versions"].items():
                w, d, a = s["window"], s["drift"], s["accuracy"]
                est = _pct(a["estimated"])
                if a["estimated"] is not None and not a.get("estimated_reliable", True):
                    est = f"[dim]{est} (unreliable)[/]"
                    notes.append(f"v{ver}: the estimate cannot be believed: {a.get('estimated_reason')}")
                if w.get("note"):
                    notes.append(f"v{ver}: {w['note']}")
                for rule, r in (s.get("rules") or {}).items():
                    if r["state"] == "unknown":
                        notes.append(f"v{ver}: rule {rule} is unknown: {r['message']}")
                table.add_row(ver, ",".join(s["aliases"]) or "-", str(s["windows"]),
                              f"{w.get('n', '-')} (+{s['pending']} pending)" + (" STALE" if s["stale"] else ""),
                              _fmt_test(d.get("input")), _fmt_test(d.get("mean")), _fmt_test(d.get("prediction")),
                              _fmt_test(d.get("confidence")), _fmt_test(d.get("softmax")), est,
                              (f"MAE {a['realised_mae']:.4g}" if a.get("realised_mae") is not None else
                               "MAE -" if s.get("task") == "regression" else _pct(a["realised"]))
                              + f" ({a['n_labels']})")
            out.print(table)
            for note in notes:
                out.print(note, markup=False, highlight=False)
            sv = st["serving"]
            if sv["requests"]:
                out.print(f"serving (last {sv['span_s'] // 60} min, {len(sv['workers'])} worker(s) across the "
                          f"deployment): {sv['requests']} requests, error rate {_pct(sv['error_rate'])}, "
                          f"p99 {'-' if sv['p99_ms'] is None else format(sv['p99_ms'], '.1f')} ms")
            lg = st.get("log")
            if lg:
                from shipyard.monitor.logbudget import human

                removed = sum(lg.get("removed", {}).values())
                out.print(f"prediction log (all models): {human(lg['used_bytes'])} of {human(lg['budget_bytes'])} "
                          f"({lg['used_share']:.0%}); {removed} rows removed by retention and the budget")
            if not st["versions"]:
                err.print("no evaluated windows yet: is a server (or `shipyard monitor run`) evaluating it?")
            for al in st["alerts"]:
                tag = "[red]alert[/]" if al["status"] == "firing" else "[yellow]alert (unknown)[/]"
                out.print(f"{tag} {al['id']} {escape(al['rule'])} ({al['severity']}): {escape(al['message'])}"
                          + (f" [dim]{escape(_acked(al))}[/]" if al.get("acknowledged_at") is not None else ""))
        if check and (st["alerts"] or any(s["alarm"] for s in st["versions"].values())):
            raise typer.Exit(3)


def _acked(al: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(al["acknowledged_at"]))
    return f"acknowledged by {al['acknowledged_by']} at {when} UTC" + (f": {al['ack_reason']}" if al.get("ack_reason") else "")


@monitor_app.command("ack")
def ack_cmd(
    alert_id: Annotated[int, typer.Argument(help="The alert's id (`shipyard monitor status NAME` shows it).", min=1)],
    reason: Annotated[str | None, typer.Option("--reason", help="Why: kept with the alert and in the model's history.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Acknowledge an open (firing or unknown) alert: its webhook sends nothing more for it until it
    resolves, and then still sends the resolution. A new incident later notifies as usual. The
    acknowledgement (who, when, why) shows in `monitor status` and `shipyard models history`."""
    from shipyard.monitor.api import Monitor

    with reporting(as_json):
        al = Monitor(registry()).acknowledge(alert_id, reason=reason)
        err.print(f"alert {alert_id} ({al['rule']} on {al['model']}): {_acked(al)}", markup=False)
        if as_json:
            emit_json({"alert": al})


@monitor_app.command("run")
def run_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Models to evaluate (default: every model with a production alias).")] = None,
    window: Annotated[int, typer.Option(help="Predictions per drift window.")] = 250,
    window_max_age_s: Annotated[float, typer.Option(help="A window not full after this many seconds is tested with what it has.")] = 300.0,
    once: Annotated[bool, typer.Option("--once", help="One evaluation round, then exit (cron, scripts).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the drift evaluator in the foreground, for servers started with --no-evaluate or to
    watch from another host. Takes the same lease as the servers: exactly one process computes
    each model's windows."""
    from shipyard.monitor.evaluator import Evaluator, MonitorConfig

    with reporting(as_json):
        if window < 50 or window_max_age_s <= 0:
            raise UsageError("--window must be ≥ 50 and --window-max-age-s > 0")
        reg = registry()
        known = reg.model_names()
        for n in names or []:
            if n not in known:
                raise NotFound(f"no model {n!r} (see `shipyard models list`)")
        watched = list(names or reg.model_names(alias="production"))
        if not watched:
            raise UsageError("no model to evaluate: name one, or give a model a production alias")
        ev = Evaluator(reg, lambda: watched, MonitorConfig(window=window, max_age_s=window_max_age_s))

        def report(states: dict[str, dict[int, dict[str, Any]]]) -> None:
            emit_json({"evaluated": {n: {str(v): s for v, s in st.items()} for n, st in states.items()},
                       "held_elsewhere": [n for n in watched if n not in states]})

        if once:
            states = ev.tick()
            ev.stop()
            if as_json:
                report(states)
            else:
                for n in watched:
                    err.print(f"{n}: " + ("evaluated" if n in states else "evaluated by another process"))
            return
        err.print(f"evaluating {', '.join(watched)} every {ev.config.tick_s:g} s (Ctrl-C stops)")
        try:
            while True:
                try:
                    states = ev.tick()
                except Exception as e:  # noqa: BLE001 - the database may be away for a while: keep trying
                    err.print(f"[yellow]evaluation failed:[/] {e}; retrying")
                    if as_json:
                        emit_json({"error": f"{type(e).__name__}: {e}", "error_type": type(e).__name__,
                                   "retrying": True})
                else:
                    if as_json:  # JSON Lines: one object per evaluation round
                        report(states)
                time.sleep(ev.config.tick_s)
        except KeyboardInterrupt:
            err.print("stopped")
        finally:
            ev.stop()

EXAMPLE_RULES = '''# shipyard alert rules: `shipyard serve --alerts FILE`, checked with `shipyard monitor rules FILE`
[webhook]                      # optional: POSTed as JSON when an alert opens and when it resolves
url = "http://127.0.0.1:9000/shipyard"
timeout_s = 2.0
retries = 3

[defaults]
cooldown_s = 600               # firing again this soon after resolving reopens the same alert
severity = "warning"

[[rule]]
name = "drift"
kind = "drift"
tests = ["input", "mean", "prediction", "confidence", "softmax"]
# no `windows`: a CUSUM over the windows' evidence (one alarming window alerts; near misses add
# up), calibrated with the thresholds. `windows = 2` instead: two alarming windows in a row

[[rule]]
name = "accuracy-estimated"
kind = "accuracy"
source = "estimated"           # no labels needed; "unknown" while the estimate cannot be believed
below_validation_by = 0.10     # or: below = 0.80

[[rule]]
name = "accuracy-realised"
kind = "accuracy"
source = "realised"            # from feedback labels
below = 0.80
last = 500
min_labels = 100

[[rule]]
name = "mae-rise"
kind = "mae"                   # a regression's realised MAE, from feedback values (lower is better)
above_validation_by = 0.25     # 25% above the bundle's validation MAE; or: above = 50.0 (target units)
last = 500
min_labels = 50

[[rule]]
name = "labels-needed"
kind = "labels"                # while the estimate cannot be believed and the realised rule lacks labels
severity = "info"
min_labels = 100               # match the realised rule's min_labels

[[rule]]
name = "server-errors"
kind = "error_rate"
severity = "critical"
above = 0.01
over_s = 60

[[rule]]
name = "latency"
kind = "latency_p99"
above_ms = 50
over_s = 60

[[rule]]
name = "bad-input"
kind = "rejections"            # 400/413: NaN, wrong shape or dtype, oversized
above = 0.05
over_s = 300
'''


@monitor_app.command("rules")
def rules_cmd(
    path: Annotated[Path | None, typer.Argument(help="Alert rules file (TOML) to check; none: the built-in rules.")] = None,
    example: Annotated[bool, typer.Option("--example", help="Print an example rules file with every kind of rule.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check an alert rules file and show what each rule watches (exit 2 naming the bad key)."""
    from dataclasses import asdict

    from shipyard.monitor import alert_rules

    with reporting(as_json):
        if example:
            typer.echo(EXAMPLE_RULES, nl=False)
            return
        config = alert_rules.load(path) if path else alert_rules.DEFAULT_RULES
        if as_json:
            emit_json({"rules": [asdict(r) for r in config.rules], "cooldown_s": config.cooldown_s,
                       "webhook": None if config.webhook is None else {"url": config.webhook.url,
                                                                       "timeout_s": config.webhook.timeout_s,
                                                                       "retries": config.webhook.retries}})
            return
        for r in config.rules:
            scope = "" if r.models == ("*",) else f" [models {', '.join(r.models)}]"
            out.print(f"{r.name} ({r.severity}): {r.describe()}{scope}")
        out.print(f"webhook: {config.webhook.url if config.webhook else 'none (alerts are stored and logged)'}; "
                  f"cooldown {config.cooldown_s:g} s")


@monitor_app.command("report")
def report_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    html: Annotated[Path, typer.Option("--html", help="The report file to write (self-contained HTML).")],
    since: Annotated[str, typer.Option(help="From when: a span ago (30m, 2h, 7d) or an ISO time.")] = "24h",
    as_json: JsonOpt = False,
) -> None:
    """Write a report of NAME in production: latency, traffic, drift scores, accuracy (estimated
    and realised), the versions behind each alias and the alerts, over time. One HTML file with
    its plots inline: open it anywhere, attach it to a ticket."""
    from shipyard.monitor.api import Monitor

    with reporting(as_json):
        start = parse_since(since)
        path = Monitor(settings=settings()).report(name, html, since=start)
        err.print(f"wrote the report of {name} to {path}")
        if as_json:
            emit_json({"model": name, "path": str(path.resolve()), "since": start})
