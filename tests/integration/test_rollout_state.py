"""Rollout state in the database: status, abort and resume from any process, the one lease per model
that keeps a rollout and an autopilot from racing, and a step that times out."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.bundles import make_bundle
from shipyard.errors import UsageError
from shipyard.registry import Registry, RegistryConflict
from shipyard.settings import Settings
from shipyard.store import leases
from shipyard.update import rollout as ro
from shipyard.update.autopilot import Autopilot, Policy

from ..conftest import run_cli
from ..serving import server_env
from ..waiting import wait_for


@pytest.fixture
def two_versions(tmp_path: Path) -> tuple[Settings, Registry]:
    settings = Settings(home=tmp_path / "home")
    reg = Registry(settings=settings)
    reg.register(make_bundle(tmp_path / "a", name="m"), "m", alias="production")
    reg.register(make_bundle(tmp_path / "b", name="m", seed=1), "m", alias="candidate")
    return settings, reg


def test_a_waiting_rollout_shows_its_state_blocks_a_second_one_and_aborts(
        two_versions: tuple[Settings, Registry]) -> None:
    settings, reg = two_versions
    config = ro.RolloutConfig(steps=(10, 100), min_requests=5, min_labels=0, step_timeout_s=60, poll_s=0.05)
    result: dict[str, Any] = {}

    def run() -> None:
        result["final"] = ro.Rollout(reg, "m", config, log=lambda m: None).start(offline_gate=False)

    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: reg.traffic("m").weights == {"production": 90, "candidate": 10},
             "the rollout's first step to set the canary weight", timeout=30)
    assert ro.status(reg.engine, "m")["weight"] == 10  # type: ignore[index]
    env = server_env(settings.home)
    st = json.loads(run_cli(["rollout", "status", "m", "--json"], env).stdout)["rollout"]
    assert (st["status"], st["candidate"], st["champion"], st["lease"] is not None) == ("running", 2, 1, True)
    with pytest.raises(RegistryConflict, match="another rollout or autopilot holds m"):
        ro.Rollout(reg, "m", config, log=lambda m: None).start(offline_gate=False)
    pilot = Autopilot(reg, "m", Policy(), log=lambda m: None)
    assert "holds m" in pilot.decide().reason
    r = run_cli(["rollout", "abort", "m", "--reason", "changed my mind", "--json"], env, check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["rollout"]["status"] == "aborted"  # the abort succeeded
    assert reg.traffic("m").weights == {"production": 100}
    t.join(timeout=30)
    assert result["final"]["status"] == "aborted" and result["final"]["reason"] == "changed my mind"
    assert leases.current(reg.engine, "update:m") is None  # given back
    with pytest.raises(UsageError, match="the last one is aborted"):
        ro.Rollout(reg, "m", config, log=lambda m: None).resume()
    assert reg.get("m@production").version == 1
    assert any(e.kind == "rollout" and "changed my mind" in (e.reason or "") for e in reg.history("m"))


def test_a_candidate_the_offline_gate_refused_is_not_rolled_out_and_that_exits_1(
        two_versions: tuple[Settings, Registry]) -> None:
    settings, reg = two_versions
    reg.record("m", "gate", version=2, reason="offline gate failed: worse on the holdout",
               details={"gate": "offline", "passed": False, "reason": "worse on the holdout"})
    r = run_cli(["rollout", "m", "--json"], server_env(settings.home), check=False)
    assert r.returncode == 1, r.stderr  # the operation failed; the command was not misused (that is 2)
    assert "failed the offline gate: worse on the holdout" in json.loads(r.stdout.splitlines()[-1])["error"]
    assert ro.status(reg.engine, "m") is None and reg.traffic("m").weights == {"production": 100}


def test_a_step_without_enough_traffic_times_out_and_puts_the_weight_back(
        two_versions: tuple[Settings, Registry]) -> None:
    _, reg = two_versions
    config = ro.RolloutConfig(steps=(20, 100), min_requests=5, step_timeout_s=0.5, poll_s=0.05)
    with pytest.raises(ro.RolloutFailed, match="timed out after 0.5 s with 0/5 requests"):
        ro.Rollout(reg, "m", config, log=lambda m: None).start(offline_gate=False)
    st = ro.status(reg.engine, "m")
    assert st is not None and st["status"] == "rolled_back" and "timed out" in st["reason"]
    assert reg.traffic("m").weights == {"production": 100}


def test_a_rollout_whose_process_died_is_resumed_from_its_step(two_versions: tuple[Settings, Registry]) -> None:
    _, reg = two_versions
    config = ro.RolloutConfig(steps=(10, 50, 100), min_requests=5, step_timeout_s=0.3, poll_s=0.05)
    now = time.time()
    with reg.engine.begin() as conn:  # what a killed rollout leaves: running, at its second step
        from dataclasses import asdict

        from shipyard.store.schema import rollouts

        conn.execute(rollouts.insert().values(
            name="m", candidate=2, champion=1, steps=[10, 50, 100], step=1, status="running", config=asdict(config),
            started_at=now, step_started_at=now, updated_at=now, holder="dead", reason=None, verdicts=[]))
    with pytest.raises(ro.RolloutFailed, match="step 2 at 50%"):  # it resumed at step 2 (and no traffic came)
        ro.Rollout(reg, "m", config, log=lambda m: None).resume()
    assert ro.status(reg.engine, "m")["status"] == "rolled_back"  # type: ignore[index]
