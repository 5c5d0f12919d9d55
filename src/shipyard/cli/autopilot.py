"""`shipyard autopilot`: close the loop without a person (the policy and decisions are in
`shipyard.update.autopilot`)."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard.cli._common import JsonOpt, emit_json, err, registry, reporting, settings


def autopilot(
    name: Annotated[str, typer.Argument(help="Model name.")],
    policy: Annotated[str | None, typer.Option(help="Policy file (TOML): triggers, limits, retrain and rollout settings. Default: drift, accuracy or mae alerts, 200 labels, 1 h cooldown, 3 retrains a day.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what it would do; change nothing.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Decide (and act) once, then exit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Watch NAME's alerts and, when a drift, accuracy or mae alert is open and enough labels have come
    back, retrain → offline gate → rollout, within the policy's cooldown and daily budget. Every
    decision is logged with its reason and recorded in `models history`. Ctrl-C stops it."""
    from shipyard.update.autopilot import Autopilot, Decision, Policy, load_policy

    def decided(d: Decision) -> None:
        emit_json({"name": name, "action": d.action, "reason": d.reason, "dry_run": dry_run, **d.details})

    with reporting(as_json):
        pol = load_policy(policy) if policy else Policy()
        reg = registry()
        reg.get(f"{name}@production")
        pilot = Autopilot(reg, name, pol, settings=settings(), dry_run=dry_run, log=lambda m: err.print(m))
        if once:
            d = pilot.run(once=True)
            if as_json:
                decided(d)
            if d.action in ("rolled_back", "stop"):
                raise typer.Exit(1)
            return
        err.print(f"autopilot on {name}: checking every {pol.poll_s:g} s (Ctrl-C stops)")
        try:
            pilot.run(on_decision=decided if as_json else None)  # JSON Lines: one object per decision
        except KeyboardInterrupt:
            err.print("stopped")
