"""`shipyard export k8s`: every manifest valid against the Kubernetes API schemas (kubernetes-validate,
strict), the links schemas cannot check (selectors, ports, HPA target, Secret keys), the Dockerfile
linted by hadolint, and the image's environment — a venv from the exported requirements, no torch —
actually serving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import yaml

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import ROOT, _free_port, run_cli


def _objects(folder: Path) -> dict[str, dict[str, Any]]:
    return {(d := yaml.safe_load(p.read_text()))["kind"]: d for p in sorted(folder.glob("*.yaml"))}


def test_manifests_are_valid_and_consistent(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = json.loads(run_cli(["export", "k8s", "digits", "-o", str(tmp_path / "k8s"), "--replicas", "3",
                              "--namespace", "ml", "--json"], cli_env).stdout)
    assert set(out["files"]) >= {"deployment.yaml", "service.yaml", "horizontalpodautoscaler.yaml",
                                 "configmap.yaml", "secret.yaml", "Dockerfile.serve", "requirements-serve.txt"}
    objs = _objects(tmp_path / "k8s")
    assert set(objs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"}
    for kind, obj in objs.items():
        assert kubernetes_validate.validate(obj, "1.30", strict=True), kind
        assert obj["metadata"]["namespace"] == "ml"
    dep, svc, hpa = objs["Deployment"], objs["Service"], objs["HorizontalPodAutoscaler"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()  # the Service finds the pods
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    assert str(ports["http"]) in container["command"]  # the server listens where the probes look
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"], ref["apiVersion"]) == ("Deployment", dep["metadata"]["name"], "apps/v1")
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"] == 3
    secret_keys = set(objs["Secret"]["stringData"])
    for env in container["env"]:
        key_ref = env["valueFrom"]["secretKeyRef"]
        assert key_ref["name"] == objs["Secret"]["metadata"]["name"] and key_ref["key"] in secret_keys
    assert container["envFrom"][0]["configMapRef"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    # SIGTERM drains (grace + timeout) before Kubernetes kills the pod
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 35
    hadolint = str(Path(sys.executable).with_name("hadolint"))
    lint = subprocess.run([hadolint, str(tmp_path / "k8s" / "Dockerfile.serve")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # to stdout: one multi-document stream
    docs = [d for d in yaml.safe_load_all(run_cli(["export", "k8s", "digits"], cli_env).stdout) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"]
    bad = run_cli(["export", "k8s", "digits", "--replicas", "9", "--max-replicas", "3"], cli_env, check=False)
    assert bad.returncode == 2 and "--replicas" in bad.stderr


def test_the_serving_image_environment_serves_without_torch(cli_env: dict[str, str], tmp_path: Path) -> None:
    """What `Dockerfile.serve` does, in a venv: the exported requirements, then the project with
    --no-deps; then `shipyard serve` from it answers a request."""
    run_cli(["export", "k8s", "digits", "-o", str(tmp_path / "k8s")], cli_env)
    venv = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(tmp_path / "k8s" / "requirements-serve.txt")], check=True, timeout=600)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=300)
    frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                            text=True).stdout
    assert "torch" not in frozen.lower() and "shipyard" in frozen.lower()
    home = tmp_path / "home"
    Registry(settings=Settings(home=home)).register(make_bundle(tmp_path / "b"), "digits", alias="production")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")} | {"SHIPYARD_HOME": str(home)}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(venv / "bin" / "shipyard"), "serve", "digits", "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/digits:predict", json={"instances": [[0.5] * 784]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(venv, ignore_errors=True)
