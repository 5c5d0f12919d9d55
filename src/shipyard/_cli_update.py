"""`shipyard retrain`, `rollout`, `rollback`: the update stage."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard._output import emit_json, err, reporting


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
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")] = False,
) -> None:
    """Retrain NAME from production: the champion's original data plus the labelled production
    samples (the newest share held out), warm-started from its weights with its recipe; optimize,
    bundle, register behind `candidate` with the lineage, and run the offline gate (challenger vs
    champion on the recent holdout and the validation split). Exit 1 if the gate fails."""
    from shipyard._cli_monitor import parse_since
    from shipyard.cli import settings

    with reporting(as_json):
        from shipyard.update.retrain import retrain as run_retrain

        result = run_retrain(name, settings=settings(), champion=champion, data=data,
                             since=parse_since(since) if since else None, holdout=holdout, min_labels=min_labels,
                             alias=alias, tolerance=tolerance, progress=not as_json, epochs=epochs, lr=lr)
        if as_json:
            emit_json(result.to_dict())
        g = result.gate
        for label, v in g["sets"].items():
            if v["challenger"] is not None:
                err.print(f"  {label:<15} challenger {v['challenger']:.2%}  champion {v['champion']:.2%}  (n={v['n']})")
        if not g["passed"]:
            err.print(f"[red]offline gate failed:[/] {g['reason']} (rollout refuses it unless --no-offline-gate)")
            raise typer.Exit(1)


ACTIONS = ("status", "abort", "resume")


def rollout(
    target: Annotated[list[str], typer.Argument(help="NAME to start a rollout, or status|abort|resume NAME.", metavar="[ACTION] NAME")],
    steps: Annotated[str, typer.Option(help="Canary weights in percent, ending at 100.")] = "10,50,100",
    gate: Annotated[list[str] | None, typer.Option(help="Gates to apply (repeatable): error_rate<=0.01, p99<=50 (ms), accuracy[=TOLERANCE], agreement>=0.9. Default: all four with those limits (p99: 2× the champion's + 5 ms).")] = None,
    min_requests: Annotated[int, typer.Option(help="Candidate answers each step waits for.")] = 200,
    min_labels: Annotated[int, typer.Option(help="Labels on candidate answers each step waits for.")] = 100,
    step_timeout: Annotated[float, typer.Option(help="A step that has not seen enough requests and labels after this many seconds fails.")] = 600.0,
    offline_gate: Annotated[bool, typer.Option("--offline-gate/--no-offline-gate", help="Refuse a candidate whose offline gate failed (or that has none).")] = True,
    candidate: Annotated[str, typer.Option(help="The candidate's alias.")] = "candidate",
    reason: Annotated[str, typer.Option(help="With abort: why (recorded in history).")] = "aborted by hand",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rollout's state as one JSON object on stdout.")] = False,
) -> None:
    """Canary rollout of NAME@candidate: step by step through --steps, each step waiting for
    enough candidate requests and labels, then checking the online gates (error rate, p99,
    accuracy against the champion on the same window, agreement with the champion). All pass:
    `production` moves to the candidate. Any fails: its weight goes back to 0 and the reason is
    recorded. Exit 0 promoted, 1 rolled back or aborted, 2 usage. `status`, `abort` and `resume`
    work from any shell."""
    from shipyard.cli import settings
    from shipyard.errors import UsageError
    from shipyard.registry import Registry
    from shipyard.update import rollout as ro

    with reporting(as_json):
        if len(target) == 2 and target[0] in ACTIONS:
            action, name = target
        elif len(target) == 1:
            action, name = "start", target[0]
        else:
            raise UsageError(f"expected NAME or one of {', '.join(ACTIONS)} NAME, got {' '.join(target)!r}")
        reg = Registry(settings=settings())
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
            raise typer.Exit(1)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the move as one JSON object on stdout.")] = False,
) -> None:
    """Move NAME@production back to the version it pointed at before its last move, at once,
    with all the traffic. Servers follow within their poll interval."""
    from shipyard.cli import settings
    from shipyard.registry import Registry
    from shipyard.update.rollout import rollback as run_rollback

    with reporting(as_json):
        out = run_rollback(Registry(settings=settings()), name, reason)
        if as_json:
            emit_json(out)
        err.print(f"{name}@production: v{out['from_version']} → v{out['to_version']}")


def quickstart(
    name: Annotated[str, typer.Option(help="The model name to use.")] = "digits",
    epochs: Annotated[int, typer.Option(help="Training epochs for the first model.")] = 5,
    shift: Annotated[float, typer.Option(help="How far the digits rotate when the traffic shifts, degrees.")] = 45.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on the last line of stdout.")] = False,
) -> None:
    """The whole loop on the bundled MNIST sample in a few minutes: train → optimize → register →
    serve in the background → traffic → the traffic shifts → drift alarm → labels → retrain →
    canary → promote → an HTML report and a summary table. Works in SHIPYARD_HOME and leaves the
    runs, versions, history and report there; leaves no process running; exit 1 if a stage fails."""
    from shipyard.cli import settings

    with reporting(as_json):
        from shipyard import quickstart as qs

        facts = qs.run(settings(), name=name, epochs=epochs, shift_degrees=shift)
        if as_json:
            emit_json(qs.summary(facts))


def autopilot(
    name: Annotated[str, typer.Argument(help="Model name.")],
    policy: Annotated[str | None, typer.Option(help="Policy file (TOML): triggers, limits, retrain and rollout settings. Default: drift or accuracy alerts, 200 labels, 1 h cooldown, 3 retrains a day.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what it would do; change nothing.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Decide (and act) once, then exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: print the decision as JSON.")] = False,
) -> None:
    """Watch NAME's alerts and, when a drift or accuracy alert is open and enough labels have come
    back, retrain → offline gate → rollout, within the policy's cooldown and daily budget. Every
    decision is logged with its reason and recorded in `models history`. Ctrl-C stops it."""
    from shipyard.cli import settings
    from shipyard.registry import Registry
    from shipyard.update.autopilot import Autopilot, Policy, load_policy

    with reporting(as_json):
        pol = load_policy(policy) if policy else Policy()
        s = settings()
        reg = Registry(settings=s)
        reg.get(f"{name}@production")
        pilot = Autopilot(reg, name, pol, settings=s, dry_run=dry_run, log=lambda m: err.print(m))
        if once:
            d = pilot.run(once=True)
            if as_json:
                emit_json({"name": name, "action": d.action, "reason": d.reason, "dry_run": dry_run, **d.details})
            if d.action in ("rolled_back", "stop"):
                raise typer.Exit(1)
            return
        err.print(f"autopilot on {name}: checking every {pol.poll_s:g} s (Ctrl-C stops)")
        try:
            pilot.run()
        except KeyboardInterrupt:
            err.print("stopped")
