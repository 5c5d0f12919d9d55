"""`shipyard export k8s NAME`: what a Kubernetes cluster needs to serve a deployment — a Deployment
whose probes are the V2 health routes, a Service, a HorizontalPodAutoscaler, a ConfigMap and a
Secret for the registry URL and token — plus a Dockerfile for the serving-only image (the base
install: no torch). Replicas share the registry (PostgreSQL) and follow its aliases and traffic
split like any `shipyard serve`."""

from __future__ import annotations

import re
from typing import Any

from shipyard.errors import UsageError

PORT = 8000
SECRET_KEYS = ("SHIPYARD_DATABASE_URL", "SHIPYARD_TOKEN")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def k8s_name(model: str) -> str:
    """A DNS-1123 label for the objects of `model` (`shipyard-<model>`, lower case)."""
    name = "shipyard-" + re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")
    name = name[:63].rstrip("-")
    if not DNS_LABEL.match(name):
        raise UsageError(f"cannot make a Kubernetes name from model {model!r}")
    return name


def manifests(model: str, *, image: str, replicas: int = 2, max_replicas: int = 6, workers: int = 1,
              cpu: str = "1", memory: str = "512Mi", cpu_target: int = 70, database_url: str | None = None,
              token: str | None = None, window: int = 250, drain_grace_s: float = 5.0,
              drain_timeout_s: float = 30.0, namespace: str | None = None) -> list[dict[str, Any]]:
    """The objects, in apply order. The Secret holds placeholders unless `database_url`/`token` are
    given (a Secret with real values belongs in your secret store, not in git)."""
    if not 1 <= replicas <= max_replicas:
        raise UsageError(f"--replicas ({replicas}) must be in 1..--max-replicas ({max_replicas})")
    if workers < 1 or not 1 <= cpu_target <= 100:
        raise UsageError("--workers must be ≥ 1 and --cpu-target in 1..100")
    name = k8s_name(model)
    labels = {"app.kubernetes.io/name": "shipyard", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/component": "server", "shipyard.dev/model": model.lower()[:63]}
    selector = {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "server"}
    meta = {"name": name, "labels": labels, **({"namespace": namespace} if namespace else {})}
    config = {"SHIPYARD_HOME": "/var/lib/shipyard", "SHIPYARD_SERVE_WINDOW": str(window),
              "PYTHONUNBUFFERED": "1"}
    secret = {"SHIPYARD_DATABASE_URL": database_url or "postgresql+psycopg://shipyard:CHANGE-ME@postgres:5432/shipyard",
              "SHIPYARD_TOKEN": token or "CHANGE-ME"}
    grace = int(drain_grace_s + drain_timeout_s + 10)
    command = ["shipyard", "serve", model, "--host", "0.0.0.0", "--port", str(PORT), "--workers", str(workers),  # noqa: S104
               "--drain-grace", f"{drain_grace_s:g}", "--drain-timeout", f"{drain_timeout_s:g}",
               "--window", str(window)]
    container = {
        "name": "server", "image": image, "imagePullPolicy": "IfNotPresent", "command": command,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": name}}],
        "env": [{"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}} for key in SECRET_KEYS],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2,
                           "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "timeoutSeconds": 3, "failureThreshold": 3, "initialDelaySeconds": 10},
        "startupProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1,
                         "failureThreshold": 120},
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
        "volumeMounts": [{"name": "home", "mountPath": "/var/lib/shipyard"}],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": config},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "stringData": secret},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": replicas, "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": grace,
                "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
                "containers": [container],
                # the bundle cache and scratch space; the registry itself is the shared database
                "volumes": [{"name": "home", "emptyDir": {}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "type": "ClusterIP", "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas, "maxReplicas": max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": cpu_target}}}]}},
    ]


def requirements() -> str:
    """The serving install's requirements (the base dependencies and the PostgreSQL driver), each
    pinned to the version installed here, so the image runs what was tested."""
    import tomllib
    from importlib import metadata
    from pathlib import Path

    source = Path(__file__).resolve().parents[3] / "pyproject.toml"
    if source.is_file():  # a source checkout: its pyproject is the truth
        project = tomllib.loads(source.read_text())["project"]
        specs = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]
    else:
        specs = [r for r in metadata.requires("shipyard") or [] if "extra ==" not in r or 'extra == "postgres"' in r]
    lines = []
    for spec in specs:
        spec = spec.split(";")[0].strip()
        m = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?", spec)
        assert m is not None, spec
        try:
            pinned = f"{m[1]}{m[2] or ''}=={metadata.version(m[1])}"
        except metadata.PackageNotFoundError:
            pinned = spec
        lines.append(pinned)
    return "# the serving install: shipyard's base dependencies and the PostgreSQL driver (no torch)\n" + \
        "\n".join(sorted(lines, key=str.lower)) + "\n"


def dockerfile(python: str = "3.11") -> str:
    """The serving-only image: the base install (no torch), a non-root user, `shipyard` as the
    entrypoint. Build it from the project folder (`docker build -f Dockerfile.serve .`)."""
    return f"""# shipyard serving image: the base install (registry, bundles, `shipyard serve`), no torch
FROM python:{python}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SHIPYARD_HOME=/var/lib/shipyard
WORKDIR /src
COPY requirements-serve.txt ./
RUN pip install --no-cache-dir -r requirements-serve.txt
COPY pyproject.toml README.md ./
COPY src ./src
# the project itself, from source; its dependencies are pinned above
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps . \\
    && useradd --uid 10001 --user-group --no-create-home shipyard \\
    && mkdir -p /var/lib/shipyard && chown shipyard:shipyard /var/lib/shipyard
USER 10001
EXPOSE {PORT}
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:{PORT}/v2/health/live')"]
ENTRYPOINT ["shipyard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "{PORT}"]
"""


def filename(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}.yaml"
