"""`shipyard quickstart`: the whole loop on the bundled MNIST sample, in a few minutes on 2 cores.

train → optimize → register → serve (in the background) → traffic → the traffic shifts (rotated
digits) → drift alarm → labels come back → retrain → canary → promote → report. Everything it makes
stays in SHIPYARD_HOME for the other commands to explore; no process is left running; any stage
that fails stops it with a non-zero exit."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from shipyard.errors import ShipyardError
from shipyard.settings import Settings


class StageFailed(ShipyardError):
    exit_code = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    from scipy import ndimage

    return np.clip(ndimage.rotate(images.astype(np.float32), degrees, axes=(1, 2), reshape=False, order=1),
                   0, 255).astype(np.uint8)


class Traffic:
    """Users of the served model: one image per request, and (like users correcting the app) the
    true label sent back for each answer. Counts every failure."""

    def __init__(self, port: int, images: np.ndarray, labels: np.ndarray, model: str) -> None:
        self.port, self.images, self.labels, self.model = port, images, labels, model
        self.sent = self.failed = self.labelled = 0
        self.versions: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quickstart-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _post(self, conn: http.client.HTTPConnection, path: str, doc: dict[str, Any]) -> tuple[int, bytes]:
        conn.request("POST", path, body=json.dumps(doc), headers={"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        while not self._stop.is_set():
            i = int(rng.integers(len(self.images)))
            rid = f"qs-{os.getpid()}-{n}"
            n += 1
            doc = {"id": rid, "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28],
                                          "data": self.images[i].ravel().tolist()}]}
            try:
                status, body = self._post(conn, f"/v2/models/{self.model}/infer", doc)
                self.sent += 1
                if status != 200:
                    self.failed += 1
                    self.errors.append(body[:200].decode(errors="replace"))
                    continue
                v = json.loads(body)["model_version"]
                self.versions[v] = self.versions.get(v, 0) + 1
                status, body = self._post(conn, f"/v2/models/{self.model}/feedback",
                                          {"feedback": [{"id": rid, "label": str(int(self.labels[i]))}]})
                self.labelled += status == 200
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.failed += 1
                self.errors.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            time.sleep(0.003)
        conn.close()


@dataclass
class Story:
    console: Console
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def stage(self, title: str, fn: Callable[[], str]) -> None:
        self.console.rule(f"[bold]{title}")
        t0 = time.perf_counter()
        try:
            outcome = fn()
        except Exception as e:
            self.rows.append((title, f"{time.perf_counter() - t0:.1f} s", f"FAILED: {e}"))
            raise StageFailed(f"{title}: {e}") from e
        self.rows.append((title, f"{time.perf_counter() - t0:.1f} s", outcome))
        self.console.print(f"[green]✓[/] {outcome}")

    def table(self) -> Table:
        t = Table(title="what happened", title_justify="left")
        for col in ("stage", "time", "result"):
            t.add_column(col)
        for row in self.rows:
            t.add_row(*row)
        return t


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, console: Console | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise StageFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.25)


def run(settings: Settings | None = None, *, name: str = "digits", epochs: int = 5, shift_degrees: float = 45.0,
        console: Console | None = None) -> dict[str, Any]:
    """Tell the story; returns its facts (the report path, versions, accuracies, request counts)."""
    from shipyard import optimizing, training
    from shipyard.data.sources import mnist_sample
    from shipyard.monitor.api import Monitor
    from shipyard.registry import Registry
    from shipyard.update import retrain as retraining
    from shipyard.update import rollout as ro

    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    settings = settings or Settings.from_env()
    home = settings.home.resolve()
    story = Story(console)
    console.print(f"[bold]shipyard quickstart[/]: working in {home} (SHIPYARD_HOME)")
    reg = Registry(settings=settings)
    ds = mnist_sample()
    facts = story.facts
    server: subprocess.Popen[bytes] | None = None
    traffic: Traffic | None = None
    t_start = time.perf_counter()
    try:
        def train() -> str:
            run_ = training.train(data="mnist-sample", epochs=epochs, settings=settings, progress=True)
            facts["run"] = run_
            return f"run {run_.id}: {epochs} epochs on mnist-sample, validation accuracy {run_.best_val_accuracy:.1%}"

        def optimize() -> str:
            bundle = optimizing.optimize(facts["run"], name=name, bench_seconds=0.2, settings=settings)
            facts["bundle"] = bundle
            reason = bundle.meta.choice.reason if bundle.meta.choice is not None else ""
            return f"bundle with the {bundle.meta.variant} variant ({reason})"

        def register() -> str:
            mv = reg.register(facts["bundle"].path, name, alias="production", reason="quickstart")
            reg.set_traffic(name, {"production": 100}, reason="quickstart")
            facts["champion"] = mv.version
            return f"{mv.ref} is production"

        def serve() -> str:
            nonlocal server
            port = _free_port()
            facts["port"] = port
            log_path = home / "quickstart-server.log"
            env = {**os.environ, "SHIPYARD_HOME": str(home)}
            if settings.database_url:
                env["SHIPYARD_DATABASE_URL"] = settings.database_url
            server = subprocess.Popen(
                [sys.executable, "-m", "shipyard", "serve", name, "--port", str(port), "--window", "100",
                 "--poll-s", "0.5"], env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)

            def ready() -> bool:
                if server is not None and server.poll() is not None:
                    raise StageFailed(f"the server exited ({server.returncode}); see {log_path}")
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    c.request("GET", "/v2/health/ready")
                    ok = c.getresponse().status == 200
                    c.close()
                    return ok
                except OSError:
                    return False

            wait_for("the server to be ready", ready, 90)
            return f"serving on http://127.0.0.1:{port} (dashboard: /dashboard; log: {log_path})"

        def calm() -> str:
            nonlocal traffic
            traffic = Traffic(facts["port"], ds.x, ds.y, name).start()
            mon = Monitor(reg)
            wait_for("two evaluated windows", lambda: len(mon.windows(name, late_labels=False)) >= 2, 120)
            alarms = sum(w["alarm"] for w in mon.windows(name, late_labels=False))
            facts["calm_alarms"] = alarms
            return (f"{traffic.sent} requests answered and labelled, {traffic.failed} failed; "
                    f"{len(mon.windows(name, late_labels=False))} drift windows, {alarms} alarmed")

        def shift() -> str:
            assert traffic is not None
            shifted = rotate(ds.x, shift_degrees)
            facts["shifted_from"] = traffic.sent
            t_shift = time.time()
            traffic.images, traffic.labels = shifted, ds.y
            mon = Monitor(reg)

            def alarmed() -> bool:
                return any(w["alarm"] and w["ts_first"] >= t_shift
                           for w in mon.windows(name, since=t_shift, late_labels=False))

            wait_for("a drift alarm on the shifted traffic", alarmed, 120)
            st = mon.status(name)["versions"][str(facts["champion"])]
            fired = [t for t, r in st["drift"].items() if r["alarm"]]
            return (f"digits now arrive rotated {shift_degrees:g}°: drift alarm after "
                    f"{traffic.sent - facts['shifted_from']} requests ({', '.join(fired)} test"
                    f"{'s' if len(fired) > 1 else ''}); estimated accuracy {st['accuracy']['estimated'] or 0:.1%}"
                    + ("" if st["accuracy"].get("estimated_reliable") else
                       " — not to be believed: the inputs moved in a way the estimate cannot follow"))

        def labels() -> str:
            assert traffic is not None
            start = facts["shifted_from"]
            # enough that the newest 20%, never trained on, can be the new model's reference
            wait_for("1,200 labelled shifted answers", lambda: traffic is not None and traffic.sent - start >= 1200,
                     180)
            acc = Monitor(reg).status(name)["versions"][str(facts["champion"])]["accuracy"]
            return f"{traffic.labelled} labels received; realised accuracy now {acc['realised'] or 0:.1%}"

        def retrain() -> str:
            result = retraining.retrain(name, registry=reg, settings=settings, epochs=3, progress=True,
                                        console=console)
            facts["retrain"] = result
            if not result.gate["passed"]:
                raise StageFailed(f"the offline gate refused the challenger: {result.gate['reason']}")
            h = result.gate["sets"]["recent_holdout"]
            return (f"v{result.version} behind candidate; recent holdout accuracy {h['champion']:.1%} → "
                    f"{h['challenger']:.1%} ({h['n']} samples never trained on)")

        def canary() -> str:
            config = ro.RolloutConfig(steps=(25, 100), min_requests=100, min_labels=50, step_timeout_s=180)
            final = ro.Rollout(reg, name, config, log=lambda m: console.print(m)).start(offline_gate=True)
            facts["rollout"] = final
            if final["status"] != "promoted":
                raise StageFailed(f"the rollout ended {final['status']}: {final['reason']}")
            return f"v{final['candidate']} passed every step ({', '.join(str(s) + '%' for s in final['steps'])}) " \
                   f"and is production"

        def report() -> str:
            assert traffic is not None
            before = traffic.versions.get(str(facts["retrain"].version), 0)
            wait_for("the new version to answer", lambda: traffic is not None and traffic.versions.get(
                str(facts["retrain"].version), 0) > before + 50, 60)
            path = Monitor(reg).report(name, home / "quickstart-report.html", since=time.time() - 3600)
            facts["report"] = path
            return f"report: {path}"

        for title, fn in (("train the canonical recipe", train), ("optimize and bundle", optimize),
                          ("register", register), ("serve in the background", serve),
                          ("send traffic", calm), ("shift the traffic", shift), ("labels come back", labels),
                          ("retrain from production", retrain), ("canary and promote", canary),
                          ("report", report)):
            story.stage(title, fn)
    finally:
        if traffic is not None:
            traffic.stop()
            facts["requests"], facts["failed"] = traffic.sent, traffic.failed
            facts["errors"] = traffic.errors[:5]
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        console.print(story.table())
    facts["seconds"] = time.perf_counter() - t_start
    if facts.get("failed"):
        raise StageFailed(f"{facts['failed']} of {facts['requests']} requests failed: {facts['errors']}")
    console.print(f"[bold green]done[/] in {facts['seconds']:.0f} s: {facts['requests']} requests, none failed. "
                  f"Explore: shipyard ui (then http://127.0.0.1:8800/deployments/{name}) · "
                  f"shipyard models history {name} · shipyard monitor status {name} · "
                  f"shipyard runs list · open {facts['report']}")
    return facts


def summary(facts: dict[str, Any]) -> dict[str, Any]:
    r = facts.get("retrain")
    return {"home": str(Path(facts["report"]).parent) if facts.get("report") else None,
            "report": str(facts.get("report")), "champion": facts.get("champion"),
            "promoted": r.version if r else None, "recent_holdout": r.gate["sets"]["recent_holdout"] if r else None,
            "requests": facts.get("requests"), "failed": facts.get("failed"), "seconds": round(facts["seconds"], 1)}
