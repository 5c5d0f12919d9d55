"""`shipyard export prometheus`: the generated configuration (checked by promtool) makes a real
Prometheus scrape every replica of a deployment — here two servers on one registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import _free_port, run_cli
from ..serving import serve, server_env
from .test_monitor import _query


def test_a_real_prometheus_scrapes_every_replica_from_the_exported_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry(settings=Settings(home=home)).register(make_bundle(tmp_path / "b"), "digits", alias="production")
    env = server_env(home)
    run_cli(["export", "prometheus-rules", "-o", str(tmp_path / "shipyard.rules.yml")], env)
    with serve(home, "digits", "--poll-s", "0") as a, serve(home, "digits", "--poll-s", "0") as b:
        targets = [a.base.removeprefix("http://"), b.base.removeprefix("http://")]
        out = json.loads(run_cli(["export", "prometheus", *targets, "--interval", "1", "--rules",
                                  "shipyard.rules.yml", "-o", str(tmp_path / "prometheus.yml"), "--json"], env).stdout)
        checked = subprocess.run(["promtool", "check", "config", out["path"]], capture_output=True, text=True)
        assert checked.returncode == 0 and "SUCCESS: 5 rules found" in checked.stdout, checked.stdout + checked.stderr
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": [0.5] * 784}]}
        for i in range(30):  # 20 to one replica, 10 to the other
            assert httpx.post(f"{(a if i % 3 else b).base}/v2/models/digits/infer", json=doc).status_code == 200
        port = _free_port()
        with (tmp_path / "prometheus.log").open("w") as log:
            exe = shutil.which("prometheus") or "/usr/bin/prometheus"
            prom = subprocess.Popen([exe, f"--config.file={out['path']}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{port}"],
                                    stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    up = _query(url, 'sum(up{job="shipyard"})')
                    total = _query(url, 'sum(shipyard_requests_total{model="digits",status="200"})')
                    if up and float(up[0]["value"][1]) == 2 and total and float(total[0]["value"][1]) == 30:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "Prometheus did not see both replicas"
                time.sleep(0.5)
            per_replica = {r["metric"]["replica"]: float(r["value"][1]) for r in _query(
                url, 'sum by (replica) (shipyard_requests_total{model="digits",status="200"})')}
            assert per_replica == {targets[0]: 20.0, targets[1]: 10.0}
            rules = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
            assert [g["name"] for g in rules] == ["shipyard"] and len(rules[0]["rules"]) == 5
        finally:
            prom.terminate()
            prom.wait(timeout=30)
    bad = run_cli(["export", "prometheus"], env, check=False)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
