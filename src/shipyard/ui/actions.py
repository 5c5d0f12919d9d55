"""The UI's actions: move an alias, set the traffic split, start / abort / resume a rollout, roll
back, acknowledge an alert. Each goes through the same registry, rollout and monitor calls as the
CLI, so it lands in `shipyard models history` exactly as the CLI's would (the same event, reason
and actor: the user and host the UI runs as). The database work runs off the event loop.
A rollout started here runs on a thread of this process with its state in the database: `shipyard
rollout status|abort|resume` see and steer it from anywhere, and if this process stops, its lease
lapses and `rollout resume` picks it up."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import UsageError
from shipyard.ui.auth import Refused
from shipyard.ui.web import Ctx, done

if TYPE_CHECKING:
    from shipyard.registry import Registry


def _reason(form: dict[str, str]) -> str:
    reason = form.get("reason", "").strip()
    if not reason:
        raise Refused(400, "say why (reason): it is recorded in the model's history")
    if len(reason) > 500:
        raise Refused(400, f"the reason is {len(reason)} characters; at most 500")
    return reason


MAX_INT = 2**31 - 1


def _digits(raw: str, what: str) -> int:
    """A whole number typed in a form: ASCII digits only ("²" is a digit to `isdigit`), in range."""
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_INT:
        raise Refused(400, f"{what} must be a whole number from 0 to {MAX_INT}, got {raw!r}")
    return int(raw)


def _int(form: dict[str, str], key: str) -> int:
    return _digits(form.get(key, "").strip().lstrip("v"), key)


async def move_alias(request: Request) -> Response:
    ctx = Ctx(request)
    form = await ctx.form()
    name, alias = request.path_params["name"], form.get("alias", "").strip()
    version, reason = _int(form, "version"), _reason(form)
    change = await run_in_threadpool(ctx.registry.set_alias, name, alias, version, reason=reason)
    if not change.changed:
        what = f"{name}@{alias} already pointed at v{version}"
    elif change.from_version is None:
        what = f"{name}@{alias} now points at v{version}"
    else:
        what = f"{name}@{alias} moved from v{change.from_version} to v{version}"
    return done(f"/models/{name}", what)


def parse_weights(text: str) -> dict[str, int]:
    """`production=90, candidate=10` → {"production": 90, "candidate": 10}."""
    out: dict[str, int] = {}
    for part in text.replace("\n", ",").split(","):
        if not part.strip():
            continue
        alias, sep, w = part.partition("=")
        if not sep:
            raise Refused(400, f"weights are ALIAS=PERCENT separated by commas, got {part.strip()!r}")
        out[alias.strip()] = _digits(w.strip(), f"the weight of {alias.strip()!r}")
    if not out:
        raise Refused(400, "give at least one ALIAS=PERCENT")
    return out


async def set_traffic(request: Request) -> Response:
    ctx = Ctx(request)
    form = await ctx.form()
    name = request.path_params["name"]
    weights, reason = parse_weights(form.get("weights", "")), _reason(form)
    shadow = form.get("shadow", "").strip() or None
    dep = await run_in_threadpool(ctx.registry.set_traffic, name, weights, shadow=shadow, reason=reason)
    return done(f"/models/{name}", "traffic: " + ", ".join(f"{a} {w}%" for a, w in dep.weights.items()))


async def rollback(request: Request) -> Response:
    from shipyard.update.rollout import rollback as run_rollback

    ctx = Ctx(request)
    form = await ctx.form()
    name = request.path_params["name"]
    out = await run_in_threadpool(run_rollback, ctx.registry, name, _reason(form))
    return done(f"/models/{name}", f"rolled back: production is v{out['to_version']} (was v{out['from_version']})")


async def acknowledge(request: Request) -> Response:
    from shipyard.monitor.api import Monitor

    ctx = Ctx(request)
    form = await ctx.form()
    raw = request.path_params["alert_id"]
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 2**63 - 1:
        raise Refused(404, f"no alert {raw!r}")
    alert_id = int(raw)
    alert = await run_in_threadpool(Monitor(ctx.registry).acknowledge, alert_id,
                                    reason=form.get("reason", "").strip() or None)
    back = form.get("back", "")
    return done(back if back.startswith("/deployments/") else f"/deployments/{alert['model']}",
                f"acknowledged alert {alert_id} ({alert['rule']}): its webhook is silent until it resolves")


class Rollouts:
    """Rollouts this process runs, one thread each, with their last log lines."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.threads: dict[str, threading.Thread] = {}
        self.logs: dict[str, deque[str]] = {}
        self.errors: dict[str, str] = {}

    def running_here(self, name: str) -> bool:
        t = self.threads.get(name)
        return t is not None and t.is_alive()

    def start(self, name: str, config: Any, *, resume: bool = False, offline_gate: bool = True) -> None:
        """Run the rollout on a thread; returns once it is under way, or raises what refused it
        (the offline gate, another holder, one already running)."""
        from shipyard.update import rollout as ro

        if self.running_here(name):
            raise Refused(409, f"a rollout of {name} is already running in this UI")
        log = self.logs.setdefault(name, deque(maxlen=200))
        ready = threading.Event()
        runner = ro.Rollout(self.registry, name, config, log=lambda m: log.append(time.strftime("%H:%M:%S ") + m),
                            on_started=ready.set)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                runner.resume() if resume else runner.start(offline_gate=offline_gate)
            except BaseException as e:  # noqa: BLE001 - the rollout's end is in the database; keep why for the page
                failure.append(e)
                self.errors[name] = f"{type(e).__name__}: {e}"
                log.append(time.strftime("%H:%M:%S ") + f"stopped: {e}")
            finally:
                ready.set()

        self.errors.pop(name, None)
        t = threading.Thread(target=work, name=f"rollout-{name}", daemon=True)
        self.threads[name] = t
        t.start()
        ready.wait(timeout=120)
        if failure and not isinstance(failure[0], ro.RolloutFailed):
            raise failure[0]


