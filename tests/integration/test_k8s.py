"""`shipyard export k8s`: every manifest valid against the Kubernetes API schemas (kubernetes-validate,
strict), the links schemas cannot check (selectors, ports, HPA target, Secret keys, volumes), the
Dockerfile linted by hadolint, the image's environment — a venv from the exported requirements, no
torch — actually serving, a pod's environment (ConfigMap + Secret, an empty home) fetching its
model from the shared registry and bucket, and the exports no pod could serve from refused."""

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
import pytest
import yaml

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import ROOT, _free_port, run_cli
from ..s3 import CREDENTIALS, moto_server
from ..serving import serve

S3 = ["--artifacts", "s3://models/shipyard", "--s3-endpoint", "http://minio.ml:9000"]


def _objects(folder: Path) -> dict[str, dict[str, Any]]:
    return {(d := yaml.safe_load(p.read_text()))["kind"]: d for p in sorted(folder.glob("*.yaml"))}


def test_manifests_are_valid_and_consistent(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = json.loads(run_cli(["export", "k8s", "digits", "-o", str(tmp_path / "k8s"), "--replicas", "3",
                              "--namespace", "ml", "--json", *S3], cli_env).stdout)
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
    secret = objs["Secret"]["stringData"]
    required = [e for e in container["env"] if not e["valueFrom"]["secretKeyRef"].get("optional")]
    assert {e["name"] for e in required} == set(secret) == {
        "SHIPYARD_DATABASE_URL", "SHIPYARD_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for env in required:
        key_ref = env["valueFrom"]["secretKeyRef"]
        assert key_ref["name"] == objs["Secret"]["metadata"]["name"] and key_ref["key"] in secret
    # the feedback proof is opt-in: read from the Secret when an operator adds the key, never a placeholder
    [proof] = [e for e in container["env"] if e not in required]
    assert proof["name"] == "SHIPYARD_FEEDBACK_SECRET" and proof["valueFrom"]["secretKeyRef"]["optional"] is True
    # placeholders, never this machine's credentials
    assert all("CHANGE-ME" in v for v in secret.values())
    assert container["envFrom"][0]["configMapRef"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    config = objs["ConfigMap"]["data"]
    assert config["SHIPYARD_ARTIFACTS"] == "s3://models/shipyard"
    assert config["SHIPYARD_S3_ENDPOINT_URL"] == "http://minio.ml:9000"
    # SIGTERM drains (grace + timeout) before Kubernetes kills the pod
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 35
    hadolint = str(Path(sys.executable).with_name("hadolint"))
    lint = subprocess.run([hadolint, str(tmp_path / "k8s" / "Dockerfile.serve")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # to stdout: one multi-document stream
    docs = [d for d in yaml.safe_load_all(run_cli(["export", "k8s", "digits", *S3], cli_env).stdout) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"]
    bad = run_cli(["export", "k8s", "digits", "--replicas", "9", "--max-replicas", "3", *S3], cli_env, check=False)
    assert bad.returncode == 2 and "--replicas" in bad.stderr


def test_a_shared_volume_or_an_existing_secret(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A file:// store from a PersistentVolumeClaim mounted where the URL says; --secret-name: no
    Secret written, the pods read the named one (and no S3 keys for a folder)."""
    out = tmp_path / "k8s"
    run_cli(["export", "k8s", "digits", "-o", str(out), "--artifacts", "file:///mnt/artifacts",
             "--artifacts-claim", "shipyard-artifacts", "--secret-name", "shipyard-prod"], cli_env)
    objs = _objects(out)
    assert set(objs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"}
    for kind, obj in objs.items():
        assert kubernetes_validate.validate(obj, "1.30", strict=True), kind
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert objs["ConfigMap"]["data"]["SHIPYARD_ARTIFACTS"] == "file:///mnt/artifacts"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "shipyard-artifacts"
    assert {"name": "artifacts", "mountPath": "/mnt/artifacts"} in container["volumeMounts"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"]: e["name"] for e in container["env"]}
    assert set(refs) == {"shipyard-prod"} and {e["name"] for e in container["env"]} == {
        "SHIPYARD_DATABASE_URL", "SHIPYARD_TOKEN", "SHIPYARD_FEEDBACK_SECRET"}
    # an S3 store whose pods have their own identity: no keys
    docs = [d for d in yaml.safe_load_all(run_cli(["export", "k8s", "digits", "--artifacts", "s3://b/p",
                                                   "--no-s3-keys", "--s3-region", "eu-west-1"], cli_env).stdout) if d]
    assert set(docs[1]["stringData"]) == {"SHIPYARD_DATABASE_URL", "SHIPYARD_TOKEN"}
    assert docs[0]["data"]["AWS_DEFAULT_REGION"] == "eu-west-1"


@pytest.mark.parametrize(("args", "message"), [
    ([], "give --artifacts"),
    (["--artifacts", "/srv/artifacts"], "add --artifacts-claim"),
    (["--artifacts", "file:///srv/artifacts"], "add --artifacts-claim"),
    (["--artifacts", "relative/folder", "--artifacts-claim", "pvc"], "absolute path"),
    (["--artifacts", "gs://bucket"], "use s3://BUCKET/PREFIX"),
    (["--artifacts", "s3://"], "s3://BUCKET"),
    (["--artifacts", "/srv/a", "--artifacts-claim", "pvc", "--s3-endpoint", "http://minio:9000"], "go with"),
    ([*S3, "--database-url", "sqlite:////var/lib/shipyard/shipyard.db"], "SQLite, a file inside one pod"),
    ([*S3, "--replicas", "1", "--database-url", "sqlite:///x.db"], "SQLite"),
    ([*S3, "--database-url", "postgresql+psycopg://u@db/x", "--secret-name", "s"], "with --secret-name"),
    ([*S3, "--secret-name", "Not_A_Name"], "not a Kubernetes object name"),
])
def test_an_export_no_pod_could_serve_from_is_refused(cli_env: dict[str, str], args: list[str],
                                                      message: str) -> None:
    """Exit 2 and one line saying why, nothing written."""
    r = run_cli(["export", "k8s", "digits", *args], cli_env, check=False)
    assert r.returncode == 2 and message in r.stderr and not r.stdout, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_artifacts_setting_comes_from_the_environment(cli_env: dict[str, str]) -> None:
    """SHIPYARD_ARTIFACTS / SHIPYARD_S3_ENDPOINT_URL are URLs, not credentials: the export takes them
    as the defaults, so it names the store this registry uses. The keys never come along."""
    env = {**cli_env, "SHIPYARD_ARTIFACTS": "s3://here/p", "SHIPYARD_S3_ENDPOINT_URL": "http://minio:9000",
           **CREDENTIALS, "AWS_SECRET_ACCESS_KEY": "real-secret-here"}
    out = run_cli(["export", "k8s", "digits"], env).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs[0]["data"]["SHIPYARD_ARTIFACTS"] == "s3://here/p"
    assert docs[0]["data"]["SHIPYARD_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "real-secret-here" not in out and docs[1]["stringData"]["AWS_SECRET_ACCESS_KEY"] == "CHANGE-ME"


def test_a_pod_fetches_its_model_from_the_shared_registry_and_bucket(
        cli_env: dict[str, str], tmp_path: Path, fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pod of the export runs, here: the container's command with exactly the ConfigMap's
    and the Secret's environment (its placeholders filled in, as an operator does from the secret
    store) and an empty home (the emptyDir). It finds the model in the shared PostgreSQL registry
    and fetches the bundle from the bucket, then answers."""
    import boto3

    with moto_server() as endpoint:
        for k, v in CREDENTIALS.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
        store = "s3://models/shipyard"
        here = Settings(home=tmp_path / "laptop", database_url=fresh_pg_url, artifacts=store,
                        s3_endpoint_url=endpoint)
        Registry(settings=here).register(make_bundle(tmp_path / "b"), "digits", alias="production")
        out = tmp_path / "k8s"
        run_cli(["export", "k8s", "digits", "-o", str(out), "--artifacts", store, "--s3-endpoint", endpoint,
                 "--workers", "1"], cli_env)
        objs = _objects(out)
        filled = {"SHIPYARD_DATABASE_URL": fresh_pg_url, "SHIPYARD_TOKEN": "t0ken", **CREDENTIALS}
        secret = {k: filled[k] for k in objs["Secret"]["stringData"]}  # every key the pod reads, filled
        pod_home = tmp_path / "emptydir"
        pod_home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "AWS_"))}
        env |= {**objs["ConfigMap"]["data"], **secret, "SHIPYARD_HOME": str(pod_home)}
        [container] = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
        assert container["command"][:2] == ["shipyard", "serve"]
        args = [a if a != "0.0.0.0" else "127.0.0.1" for a in container["command"][2:]]  # noqa: S104
        with serve(pod_home, *args, env=env) as srv:
            r = httpx.post(f"{srv.base}/v1/models/digits:predict", json={"instances": [[0.5] * 784]})
            assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
        assert any((pod_home / "cache").rglob("*")), "the bundle came from the bucket into the pod's cache"


def test_the_serving_image_environment_serves_without_torch(cli_env: dict[str, str], tmp_path: Path) -> None:
    """What `Dockerfile.serve` does, in a venv: the exported requirements (boto3 among them, for
    an S3 store), then the project with --no-deps; then `shipyard serve` from it answers a request."""
    run_cli(["export", "k8s", "digits", "-o", str(tmp_path / "k8s"), *S3], cli_env)
    venv = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-compile: the environment is what is tested, not its .pyc files (compiling them was half the time)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]
    subprocess.run([*pip, "-r", str(tmp_path / "k8s" / "requirements-serve.txt")], check=True, timeout=600)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=300)
    frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                            text=True).stdout
    assert "torch" not in frozen.lower() and "shipyard" in frozen.lower() and "boto3" in frozen.lower()
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
        e = httpx.post(f"http://127.0.0.1:{port}/v1/models/digits:explain", json={"instances": [[0.5] * 784]})
        assert e.status_code == 200 and e.json()["method"] == "occlusion", e.text  # explanations need no torch either
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(venv, ignore_errors=True)
