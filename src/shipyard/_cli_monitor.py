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

monitor_app = typer.Typer(help="Monitoring: drift, accuracy and alerts, the prediction log and labels.", no_args_is_help=True,
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


def _fmt_test(t: dict | None) -> str:  # type: ignore[type-arg]
    if not t:
        return "-"
    return f"{'ALARM ' if t['alarm'] else ''}p={t['p_value']:.1e}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


@monitor_app.command("status")
def status_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the state as one JSON object on stdout.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 3 when any version alarms or an alert is open.")] = False,
) -> None:
    """The current state of NAME as the evaluator last persisted it: per version the drift tests
    of the newest window, realised and estimated accuracy, and the open alerts."""
    from rich.table import Table

    from shipyard._output import out
    from shipyard.cli import settings
    from shipyard.monitor.api import Monitor

    with reporting(as_json):
        st = Monitor(settings=settings()).status(name)
        if as_json:
            emit_json(st)
        else:
            table = Table(title=f"{name}: monitoring", title_justify="left")
            for col in ("version", "aliases", "windows", "last window", "input", "prediction", "confidence",
                        "estimated acc", "realised acc (labels)"):
                table.add_column(col)
            for ver, s in st["versions"].items():
                w, d, a = s["window"], s["drift"], s["accuracy"]
                table.add_row(ver, ",".join(s["aliases"]) or "-", str(s["windows"]),
                              f"{w.get('n', '-')} (+{s['pending']} pending)" + (" STALE" if s["stale"] else ""),
                              _fmt_test(d.get("input")), _fmt_test(d.get("prediction")),
                              _fmt_test(d.get("confidence")), _pct(a["estimated"]),
                              f"{_pct(a['realised'])} ({a['n_labels']})")
            out.print(table)
            sv = st["serving"]
            if sv["requests"]:
                out.print(f"serving (last {sv['span_s'] // 60} min, {len(sv['workers'])} worker(s) across the "
                          f"deployment): {sv['requests']} requests, error rate {_pct(sv['error_rate'])}, "
                          f"p99 {'-' if sv['p99_ms'] is None else format(sv['p99_ms'], '.1f')} ms")
            if not st["versions"]:
                err.print("no evaluated windows yet: is a server (or `shipyard monitor run`) evaluating it?")
            for al in st["alerts"]:
                out.print(f"[red]alert[/] {al['rule']} ({al['severity']}): {al['message']}")
        if check and (st["alerts"] or any(s["alarm"] for s in st["versions"].values())):
            raise typer.Exit(3)


@monitor_app.command("run")
def run_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Models to evaluate (default: every model with a production alias).")] = None,
    window: Annotated[int, typer.Option(help="Predictions per drift window.")] = 250,
    window_max_age_s: Annotated[float, typer.Option(help="A window not full after this many seconds is tested with what it has.")] = 300.0,
    once: Annotated[bool, typer.Option("--once", help="One evaluation round, then exit (cron, scripts).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: print the states as JSON.")] = False,
) -> None:
    """Run the drift evaluator in the foreground, for servers started with --no-evaluate or to
    watch from another host. Takes the same lease as the servers: exactly one process computes
    each model's windows."""
    from shipyard.cli import settings
    from shipyard.monitor.evaluator import Evaluator, MonitorConfig
    from shipyard.registry import Registry

    with reporting(as_json):
        if window < 50 or window_max_age_s <= 0:
            raise UsageError("--window must be ≥ 50 and --window-max-age-s > 0")
        reg = Registry(settings=settings())
        known = {m.name: m for m in reg.list()}
        for n in names or []:
            if n not in known:
                raise NotFound(f"no model {n!r} (see `shipyard models list`)")
        watched = list(names or [n for n, m in known.items() if "production" in m.aliases])
        if not watched:
            raise UsageError("no model to evaluate: name one, or give a model a production alias")
        ev = Evaluator(reg, lambda: watched, MonitorConfig(window=window, max_age_s=window_max_age_s))
        if once:
            states = ev.tick()
            ev.stop()
            if as_json:
                emit_json({"evaluated": {n: {str(v): s for v, s in st.items()} for n, st in states.items()},
                           "held_elsewhere": [n for n in watched if n not in states]})
            else:
                for n in watched:
                    err.print(f"{n}: " + ("evaluated" if n in states else "evaluated by another process"))
            return
        err.print(f"evaluating {', '.join(watched)} every {ev.config.tick_s:g} s (Ctrl-C stops)")
        try:
            while True:
                try:
                    ev.tick()
                except Exception as e:  # noqa: BLE001 - the database may be away for a while: keep trying
                    err.print(f"[yellow]evaluation failed:[/] {e}; retrying")
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
tests = ["input", "prediction", "confidence"]
windows = 2                    # consecutive alarming windows