async def start_rollout(request: Request) -> Response:
    from shipyard.update import rollout as ro

    ctx = Ctx(request)
    form = await ctx.form()
    name = request.path_params["name"]
    try:
        steps = tuple(int(s) for s in form.get("steps", "10,50,100").replace(" ", "").split(",") if s)
    except ValueError:
        raise Refused(400, f"steps are percents separated by commas, got {form.get('steps')!r}") from None
    try:
        config = ro.parse_gates([g for g in form.get("gates", "").split() if g], ro.RolloutConfig(
            steps=steps, min_requests=_positive(form, "min_requests", 200),
            min_labels=_positive(form, "min_labels", 100),
            step_timeout_s=float(_positive(form, "step_timeout_s", 600))))
    except UsageError as e:
        raise Refused(400, str(e)) from None
    rollouts: Rollouts = request.app.state.rollouts
    # an unticked box is not sent; the offline gate can take a while: off the event loop
    await run_in_threadpool(rollouts.start, name, config, offline_gate="offline_gate" in form)
    return done(f"/models/{name}", f"rollout of {name}@candidate started: steps {list(steps)}")


def _positive(form: dict[str, str], key: str, default: int) -> int:
    raw = form.get(key, "").strip()
    return _digits(raw, key) if raw else default


async def abort_rollout(request: Request) -> Response:
    from shipyard.update import rollout as ro

    ctx = Ctx(request)
    form = await ctx.form()
    name = request.path_params["name"]
    try:
        st = await run_in_threadpool(ro.abort, ctx.registry, name, _reason(form))
    except UsageError as e:
        raise Refused(409, str(e)) from None
    return done(f"/models/{name}", f"aborted the rollout of v{st['candidate']}: its weight is back to 0")


async def resume_rollout(request: Request) -> Response:
    from shipyard.update import rollout as ro

    ctx = Ctx(request)
    await ctx.form()
    name = request.path_params["name"]
    st = ro.status(ctx.registry.engine, name)
    if st is None or st["status"] != "running":
        raise Refused(409, f"no rollout of {name} to resume")
    config = ro.RolloutConfig(**{**st["config"], "steps": tuple(st["config"]["steps"]),
                                 "gates": tuple(st["config"]["gates"])})
    await run_in_threadpool(request.app.state.rollouts.start, name, config, resume=True)
    return done(f"/models/{name}", f"resumed the rollout of v{st['candidate']} in this UI")


