"""`shipyard rollout NAME`: move a candidate from a share of the traffic to all of it, step by
step, and promote it (the `production` alias moves) only if every step's online gates pass; on
any failure its weight goes back to 0 and the reason is recorded. `shipyard rollback NAME` moves
`production` back to the version it pointed at before.

Each step sets the canary weight, waits for `min_requests` answered by the candidate and
`min_labels` labels on its answers (failing after `step_timeout_s`), then checks on that step's
window, from the database every worker and replica writes to:
- error rate: the candidate's share of 5xx answers, at most `max_error_rate`;
- p99 latency: the candidate's server-side p99, at most `max_p99_ms` (default: twice the
  champion's on the same window plus 5 ms);
- accuracy: on the labels received, a one-sided test (alpha 0.05) that the candidate is not
  more than `accuracy_tolerance` (1 point) worse than the champion on the same window; for a
  regression the gate is `mae`: its absolute errors on the true values received, one-sided
  (Welch), not more than `mae_tolerance` (2%) above the champion's MAE;
- agreement: the champion's answers to the candidate's logged inputs (the candidate's traffic
  mirrored to the champion, replayed from the prediction log), at least `min_agreement` (a
  regression's answers agree within half the champion's validation MAE) — unless the labels on the
  same window show the candidate measurably more accurate (a model retrained for
  a shift disagrees with the champion exactly where the champion is wrong).

State lives in the `rollouts` table; `status`, `abort` and `resume` work from any process. One
lease per model (`update:NAME`) covers rollout and autopilot, so two of them never race."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from shipyard.errors import NotFound, ShipyardError, UsageError
from shipyard.monitor import feedback, predlog, stats
from shipyard.registry import RegistryConflict
from shipyard.store import leases
from shipyard.store.schema import rollouts

if TYPE_CHECKING:
    from shipyard.registry import Registry
    from shipyard.serve.runtime import ModelRuntime

GATES = ("error_rate", "p99", "accuracy", "agreement")


class RolloutFailed(ShipyardError):
    """A gate failed or a step timed out: the candidate's weight is back to 0."""

    exit_code = 1


class CandidateRefused(ShipyardError):
    """The candidate failed its offline gate, so no rollout starts. The operation failed (exit 1);
    the command was not misused."""


