"""Update, end to end on a real server under continuous traffic: a shift is seen (drift alarm),
labels come back, `retrain` makes a challenger with the right lineage, `rollout` canaries it step by
step and promotes it, `rollback` undoes it — with zero failed requests throughout. And a bad
candidate (trained on shuffled labels): the offline gate refuses it; forced past that gate, the
online gates catch it at the first step and its weight goes back to 0 while the champion serves."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

import shipyard
from shipyard.data.sources import mnist_sample
from shipyard.monitor.api import Monitor
from shipyard.update import rollout as ro

from ..conftest import run_cli
from ..serving import serve, server_env
from ..waiting import wait_for

if TYPE_CHECKING:
    from ..conftest import Champion


class Users:
    """Clients sending one image per request and labelling every answer (as users who correct a
    prediction would), counting failures. `shift` picks what they send."""

    def __init__(self, base: str, images: np.ndarray, labels: np.ndarray) -> None:
        self.base, self.images, self.labels = base, images, labels
        self.shift = lambda x: x
        self.sent = self.failed = 0
        self.versions: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set():
                i = int(rng.integers(len(self.images)))
                rid = f"u{self.sent}"
                doc = {"id": rid, "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28],
                                              "data": self.shift(self.images[i:i + 1]).ravel().tolist()}]}
                try:
                    r = c.post(f"{self.base}/v2/models/digits/infer", json=doc)
                    self.sent += 1
                    if r.status_code != 200:
                        self.failed += 1
                        self.errors.append(r.text[:200])
                        continue
                    v = r.json()["model_version"]
                    self.versions[v] = self.versions.get(v, 0) + 1
                    fb = c.post(f"{self.base}/v2/models/digits/feedback",
                                json={"feedback": [{"id": rid, "label": str(int(self.labels[i]))}]})
                    if fb.status_code != 200:
                        self.failed += 1
                        self.errors.append(fb.text[:200])
                except httpx.HTTPError as e:
                    self.failed += 1
                    self.errors.append(repr(e))
                time.sleep(0.004)

    def __enter__(self) -> Users:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _wait(what: str, predicate: Any, timeout: float = 120) -> None:
    wait_for(predicate, what, timeout, interval=0.25)


def test_shift_retrain_canary_promote_and_rollback_without_a_failed_request(champion: Champion) -> None:
    settings, reg = champion
    ds = mnist_sample()
    env = server_env(settings.home)
    with serve(settings.home, "digits", "--window", "100", "--poll-s", "0.5", env=env) as srv, \
            Users(srv.base, ds.x, ds.y) as users:
        users.shift = lambda x: 255 - x  # the world turned negative
        mon = Monitor(reg)
        _wait("a drift alarm", lambda: any(s["alarm"] for s in mon.status("digits")["versions"].values()))
        _wait("600 labelled answers", lambda: users.sent >= 600)
        result = shipyard.retrain("digits", registry=reg, settings=settings, epochs=3, progress=False)
        assert result.version == 2 and result.gate["passed"], result.gate
        holdout = result.gate["sets"]["recent_holdout"]
        assert holdout["challenger"] >= holdout["champion"] + 0.05, holdout  # at least 5 points better
        lineage = reg.get("digits@2").meta.lineage.to_dict()
        assert lineage["parent_version"] == 1 and lineage["production_window"]["trained_on"] > 0

        config = ro.RolloutConfig(steps=(50, 100), min_requests=80, min_labels=40, step_timeout_s=180)
        final = shipyard.rollout("digits", registry=reg, **{k: getattr(config, k) for k in (
            "steps", "min_requests", "min_labels", "step_timeout_s")})
        assert final["status"] == "promoted", final
        assert [v["weight"] for v in final["verdicts"]] == [50, 100]
        assert all(g["passed"] for v in final["verdicts"] for g in v["gates"])
        assert reg.get("digits@production").version == 2
        assert reg.traffic("digits").weights == {"production": 100}
        served_before = users.versions.get("2", 0)
        _wait("v2 serving everything", lambda: users.versions.get("2", 0) > served_before + 50)

        back = shipyard.rollback("digits", registry=reg, reason="test")
        assert (back["from_version"], back["to_version"]) == (2, 1)
        ones = users.versions.get("1", 0)
        _wait("v1 serving again", lambda: users.versions.get("1", 0) > ones + 50)
    assert users.failed == 0, users.errors[:5]
    assert users.sent > 1000
    kinds = [(e.kind, e.alias, e.to_version) for e in reg.history("digits")]
    assert ("alias", "production", 2) in kinds and kinds[-1][0] in ("traffic", "alias")
    status = json.loads(run_cli(["rollout", "status", "digits", "--json"], env).stdout)["rollout"]
    assert status["status"] == "promoted" and status["candidate"] == 2


def test_a_bad_candidate_is_refused_offline_and_caught_online_at_the_first_step(champion: Champion,
                                                                               tmp_path: Path) -> None:
    settings, reg = champion
    ds = mnist_sample()
    shuffled = tmp_path / "shuffled.npz"
    np.savez(shuffled, x_train=ds.x, y_train=np.random.default_rng(1).permutation(ds.y))
    bad_run = shipyard.train(data=f"npz:{shuffled}", epochs=1, settings=settings, progress=False)
    bad = shipyard.optimize(bad_run, name="digits", variants=("fp32",), bench_seconds=0.05, settings=settings)
    reg.register(bad.path, "digits", alias="candidate")
    env = server_env(settings.home)
    with serve(settings.home, "digits", "--poll-s", "0.5", env=env) as srv, Users(srv.base, ds.x, ds.y) as users:
        _wait("labelled traffic", lambda: users.sent >= 150)
        refused = run_cli(["rollout", "digits", "--json"], env, check=False)
        assert refused.returncode == 1 and "failed the offline gate" in json.loads(refused.stdout)["error"]
        assert reg.traffic("digits").weights == {"production": 100}
        forced = run_cli(["rollout", "digits", "--no-offline-gate", "--steps", "10,100", "--min-requests", "20",
                          "--min-labels", "15", "--step-timeout", "120", "--json"], env, check=False)
        out = json.loads(forced.stdout.strip().splitlines()[-1])
        assert forced.returncode == 1, forced.stderr
        st = out["rollout"]
        assert st["status"] == "rolled_back" and len(st["verdicts"]) == 1 and st["verdicts"][0]["weight"] == 10
        failed = {g["gate"] for g in st["verdicts"][0]["gates"] if not g["passed"]}
        assert "accuracy" in failed or "agreement" in failed, st["verdicts"][0]["gates"]
        assert reg.traffic("digits").weights == {"production": 100}
        assert reg.get("digits@production").version == 1
    assert users.failed == 0, users.errors[:5]
    assert any(e.kind == "gate" and e.version == 2 and not (e.details or {}).get("passed", True)
               for e in reg.history("digits"))


def test_rollout_refuses_bad_settings_and_a_second_rollout(champion: Champion) -> None:
    settings, reg = champion
    env = server_env(settings.home)
    r = run_cli(["rollout", "digits", "--steps", "50,20"], env, check=False)
    assert r.returncode == 2 and "increasing" in r.stderr
    r = run_cli(["rollout", "digits", "--gate", "speed<3"], env, check=False)
    assert r.returncode == 2 and "unknown gate 'speed'" in r.stderr
    r = run_cli(["rollout", "digits"], env, check=False)
    assert r.returncode != 0 and "no alias 'candidate'" in r.stderr
    r = run_cli(["rollback", "digits"], env, check=False)
    assert r.returncode == 2 and "no earlier version" in r.stderr
    reg.register(reg.load("digits@1").path, "digits", alias="production")  # v2, same bundle
    back = json.loads(run_cli(["rollback", "digits", "--reason", "test", "--json"], env).stdout)
    assert (back["from_version"], back["to_version"]) == (2, 1) and reg.get("digits@production").version == 1
    assert reg.history("digits")[-2].reason == "test"
    assert json.loads(run_cli(["rollout", "status", "digits", "--json"], env).stdout)["rollout"] is None
