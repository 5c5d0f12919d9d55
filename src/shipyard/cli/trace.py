"""`shipyard trace REQUEST_ID`: where a logged prediction came from, end to end."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard.cli._common import JsonOpt, emit_json, out, reporting, settings


def trace(
    request_id: Annotated[str, typer.Argument(help="The request id (the V2 `id`, or the X-Request-Id the server answered).")],
    model: Annotated[str | None, typer.Option(help="Look in this model's log only (faster).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a logged prediction came from: the version that answered, its bundle and variant,
    the training run and data fingerprint, the label if one arrived, and the monitoring window
    and alerts it fell in."""
    from datetime import UTC, datetime

    from shipyard.monitor.api import Monitor

    with reporting(as_json):
        t = Monitor(settings=settings()).trace(request_id, model=model)
        if as_json:
            emit_json(t)
            return

        def when(ts: float) -> str:
            return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")

        for e in t.get("explanations", []):
            sm = e["summary"]
            out.print(f"[bold]{t['request_id']}[/]: {e['model']} v{e['version']} explained {e['n']} instance(s) with "
                      f"{e['method']} at {when(e['ts'])}: target {', '.join(map(str, sm['target_label'][:4]))}, "
                      f"output {', '.join(f'{v:.4g}' for v in sm['output'][:4])} (baseline "
                      f"{', '.join(f'{v:.4g}' for v in sm['baseline_output'][:4])})")
        if t["predicted"] is None:  # an explain request only: no logged prediction to trace
            return
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
