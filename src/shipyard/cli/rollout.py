"""`shipyard rollout` (start, status, abort, resume a canary) and `shipyard rollback`: moving
production to a candidate step by step, or back at once."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard.cli._common import JsonOpt, emit_json, err, registry, reporting
from shipyard.errors import UsageError

ACTIONS = ("status", "abort", "resume")


def rollout(
    target: Annotated[list[str], typer.Argument(help="NAME to start a rollout, or status|abort|resume NAME.", metavar="[ACTION] NAME")],
    steps: Annotated[str, typer.Option(help="Canary weights in percent, ending at 100.")] = "10,50,100",
    gate: Annotated[list[str] | None, typer.Option(help="Gates to apply (repeatable): error_rate<=0.01, p99<=50 (ms), accuracy[=TOLERANCE] (a regression's: mae[=RELATIVE TOLERANCE], 0.02), agreement>=0.9. Default: all four with those limits (p99: 2× the champion's + 5 ms).")] = None,
    min_requests: Annotated[int, typer.Option(help="Candidate answers each step waits for.")] = 200,
    min_labels: Annotated[int, typer.Option(help="Labels on candidate answers each step waits for.")] = 100,
    step_timeout: Annotated[float, typer.Option(help="A step that has not seen enough requests and labels after this many seconds fails.")] = 600.0,
    offline_gate: Annotated[bool, typer.Option("--offline-gate/--no-offline-gate", help="Refuse a candidate whose offline gate failed (or that has none).")] = True,
    candidate: Annotated[str, typer.Option(help="The candidate's alias.")] = "candidate",
    reason: Annotated[str, typer.Option(help="With abort: why (recorded in history).")] = "aborted by hand",
    as_json: JsonOpt = False,
) -> None:
    """Canary rollout of NAME@candidate: step by step through --steps, each step waiting for
    enough candidate requests and labels, then checking the online gates (error rate, p99,
    accuracy against the champion on the same window, agreement with the champion). All pass:
    `production` moves to the candidate. Any fails: its weight goes back to 0 and the reason is
    recorded. Exit 0 promoted, 1 rolled back, aborted or refused by the offline gate, 2 usage.
    `status`, `abort` and `resume` work from any shell; a successful `abort` exits 0."""
    from shipyard.update import rollout as ro

    with reporting(as_json):
        if len(target) == 2 and target[0] in ACTIONS:
            action, name = target
        elif len(target) == 1:
            action, name = "start", target[0]
        else:
            raise UsageError(f"expected NAME or one of {', '.join(ACTIONS)} NAME, got {' '.join(target)!r}")
        reg = registry()
        if action == "status":
            st = ro.status(reg.engine, name)
            if st is None:
                reg.get(name)  # an unknown model is a NotFound, not "no rollout"
            if as_json:
                emit_json({"name": name, "rollout": st})
            elif st is None:
                err.print(f"{name}: no rollout yet")
            else:
                where = f" at {st['weight']}% (step {st['step'] + 1}/{len(st['steps'])})" if st["weight"] else ""
                err.print(f"{name}: rollout of v{st['candidate']} over v{st['champion']} {st['status']}{where}"
                          + (f" — {st['reason']}" if st["reason"] else ""))
                for v in st["verdicts"]:
                    gates = ", ".join(f"{g['gate']} {'pass' if g['passed'] else 'FAIL'}" for g in v["gates"])
                    err.print(f"  step {v['step'] + 1} at {v['weight']}%: {gates}")
            return
        if action == "abort":
            st = ro.abort(reg, name, reason)
            if as_json:
                emit_json({"name": name, "rollout": st})
            err.print(f"aborted the rollout of {name} v{st['candidate']}: its weight is back to 0")
            return  # the abort succeeded: exit 0 (the rollout it stopped exits 1 itself)
        try:
            weights = tuple(int(s) for s in steps.split(",") if s.strip())
        except ValueError:
            raise UsageError(f"--steps {steps!r}: give percents such as 10,50,100") from None
        config = ro.parse_gates(gate or [], ro.RolloutConfig(steps=weights, min_requests=min_requests,
                                                             min_labels=min_labels, step_timeout_s=step_timeout,
                                                             candidate_alias=candidate).check())
        runner = ro.Rollout(reg, name, config, log=lambda m: err.print(m))
        try:
            st = runner.resume() if action == "resume" else runner.start(offline_gate=offline_gate)
        except ro.RolloutFailed as e:
            if as_json:
                emit_json({"name": name, "rollout": ro.status(reg.engine, name), "error": str(e)})
            err.print(f"[red]rolled back:[/] {e}")
            raise typer.Exit(1) from None
        if as_json:
            emit_json({"name": name, "rollout": st})
        if st["status"] != "promoted":
            raise typer.Exit(1)


def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str | None, typer.Option(help="Why (recorded in history).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move NAME@production back to the version it pointed at before its last move, at once,
    with all the traffic. Servers follow within their poll interval."""
    from shipyard.update.rollout import rollback as run_rollback

    with reporting(as_json):
        out = run_rollback(registry(), name, reason)
        if as_json:
            emit_json(out)
        err.print(f"{name}@production: v{out['from_version']} → v{out['to_version']}")
