"""`shipyard retrain`: a challenger from production data, judged by the offline gate."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard.cli._common import JsonOpt, emit_json, err, parse_since, reporting, settings


def retrain(
    name: Annotated[str, typer.Argument(help="Model name.")],
    champion: Annotated[str, typer.Option(help="The alias of the version to retrain.")] = "production",
    data: Annotated[str | None, typer.Option(help="The original data source, if the champion's cannot be read here.")] = None,
    since: Annotated[str | None, typer.Option(help="Production samples from when: a span ago (7d) or an ISO time (default: all kept).")] = None,
    holdout: Annotated[float, typer.Option(help="Share of the newest labelled samples never trained on (the recent holdout).")] = 0.2,
    min_labels: Annotated[int, typer.Option(help="Refuse with fewer labelled production samples than this.")] = 20,
    epochs: Annotated[int | None, typer.Option(help="Override the champion's recipe: epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the champion's recipe: learning rate.")] = None,
    alias: Annotated[str, typer.Option(help="The alias the new version gets.")] = "candidate",
    tolerance: Annotated[float, typer.Option(help="Offline gate: how much worse (absolute accuracy) the challenger may be.")] = 0.01,
    as_json: JsonOpt = False,
) -> None:
    """Retrain NAME from production: the champion's original data plus the labelled production
    samples (the newest share held out), warm-started from its weights with its recipe; optimize,
    bundle, register behind `candidate` with the lineage, and run the offline gate (challenger vs
    champion on the recent holdout and the validation split). Exit 1 if the gate fails."""
    with reporting(as_json):
        from shipyard.update.retrain import retrain as run_retrain

        result = run_retrain(name, settings=settings(), champion=champion, data=data,
                             since=parse_since(since) if since else None, holdout=holdout, min_labels=min_labels,
                             alias=alias, tolerance=tolerance, progress=not as_json, epochs=epochs, lr=lr)
        if as_json:
            emit_json(result.to_dict())
        g = result.gate
        for label, v in g["sets"].items():
            if v["challenger"] is not None and g.get("metric") == "mae":
                err.print(f"  {label:<15} MAE challenger {v['challenger']:.4g}  champion {v['champion']:.4g}  "
                          f"(n={v['n']})")
            elif v["challenger"] is not None:
                err.print(f"  {label:<15} challenger {v['challenger']:.2%}  champion {v['champion']:.2%}  (n={v['n']})")
        if not g["passed"]:
            err.print(f"[red]offline gate failed:[/] {g['reason']} (rollout refuses it unless --no-offline-gate)")
            raise typer.Exit(1)