@dataclass(frozen=True)
class RolloutConfig:
    steps: tuple[int, ...] = (10, 50, 100)
    min_requests: int = 200
    min_labels: int = 100
    step_timeout_s: float = 600.0
    gates: tuple[str, ...] = GATES
    max_error_rate: float = 0.01
    max_p99_ms: float | None = None
    accuracy_tolerance: float = 0.01
    mae_tolerance: float = 0.02
    alpha: float = 0.05
    min_agreement: float = 0.9
    candidate_alias: str = "candidate"
    poll_s: float = 1.0

    def check(self) -> RolloutConfig:
        problems = []
        if not self.steps or any(not 0 < s <= 100 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            problems.append(f"--steps must be increasing percents in 1..100, got {list(self.steps)}")
        elif self.steps[-1] != 100:
            problems.append(f"--steps must end at 100 (the candidate takes all traffic before promotion), "
                            f"got {list(self.steps)}")
        if unknown := [g for g in self.gates if g not in GATES]:
            problems.append(f"unknown gate(s) {unknown}: choose from {', '.join(GATES)}")
        if self.min_requests < 1 or self.min_labels < 0 or self.step_timeout_s <= 0:
            problems.append("--min-requests must be ≥ 1, --min-labels ≥ 0, --step-timeout > 0")
        if self.mae_tolerance < 0 or self.accuracy_tolerance < 0:
            problems.append("the accuracy and MAE tolerances must be ≥ 0")
        if not 0 < self.alpha < 0.5 or not 0 <= self.min_agreement <= 1 or not 0 <= self.max_error_rate <= 1:
            problems.append("alpha must be in (0, 0.5), min_agreement and max_error_rate in 0..1")
        if problems:
            raise UsageError("; ".join(problems))
        return self


def parse_gates(specs: list[str], base: RolloutConfig) -> RolloutConfig:
    """`--gate error_rate<=0.02`, `--gate p99<=40`, `--gate accuracy`, `--gate agreement>=0.95`,
    `--gate mae<=0.05` (a regression's quality gate, its relative tolerance): the named gates
    only, with their limits."""
    if not specs:
        return base
    names: list[str] = []
    values: dict[str, Any] = {}
    for spec in specs:
        for op in ("<=", ">=", "<", ">", "="):
            if op in spec:
                key, _, raw = spec.partition(op)
                break
        else:
            key, raw = spec, ""
        key = key.strip()
        if key not in (*GATES, "mae"):
            raise UsageError(f"--gate {spec!r}: unknown gate {key!r} (choose from {', '.join(GATES)}, mae)")
        names.append("accuracy" if key == "mae" else key)
        if raw:
            try:
                value = float(raw)
            except ValueError:
                raise UsageError(f"--gate {spec!r}: {raw!r} is not a number") from None
            field_name = {"error_rate": "max_error_rate", "p99": "max_p99_ms", "accuracy": "accuracy_tolerance",
                          "mae": "mae_tolerance", "agreement": "min_agreement"}[key]
            values[field_name] = value
    return RolloutConfig(**{**asdict(base), "gates": tuple(dict.fromkeys(names)), **values}).check()


# -- one step's evidence -------------------------------------------------------------------------------
def _labelled_quality(engine: sa.Engine, name: str, version: int, since: float, regression: bool
                      ) -> dict[str, Any]:
    """Accuracy on the labels received for `version`'s answers since `since`; a regression's MAE
    (with its absolute errors' standard deviation) on the true values received."""
    none = {"accuracy": None, "mae": None, "mae_sd": None, "labels": 0}
    logged = predlog.read(engine, name, since=since, version=version)
    if not len(logged):
        return none
    if regression:
        truth = feedback.values(engine, name, since=since)
        err = np.array([abs(float(v) - truth[r]) for r, v in zip(logged.request_ids, logged.confidence, strict=True)
                        if r in truth])
        if not len(err):
            return none
        return {**none, "mae": float(err.mean()), "mae_sd": float(err.std(ddof=1)) if len(err) > 1 else 0.0,
                "labels": len(err)}
    labels = feedback.labels(engine, name, since=since)
    hits = [(int(p), labels[r]) for r, p in zip(logged.request_ids, logged.predicted, strict=True) if r in labels]
    if not hits:
        return none
    return {**none, "accuracy": float(np.mean([p == y for p, y in hits])), "labels": len(hits)}


def _agreement(engine: sa.Engine, name: str, version: int, since: float, champion_rt: ModelRuntime
               ) -> tuple[float | None, int]:
    """The champion's answers to the candidate's logged inputs, against the candidate's (a
    regression's agree when they differ by at most half the champion's validation MAE)."""
    logged = predlog.read(engine, name, since=since, version=version)
    if not len(logged):
        return None, 0
    ids = logged.ids[-2000:]
    inputs = predlog.inputs_for(engine, name, [int(i) for i in ids])
    keep = [k for k, i in enumerate(ids) if int(i) in inputs]
    if not keep:
        return None, 0
    x = np.stack([inputs[int(ids[k])].reshape(-1) for k in keep]).astype(np.float32)
    out = champion_rt.predict(x.reshape(len(x), *champion_rt.inputs[champion_rt.onnx_input].shape))
    if champion_rt.regression:
        within = (champion_rt.bundle.meta.metrics.val_mae or 0.0) / 2
        return float((np.abs(out[:, 0] - logged.confidence[-2000:][keep]) <= within).mean()), len(keep)
    return float((out.argmax(1) == logged.predicted[-2000:][keep]).mean()), len(keep)


def evidence(engine: sa.Engine, name: str, candidate: int, champion: int, since: float, *,
             champion_rt: ModelRuntime | None = None, accuracy_since: float | None = None,
             regression: bool = False) -> dict[str, Any]:
    """What the gates look at, for the window since `since`."""
    cand = stats.summary(engine, name, since=since, version=candidate)
    champ = stats.summary(engine, name, since=since, version=champion)
    q_c = _labelled_quality(engine, name, candidate, since, regression)
    q_p = _labelled_quality(engine, name, champion, accuracy_since if accuracy_since is not None else since,
                            regression)
    agree, n_agree = (_agreement(engine, name, candidate, since, champion_rt) if champion_rt is not None
                      else (None, 0))
    return {"candidate": {**cand.to_dict(), **q_c}, "champion": {**champ.to_dict(), **q_p},
            "agreement": agree, "agreement_n": n_agree, "task": "regression" if regression else "classification"}


def _mae_gate(c: dict[str, Any], p: dict[str, Any], config: RolloutConfig) -> dict[str, Any]:
    """Fails when the candidate's MAE is measurably more than `mae_tolerance` above the champion's
    (one-sided Welch test on the absolute errors; H0: within the tolerance)."""
    from scipy import stats as sps

    if c["mae"] is None or p["mae"] is None:
        return {"gate": "mae", "passed": True, "value": c["mae"], "limit": None,
                "detail": "not enough labels on both sides to compare (skipped)"}
    limit = p["mae"] * (1 + config.mae_tolerance)
    se = math.sqrt(max(c["mae_sd"] ** 2 / c["labels"] + p["mae_sd"] ** 2 / p["labels"], 1e-24))
    pval = float(sps.norm.sf((c["mae"] - limit) / se))
    return {"gate": "mae", "passed": pval >= config.alpha, "value": c["mae"], "limit": limit, "p_value": pval,
            "detail": f"candidate MAE {c['mae']:.4g} on {c['labels']} labels vs champion {p['mae']:.4g} on "
                      f"{p['labels']} (one-sided, alpha {config.alpha}, tolerance {config.mae_tolerance:.0%})"}


def _better(c: dict[str, Any], p: dict[str, Any]) -> tuple[float, str] | None:
    """The p-value that the labels show the candidate better than the champion, and how."""
    from scipy import stats as sps

    if not c["labels"] or not p["labels"]:
        return None
    if c.get("mae") is not None and p.get("mae") is not None:
        se = math.sqrt(max(c["mae_sd"] ** 2 / c["labels"] + p["mae_sd"] ** 2 / p["labels"], 1e-24))
        return float(sps.norm.sf((p["mae"] - c["mae"]) / se)), f"MAE {c['mae']:.4g} vs {p['mae']:.4g}"
    if c["accuracy"] is None or p["accuracy"] is None:
        return None
    var = c["accuracy"] * (1 - c["accuracy"]) / c["labels"] + p["accuracy"] * (1 - p["accuracy"]) / p["labels"]
    return (float(sps.norm.sf((c["accuracy"] - p["accuracy"]) / math.sqrt(max(var, 1e-12)))),
            f"{c['accuracy']:.1%} vs {p['accuracy']:.1%}")


def judge(ev: dict[str, Any], config: RolloutConfig) -> list[dict[str, Any]]:
    """Each enabled gate's verdict on the evidence."""
    from scipy import stats as sps

    c, p = ev["candidate"], ev["champion"]
    out = []
    if "error_rate" in config.gates:
        rate = c["error_rate"] or 0.0
        out.append({"gate": "error_rate", "passed": rate <= config.max_error_rate, "value": rate,
                    "limit": config.max_error_rate, "detail": f"{c['errors']} of {c['requests']} answers failed"})
    if "p99" in config.gates:
        limit = config.max_p99_ms
        if limit is None:
            limit = 2 * (p["p99_ms"] or 0) + 5 if p["p99_ms"] is not None else None
        v = c["p99_ms"]
        out.append({"gate": "p99", "passed": v is None or limit is None or v <= limit, "value": v, "limit": limit,
                    "detail": "candidate p99 (server side)" + ("" if config.max_p99_ms else
                                                                " vs 2× the champion's + 5 ms")})
    if "accuracy" in config.gates and ev.get("task") == "regression":
        out.append(_mae_gate(c, p, config))
    elif "accuracy" in config.gates:
        if c["accuracy"] is None or p["accuracy"] is None or not c["labels"] or not p["labels"]:
            out.append({"gate": "accuracy", "passed": True, "value": c["accuracy"], "limit": None,
                        "detail": "not enough labels on both sides to compare (skipped)"})
        else:
            diff = c["accuracy"] - p["accuracy"]
            var = (c["accuracy"] * (1 - c["accuracy"]) / c["labels"]
                   + p["accuracy"] * (1 - p["accuracy"]) / p["labels"])
            se = math.sqrt(max(var, 1e-12))
            pval = float(sps.norm.cdf((diff + config.accuracy_tolerance) / se))  # H0: not worse than -tolerance
            out.append({"gate": "accuracy", "passed": pval >= config.alpha, "value": c["accuracy"],
                        "limit": p["accuracy"] - config.accuracy_tolerance, "p_value": pval,
                        "detail": f"candidate {c['accuracy']:.1%} on {c['labels']} labels vs champion "
                                  f"{p['accuracy']:.1%} on {p['labels']} (one-sided, alpha {config.alpha})"})
    if "agreement" in config.gates:
        a = ev["agreement"]
        if a is None:
            out.append({"gate": "agreement", "passed": True, "value": None, "limit": config.min_agreement,
                        "detail": "no candidate inputs kept to replay (skipped)"})
        else:
            detail = f"the champion agrees on {a:.1%} of {ev['agreement_n']} replayed candidate inputs"
            passed = a >= config.min_agreement
            # a candidate retrained for a shift disagrees with the champion exactly where the champion
            # is wrong: disagreement is fine when the labels show the candidate measurably better
            if not passed and (better := _better(c, p)) is not None and better[0] < config.alpha:
                passed = True
                detail += (f", but the labels show the candidate better ({better[1]}, p={better[0]:.1e}): the "
                           "champion is the one that is wrong")
            out.append({"gate": "agreement", "passed": passed, "value": a, "limit": config.min_agreement,
                        "detail": detail})
    return out


# -- the state ---------------------------------------------------------------------------------------
def status(engine: sa.Engine, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(rollouts).where(rollouts.c.name == name)).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out["weight"] = out["steps"][min(out["step"], len(out["steps"]) - 1)] if out["status"] == "running" else None
    lease = leases.current(engine, f"update:{name}")
    out["lease"] = None if lease is None else lease.holder
    return out


def _save(engine: sa.Engine, name: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(rollouts.update().where(rollouts.c.name == name).values(updated_at=time.time(), **values))


def _weights(candidate_alias: str, w: int) -> dict[str, int]:
    return {"production": 100 - w, candidate_alias: w} if w < 100 else {candidate_alias: 100}


class Rollout:
    """One rollout run by this process (holds the model's `update:NAME` lease)."""

    def __init__(self, registry: Registry, name: str, config: RolloutConfig | None = None, *,
                 log: Callable[[str], None] = print, holder: str | None = None,
                 on_started: Callable[[], None] | None = None) -> None:
        self.reg = registry
        self.on_started = on_started  # called once the rollout is under way (its row written, lease held)
        self.engine: sa.Engine = registry.engine
        self.name = name
        self.config = (config or RolloutConfig()).check()
        self.log = log
        self.holder = holder or leases.new_holder("rollout")
        self.lease = f"update:{name}"

    def _renew(self) -> None:
        if not leases.acquire(self.engine, self.lease, self.holder, 30):
            cur = leases.current(self.engine, self.lease)
            raise RegistryConflict(f"another rollout or autopilot holds {self.name} "
                                   f"({cur.holder if cur else 'unknown'}); see `shipyard rollout status {self.name}`")

    def start(self, *, offline_gate: bool = True) -> dict[str, Any]:
        c = self.config
        champ = self.reg.get(f"{self.name}@production")
        cand = self.reg.get(f"{self.name}@{c.candidate_alias}")
        if cand.version == champ.version:
            raise UsageError(f"{self.name}@{c.candidate_alias} is v{cand.version}, already production")
        if offline_gate:
            verdict = self._offline_verdict(cand.version)
            if verdict is None:  # not made by `retrain`: judge it now, the same way
                from shipyard.update.gates import offline_gate as run_offline_gate

                self.log(f"{cand.ref} has no offline verdict yet: comparing it with v{champ.version} now")
                verdict = run_offline_gate(self.reg, self.name, cand.version)
            if not verdict["passed"]:
                raise CandidateRefused(f"{cand.ref} failed the offline gate: {verdict['reason']}; refusing to roll it "
                                       "out (--no-offline-gate overrides)")
        self._renew()
        current = status(self.engine, self.name)
        if current is not None and current["status"] == "running":
            raise RegistryConflict(f"a rollout of {self.name} is already under way (v{current['candidate']}); "
                                   f"`shipyard rollout resume {self.name}` or `abort` it")
        now = time.time()
        row = {"candidate": cand.version, "champion": champ.version, "steps": list(c.steps), "step": 0,
               "status": "running", "config": asdict(c), "started_at": now, "step_started_at": now,
               "updated_at": now, "holder": self.holder, "reason": None, "verdicts": []}
        with self.engine.begin() as conn:
            conn.execute(rollouts.delete().where(rollouts.c.name == self.name))
            conn.execute(rollouts.insert().values(name=self.name, **row))
        self.reg.record(self.name, "rollout", version=cand.version,
                        reason=f"rollout of v{cand.version} over v{champ.version}: steps {list(c.steps)}",
                        details={"config": asdict(c)})
        if self.on_started:
            self.on_started()
        return self._run()

    def resume(self) -> dict[str, Any]:
        self._renew()
        current = status(self.engine, self.name)
        if current is None or current["status"] != "running":
            raise UsageError(f"no rollout of {self.name} to resume"
                             + (f" (the last one is {current['status']})" if current else ""))
        _save(self.engine, self.name, holder=self.holder, step_started_at=time.time())
        if self.on_started:
            self.on_started()
        self.config = RolloutConfig(**{**current["config"], "steps": tuple(current["config"]["steps"]),
                                       "gates": tuple(current["config"]["gates"])})
        return self._run()

    def _offline_verdict(self, version: int) -> dict[str, Any] | None:
        for ev in reversed(self.reg.history(self.name)):
            if ev.kind == "gate" and ev.version == version and (ev.details or {}).get("gate") == "offline":
                return ev.details
        return None

    def _run(self) -> dict[str, Any]:
        from shipyard.serve.runtime import ModelRuntime

        st = status(self.engine, self.name)
        assert st is not None
        c = self.config
        cand, champ = st["candidate"], st["champion"]
        champion_rt = ModelRuntime(self.reg.load(f"{self.name}@{champ}"), champ, name=self.name)
        try:
            for i in range(st["step"], len(c.steps)):
                w = c.steps[i]
                self.reg.set_traffic(self.name, _weights(c.candidate_alias, w),
                                     reason=f"rollout of v{cand}: step {i + 1}/{len(c.steps)} at {w}%")
                step_start = time.time()
                _save(self.engine, self.name, step=i, step_started_at=step_start)
                self.log(f"step {i + 1}/{len(c.steps)}: v{cand} takes {w}% of {self.name}'s traffic")
                ev = self._wait(cand, champ, step_start, champion_rt, st["started_at"] if w == 100 else None,
                                label=f"step {i + 1} at {w}%")
                verdicts = judge(ev, c)
                record = {"step": i, "weight": w, "evidence": ev, "gates": verdicts, "at": time.time()}
                st = status(self.engine, self.name) or st
                _save(self.engine, self.name, verdicts=[*st["verdicts"], record])
                failed = [v for v in verdicts if not v["passed"]]
                for v in verdicts:
                    self.log(f"  {'pass' if v['passed'] else 'FAIL'} {v['gate']}: {v['detail']}")
                if failed:
                    reason = "; ".join(f"{v['gate']} gate failed ({v['detail']})" for v in failed)
                    raise RolloutFailed(f"step {i + 1} at {w}%: {reason}")
                self.reg.record(self.name, "gate", version=cand, reason=f"step {i + 1} at {w}%: all gates passed",
                                details={"gate": "online", "step": i, "weight": w, "passed": True,
                                         "gates": verdicts})
            self.reg.set_alias(self.name, "production", cand,
                               reason=f"rollout: v{cand} passed every step {list(c.steps)}")
            self.reg.set_traffic(self.name, {"production": 100}, reason=f"rollout of v{cand} promoted")
            _save(self.engine, self.name, status="promoted", reason="every step's gates passed", holder=None)
            self.log(f"promoted v{cand}: {self.name}@production moved from v{champ}")
        except RolloutFailed as e:
            self._back(cand, "rolled_back", str(e), gate_failed=True)
            raise
        except KeyboardInterrupt:
            self._back(cand, "aborted", "interrupted")
            raise
        except _Aborted as e:
            self.log(f"aborted: {e}")
        finally:
            leases.release(self.engine, self.lease, self.holder)
        final = status(self.engine, self.name)
        assert final is not None
        return final

    def _back(self, cand: int, status_: str, reason: str, *, gate_failed: bool = False) -> None:
        try:
            self.reg.set_traffic(self.name, {"production": 100}, reason=f"rollout of v{cand} {status_}: {reason}")
        finally:
            _save(self.engine, self.name, status=status_, reason=reason, holder=None)
            self.reg.record(self.name, "gate" if gate_failed else "rollout", version=cand, reason=reason,
                            details={"gate": "online", "passed": False} if gate_failed else {"status": status_})
            self.log(f"{status_}: v{cand}'s weight is back to 0 ({reason})")

    def _wait(self, cand: int, champ: int, since: float, champion_rt: ModelRuntime,
              accuracy_since: float | None, *, label: str) -> dict[str, Any]:
        c = self.config
        deadline = time.monotonic() + c.step_timeout_s
        last = 0.0
        while True:
            self._renew()
            st = status(self.engine, self.name)
            if st is not None and st["status"] == "aborted":
                raise _Aborted(st["reason"] or "aborted")
            # the counts only while waiting; the champion replay (a scan of the kept inputs) once, at the end
            ev = evidence(self.engine, self.name, cand, champ, since, accuracy_since=accuracy_since,
                          regression=champion_rt.regression)
            got_req, got_lab = ev["candidate"]["requests"], ev["candidate"]["labels"]
            if got_req >= c.min_requests and got_lab >= c.min_labels:
                return evidence(self.engine, self.name, cand, champ, since, champion_rt=champion_rt,
                                accuracy_since=accuracy_since, regression=champion_rt.regression)
            if time.monotonic() > deadline:
                raise RolloutFailed(f"{label}: timed out after {c.step_timeout_s:g} s with {got_req}/{c.min_requests} "
                                    f"requests and {got_lab}/{c.min_labels} labels on v{cand}")
            if time.monotonic() - last > 10:
                last = time.monotonic()
                self.log(f"  waiting: {got_req}/{c.min_requests} requests, {got_lab}/{c.min_labels} labels")
            time.sleep(c.poll_s)


class _Aborted(Exception):
    pass


def abort(registry: Registry, name: str, reason: str = "aborted by hand") -> dict[str, Any]:
    """Stop a rollout: the candidate's weight goes back to 0 at once (the process running it
    notices within a poll and stops)."""
    st = status(registry.engine, name)
    if st is None or st["status"] != "running":
        raise UsageError(f"no rollout of {name} is running" + (f" (the last one is {st['status']})" if st else ""))
    registry.set_traffic(name, {"production": 100}, reason=f"rollout of v{st['candidate']} aborted: {reason}")
    _save(registry.engine, name, status="aborted", reason=reason, holder=None)
    registry.record(name, "rollout", version=st["candidate"], reason=f"aborted: {reason}",
                    details={"status": "aborted"})
    out = status(registry.engine, name)
    assert out is not None
    return out


def rollback(registry: Registry, name: str, reason: str | None = None) -> dict[str, Any]:
    """Move `production` back to the version it pointed at before its last move, at once, and send
    it all the traffic."""
    moves = [e for e in registry.history(name) if e.kind == "alias" and e.alias == "production"]
    last = moves[-1] if moves else None
    if last is None or last.from_version is None:
        raise UsageError(f"{name}@production has no earlier version to roll back to (see `shipyard models "
                         f"history {name}`)")
    try:
        registry.get(f"{name}@{last.from_version}")
    except NotFound:
        raise UsageError(f"{name} v{last.from_version}, production before v{last.to_version}, was deleted") from None
    change = registry.set_alias(name, "production", last.from_version,
                                reason=reason or f"rollback from v{last.to_version}")
    registry.set_traffic(name, {"production": 100}, reason=f"rollback to v{last.from_version}")
    return {"name": name, "from_version": change.from_version, "to_version": change.to_version,
            "reason": reason or f"rollback from v{last.to_version}"}