[[rule]]
name = "accuracy-estimated"
kind = "accuracy"
source = "estimated"           # from calibrated confidence: no labels needed
below_validation_by = 0.10     # or: below = 0.80

[[rule]]
name = "accuracy-realised"
kind = "accuracy"
source = "realised"            # from feedback labels
below = 0.80
last = 500
min_labels = 100

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
    as_json: Annotated[bool, typer.Option("--json", help="Print the parsed rules as JSON.")] = False,
) -> None:
    """Check an alert rules file and show what each rule watches (exit 2 naming the bad key)."""
    from dataclasses import asdict

    from shipyard._output import out
    from shipyard.monitor import alerts as alerts_mod

    with reporting(as_json):
        if example:
            typer.echo(EXAMPLE_RULES, nl=False)
            return
        config = alerts_mod.load(path) if path else alerts_mod.DEFAULT_RULES
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
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Write a report of NAME in production: latency, traffic, drift scores, accuracy (estimated
    and realised), the versions behind each alias and the alerts, over time. One HTML file with
    its plots inline: open it anywhere, attach it to a ticket."""
    from shipyard.cli import settings
    from shipyard.monitor.api import Monitor

    with reporting(as_json):
        start = parse_since(since)
        path = Monitor(settings=settings()).report(name, html, since=start)
        err.print(f"wrote the report of {name} to {path}")
        if as_json:
            emit_json({"model": name, "path": str(path.resolve()), "since": start})


def trace(
    request_id: Annotated[str, typer.Argument(help="The request id (the V2 `id`, or the X-Request-Id the server answered).")],
    model: Annotated[str | None, typer.Option(help="Look in this model's log only (faster).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trace as one JSON object on stdout.")] = False,
) -> None:
    """Where a logged prediction came from: the version that answered, its bundle and variant,
    the training run and data fingerprint, the label if one arrived, and the monitoring window
    and alerts it fell in."""
    from datetime import UTC, datetime

    from shipyard._output import out
    from shipyard.cli import settings
    from shipyard.monitor.api import Monitor

    with reporting(as_json):
        t = Monitor(settings=settings()).trace(request_id, model=model)
        if as_json:
            emit_json(t)
            return

        def when(ts: float) -> str:
            return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")

        out.print(f"[bold]{t['request_id']}[/]: {t['model']} v{t['version']} predicted {t['predicted']!r} at "
                  f"{when(t['time'])}")
        if t["label"]:
            mark = "correct" if t["label"]["correct"] else "wrong"
            out.print(f"  label     {t['label']['label']!r} ({mark}), received {when(t['label']['received_at'])}")
        b = t["bundle"]
        out.print(f"  bundle    {b['sha256'][:16]}… variant {b['variant']}, aliases now: {', '.join(b['aliases']) or '-'}"
                  if b else "  bundle    (the version has been deleted)")
        r = t["run"]
        out.print(f"  run       {r['id']} ({r.get('status', '?')}), data {r.get('data_source', '?')}" if r
                  else "  run       none recorded (imported or hand-made bundle)")
        out.print(f"  data      fingerprint {t['data_fingerprint'] or '-'}")
        w = t["window"]
        if w:
            fired = [k for k, v in w["drift"].items() if v["alarm"]]
            out.print(f"  window    #{w['id']}: {w['n']} predictions {when(w['ts_first'])} – {when(w['ts_last'])}, "
                      + (f"[red]drift alarm ({', '.join(fired)})[/]" if fired else "no drift alarm"))
        else:
            out.print("  window    not evaluated yet (or no evaluator ran)")
        for a in t["alerts"]:
            out.print(f"  alert     {a['rule']} ({a['severity']}, {a['status']}): {a['message']}")
